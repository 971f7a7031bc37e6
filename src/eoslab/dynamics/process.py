r"""A process: anything that advances a point $w_t$ step by step.

Update rules, gradient flow, the limiting flows, the central flows and self-stabilized projected GD
are all processes, so one loop (`eoslab.runner.run`) advances any set of them in lockstep, probes
them with the same probes, stores them in one table and resumes them together.

A process is an equinox Module (its hyperparameters are fields; its functions are static and
compared by identity, so two processes that differ never share compiled code) of one of two kinds:

- a `CompiledProcess` takes pure, jit-able steps, ``step(objective, state) -> (state, row)``,
  where ``row`` holds scalars that describe the point *before* the step (``loss``,
  ``grad_norm``, ``lr_eff``, ``threshold``, and any of the process's own columns); the loop runs
  them as one ``lax.scan`` (`CompiledProcess.scan`), with the probes that fit in a step inside it;
- a `HostProcess` needs the host between steps (an SDP solve, a retraction by $\Phi$):
  ``advance(objective, state, n) -> state`` and ``measure(objective, state) -> row``.

Both have ``init(objective, w0) -> state`` (a pytree of arrays, checkpointed as is),
``point(state)`` (the current $w$) and ``operator(objective, state)``: the operator whose top
eigenvalue is compared with the row's ``threshold`` (preconditioned for adaptive rules).
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple, Protocol

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..curvature.operator import AbstractOperator, HessianOperator
from ..objective import Objective

__all__ = [
    "CompiledProcess",
    "HostProcess",
    "Observer",
    "Process",
    "Row",
    "Scanned",
    "base_row",
    "observed_step",
]

Row = dict[str, Array]
"""Named scalars describing one point of a process (one table row)."""


class Process(eqx.Module):
    """Anything that advances a point step by step: a `CompiledProcess` or a `HostProcess`."""

    @abc.abstractmethod
    def init(self, objective: Objective, w0: Float[Array, " d"]) -> Any:
        """The state at $w_0$ (a pytree of arrays)."""

    @abc.abstractmethod
    def point(self, state: Any) -> Float[Array, " d"]:
        """The current point $w$."""

    @abc.abstractmethod
    def measure(self, objective: Objective, state: Any) -> Row:
        """The row of the current point, without stepping."""

    def operator(self, objective: Objective, state: Any) -> AbstractOperator:
        """The operator whose top eigenvalue is compared with the threshold (default: $H$)."""
        return self.hessian(objective, state)

    def hessian(self, objective: Objective, state: Any) -> HessianOperator:
        r"""$\nabla^2 L$ of the base loss at the current point."""
        return HessianOperator(objective.base(), self.point(state))

    def describe(self) -> dict[str, Any]:
        """The process's kind and hyperparameters, for records."""
        out: dict[str, Any] = {"kind": type(self).__name__}
        for name, val in vars(self).items():
            if isinstance(val, (int, float, str, bool)) or val is None:
                out[name] = val
        return out


class Observer(Protocol):
    r"""What a scan measures at every step besides the process's own row (the runner's in-step
    probes): ``prepare`` may return $(L, \nabla L)$ of the base loss at the point, computed with
    whatever else it needs there (``aux``, e.g. a linearization of $\nabla L$), which the step
    then uses instead of its own; ``__call__`` returns the columns and its new ``carry``."""

    def prepare(self, objective: Objective, process: Process, state: Any) -> tuple[Any, Any]:
        """``(given, aux)``: ``given`` is ``(loss, grad)`` or None."""
        ...

    def __call__(
        self,
        objective: Objective,
        process: Process,
        state: Any,
        step: Array,
        row: Row,
        aux: Any,
        carry: Any,
    ) -> tuple[Row, Any]:
        """The columns at the point of ``state`` (step ``step``; ``row`` is the process's)."""
        ...


class Scanned(NamedTuple):
    """What `CompiledProcess.scan` returns: rows stacked along a leading axis of length ``n``."""

    state: Any  # the state after the steps taken
    rows: Row  # each step's row (the point before it), and ``finite_loss``
    ok: Array  # per step: whether it was taken (its loss and new point finite)
    carry: Any  # the observer's carry after the steps taken (None without one)


class CompiledProcess(Process):
    """A process whose steps are pure and jit-able (one ``lax.scan`` between probed steps)."""

    @abc.abstractmethod
    def step(self, objective: Objective, state: Any) -> tuple[Any, Row]:
        """One step from ``state``; the row describes the point before it."""

    def step_given(
        self, objective: Objective, state: Any, loss: Array, grad: Array
    ) -> tuple[Any, Row]:
        r"""`step`, given $L$ and $\nabla L$ of the base loss at the current point (computed
        together with Hessian products by an in-step probe); by default they are not used."""
        del loss, grad
        return self.step(objective, state)

    def measure(self, objective: Objective, state: Any) -> Row:
        """The row of the current point: the row of the step from it."""
        return self.step(objective, state)[1]

    def scan(
        self,
        objective: Objective,
        state: Any,
        n: int,
        *,
        keep_points: bool = False,
        observer: Observer | None = None,
        carry: Any = None,
        t0: int | Array = 0,
    ) -> Scanned:
        """``n`` steps in one compiled ``lax.scan``; a step whose loss or new point is not
        finite is not taken (the state freezes), and ``ok`` says which steps were.

        With ``keep_points`` each row also holds the point ``w`` it describes. With an
        ``observer`` (state ``carry``, first step number ``t0``) every row also holds its
        columns, measured at the row's point before the step (`Observer`)."""
        return _scan(self, objective, state, n, keep_points, observer, carry, jnp.asarray(t0))


class HostProcess(Process):
    """A process that needs the host between steps: it advances in its own loop."""

    @abc.abstractmethod
    def advance(self, objective: Objective, state: Any, n: int) -> Any:
        """``n`` steps on the host."""

    @abc.abstractmethod
    def measure(self, objective: Objective, state: Any) -> Row:
        """The row of the current point, without stepping."""


def base_row(objective: Objective, w: Array) -> Row:
    r"""``loss`` $L(w)$ and ``grad_norm`` $\|\nabla L(w)\|$ of the base loss."""
    loss, g = jax.value_and_grad(objective.base())(w)
    return {"loss": loss, "grad_norm": jnp.linalg.norm(g)}


def _tree_where(pred: Array, a: Any, b: Any) -> Any:
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def observed_step(
    process: CompiledProcess,
    objective: Objective,
    state: Any,
    observer: Observer | None,
    step: Array,
    carry: Any,
) -> tuple[Any, Row, Any]:
    """One step with the observer's columns at its point: ``(new state, row, new carry)``."""
    if observer is None:
        new, row = process.step(objective, state)
        return new, row, carry
    given, aux = observer.prepare(objective, process, state)
    if given is None:
        new, row = process.step(objective, state)
    else:
        new, row = process.step_given(objective, state, *given)
    orow, carry = observer(objective, process, state, step, row, aux, carry)
    return new, {**row, **orow}, carry


@eqx.filter_jit
def _scan(process, objective, state, n, keep_points, observer, carry, t0) -> Scanned:
    def body(c, i):
        state, carry, alive = c
        new, row, new_carry = observed_step(process, objective, state, observer, t0 + i, carry)
        # a step keeps its state's dtypes (a float64 constant must not promote a float32 run)
        new = jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, jnp.result_type(b)), new, state)
        if keep_points:
            row = {**row, "w": process.point(state)}
        finite_loss = jnp.isfinite(row["loss"])
        ok = alive & finite_loss & jnp.all(jnp.isfinite(process.point(new)))
        row = {**row, "finite_loss": alive & finite_loss}
        out = (_tree_where(ok, new, state), _tree_where(ok, new_carry, carry), ok)
        return out, (row, ok)

    (state, carry, _), (rows, ok) = jax.lax.scan(
        body, (state, carry, jnp.asarray(True)), jnp.arange(n)
    )
    return Scanned(state, rows, ok, carry)
