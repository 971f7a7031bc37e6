r"""What a probe is: an object with its own state that measures a process's point.

A probe has ``init(at) -> state`` and ``__call__(at, state) -> (row, state)``: ``at`` (`At`) is
the point measured (the step, the process and its state, the objective, the row so far), ``row``
its columns (named scalars or 1-D arrays), and the state is a pytree of arrays the loop carries
from one call to the next and writes into every checkpoint (``arrays`` / ``load``), so a resumed
run measures the same numbers. Three kinds:

- a `ScanProbe` is pure and jit-able. Where a process is probed at every step (``probe_every=1``
  or ``Probes(every_step=True)``) it runs inside the compiled ``lax.scan`` of the steps, its state
  in the scan's carry; elsewhere it runs compiled at the probed points. With ``linearize = True``
  it gets ``at.lin``: $L$, $\nabla L$ and $X\mapsto\nabla^2L\,X$ from the one linearization of
  $\nabla L$ whose gradient the step itself uses (`Linearization`).
- a `HostProbe` runs on the host at probed steps and may do anything there (a warm-started
  Lanczos solve, an SDP, numpy).
- a `GroupProbe` sees every process's point at once (distances between them, $\Phi$).

A user's probe is a subclass of one of them in the user's own file; a plain function is not a
probe (`check_probes` says to subclass `HostProbe`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ..curvature.operator import HessianOperator
from ..dynamics.process import Process
from ..errors import ConfigError
from ..objective import Objective

__all__ = [
    "At",
    "GroupProbe",
    "HostProbe",
    "InStep",
    "Linearization",
    "Probe",
    "ScanProbe",
    "check_probes",
    "linearization",
]


class Linearization(NamedTuple):
    r"""$L(w)$, $\nabla L(w)$ and $X\mapsto\nabla^2L(w)X$ from one linearization of $\nabla L$ at
    the point, shared by the step (which uses the gradient) and the in-step probes."""

    loss: Array
    grad: Array
    matmat: Callable[[Array], Array]  # (d, m) -> (d, m)
    relinearize: Callable[[], Callable[[Array], Array]]  # the same products, linearized anew


class At(NamedTuple):
    """Where a probe measures: one process's point at one step."""

    step: int | Array  # the step (a traced integer inside a scan)
    name: str  # the process's name in the run
    process: Process
    objective: Objective
    state: Any  # the process's state at the point
    row: Mapping[str, Any]  # the process's row and the columns of the probes before this one
    lin: Linearization | None = None  # in-step probes with ``linearize = True`` only
    notes: dict | None = None  # host probes: what earlier probes leave for later ones (``eig``)

    @property
    def w(self) -> Array:
        """The point."""
        return self.process.point(self.state)

    @property
    def loss(self) -> Any:
        """$L(w)$ of the base loss: the process's ``loss`` column."""
        return self.row["loss"]

    @property
    def grad(self) -> Array:
        r"""$\nabla L(w)$ of the base loss: from ``lin`` where the probe has it, else computed
        once per point on the host (kept in ``notes`` for the probes after this one)."""
        if self.lin is not None:
            return self.lin.grad
        if self.notes is not None and "grad" in self.notes:
            return self.notes["grad"]
        g = _gradient(self.process.hessian(self.objective, self.state))
        if self.notes is not None:
            self.notes["grad"] = g
        return g

    @property
    def eig(self) -> Any:
        """The `eoslab.curvature.EigResult` of the built-in host sharpness probe at this point
        (its vectors warm-start a solve nearby), or None where it has not run before this probe
        (``Probes(sharpness=False)``, or inside the compiled step)."""
        return None if self.notes is None else self.notes.get("eig")


class Probe(eqx.Module):
    """A measurement with its own state (see the module docstring): a `ScanProbe`, a `HostProbe`
    or a `GroupProbe`."""

    @abc.abstractmethod
    def init(self, at: Any) -> Any:
        """The state before the first call."""

    @property
    def key(self) -> str:
        """Its name in checkpoints (``PROCESS__probe_KEY_...``); unique among a run's probes."""
        return type(self).__name__

    def arrays(self, state: Any) -> dict[str, np.ndarray]:
        """The state as named plain arrays (default: its leaves ``"0"``, ``"1"``, ...)."""
        return {str(i): np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(state))}

    def load(self, arrays: Mapping[str, np.ndarray], at: Any) -> Any:
        """The state back from `arrays` (default: into the structure of ``init(at)``)."""
        leaves, treedef = jax.tree_util.tree_flatten(self.init(at))
        if len(arrays) != len(leaves) or any(str(i) not in arrays for i in range(len(leaves))):
            raise ConfigError(f"probe {self.key}", sorted(arrays), f"{len(leaves)} saved arrays")
        return jax.tree_util.tree_unflatten(
            treedef,
            [jnp.asarray(arrays[str(i)], jnp.result_type(x)) for i, x in enumerate(leaves)],
        )


class _PointProbe(Probe):
    """A probe of one process's point: ``init(at)``, ``__call__(at, state) -> (row, state)``."""

    def init(self, at: At) -> Any:
        """The state before the first call, at the first point probed (default: none)."""
        del at
        return ()

    @abc.abstractmethod
    def __call__(self, at: At, state: Any) -> tuple[dict[str, Any], Any]:
        """The columns at ``at`` and the new state."""


class ScanProbe(_PointProbe):
    """A pure, jit-able probe: inside the compiled scan at every step, or compiled at probed
    points (see the module docstring). Its row holds arrays; its state is a pytree of arrays of
    fixed shapes (the scan's carry)."""

    linearize: ClassVar[bool] = False
    """Wants ``at.lin``, the linearization of the gradient at the point (shared with the step)."""


class HostProbe(_PointProbe):
    """A probe run on the host at probed steps; its row holds numbers or lists of numbers."""


class GroupProbe(Probe):
    """A probe of every process at once, on the host at probed steps."""

    def init(self, names: tuple[str, ...]) -> Any:
        """The state before the first call (default: none)."""
        del names
        return ()

    @abc.abstractmethod
    def __call__(
        self, points: Mapping[str, np.ndarray], objective: Objective, state: Any
    ) -> tuple[dict[str, dict[str, Any]], Any]:
        """``{process: {column: value}}`` from the processes' points (finite ones only), and the
        new state."""


@eqx.filter_jit
def _gradient(op: HessianOperator) -> Array:
    return op.step_direction()


_SUBCLASS = (
    "Subclass eoslab.runner.HostProbe instead of passing a function, e.g. "
    "class WNorm(HostProbe): def __call__(self, at, state): "
    "return {'w_norm': float(jnp.linalg.norm(at.w))}, state"
)


def check_probes(probes: Any, field: str = "custom_probes") -> tuple[Probe, ...]:
    """``probes`` as a tuple of `ScanProbe`, `HostProbe` and `GroupProbe` objects, or a
    `ConfigError` naming ``field`` (a function says to subclass `HostProbe`)."""
    if isinstance(probes, Probe) or callable(probes) or not isinstance(probes, (tuple, list)):
        hint = _SUBCLASS if callable(probes) and not isinstance(probes, Probe) else ""
        raise ConfigError(field, probes, "a tuple of probe objects", hint)
    for p in probes:
        if not isinstance(p, (ScanProbe, HostProbe, GroupProbe)):
            hint = _SUBCLASS if callable(p) else ""
            raise ConfigError(field, p, "ScanProbe, HostProbe or GroupProbe objects", hint)
    return tuple(probes)


def linearization(objective: Objective, w: Array) -> Linearization:
    r"""The `Linearization` of $\nabla L$ of the base loss at ``w``."""
    op = HessianOperator(objective.base(), w)
    loss, grad, matmat = op.linearize()
    return Linearization(loss, grad, matmat, lambda: op.linearize()[2])


class InStep(eqx.Module):
    """The in-step probes of one process as the observer of its scan (`eoslab.dynamics.Observer`):
    one linearization at the point if any probe wants it, then each probe in order."""

    probes: tuple[ScanProbe, ...]
    name: str = eqx.field(static=True)

    def prepare(self, objective: Objective, process: Process, state: Any):
        if not any(p.linearize for p in self.probes):
            return None, None
        lin = linearization(objective, process.point(state))
        return (lin.loss, lin.grad), lin

    def __call__(self, objective, process, state, step, row, aux, carry):
        out: dict[str, Any] = {}
        new = []
        for probe, st in zip(self.probes, carry, strict=True):
            at = At(step, self.name, process, objective, state, {**row, **out}, aux)
            cols, st = probe(at, st)
            out.update(cols)
            new.append(st)
        return out, tuple(new)
