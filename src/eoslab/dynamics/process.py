r"""A process: anything that advances a point $w_t$ step by step.

Update rules, gradient flow, the limiting flows, the central flows and self-stabilized projected GD
are all processes, so one loop (`eoslab.runner.run`) advances any set of them in lockstep, probes
them with the same probes, stores them in one table and resumes them together.

A process is an equinox Module (its hyperparameters are fields; its functions are static and
compared by identity, so two processes that differ never share compiled code) with:

- ``init(objective, w0) -> state``: a pytree of arrays (checkpointed as is);
- ``step(objective, state) -> (state, row)``: one step, pure and jit-able; ``row`` holds scalars
  that describe the point *before* the step (``loss``, ``grad_norm``, ``lr_eff``, ``threshold``,
  and any of the process's own columns);
- or, for processes that need the host (an SDP solve, a retraction by $\Phi$), ``compiled = False``
  and ``advance(objective, state, n) -> state`` plus ``measure(objective, state) -> row``;
- ``point(state)``: the current $w$; ``operator(objective, state)``: the operator whose top
  eigenvalue is compared with the row's ``threshold`` (preconditioned for adaptive rules).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..curvature.operator import AbstractOperator, HessianOperator
from ..curvature.step_tracker import StepTracker, StepTrackerState
from ..objective import Objective

__all__ = ["Process", "Row", "advance", "measure", "base_row"]

Row = dict[str, Array]
"""Named scalars describing one point of a process (one table row)."""


class Process(eqx.Module):
    """Anything that advances a point step by step (see the module docstring)."""

    compiled: ClassVar[bool] = True

    @abc.abstractmethod
    def init(self, objective: Objective, w0: Float[Array, " d"]) -> Any:
        """The state at $w_0$ (a pytree of arrays)."""

    @abc.abstractmethod
    def point(self, state: Any) -> Float[Array, " d"]:
        """The current point $w$."""

    def step(self, objective: Objective, state: Any) -> tuple[Any, Row]:
        """One step from ``state``; the row describes the point before it."""
        raise NotImplementedError(f"{type(self).__name__} advances on the host (compiled=False)")

    def step_given(
        self, objective: Objective, state: Any, loss: Array, grad: Array
    ) -> tuple[Any, Row]:
        r"""`step`, given $L$ and $\nabla L$ of the base loss at the current point (computed
        together with Hessian products by a per-step probe); by default they are not used."""
        del loss, grad
        return self.step(objective, state)

    def measure(self, objective: Objective, state: Any) -> Row:
        """The row of the current point, without stepping."""
        return self.step(objective, state)[1]

    def advance(self, objective: Objective, state: Any, n: int) -> Any:
        """``n`` steps on the host (processes with ``compiled = False`` override this)."""
        raise NotImplementedError(f"{type(self).__name__} is compiled: use eoslab.dynamics.advance")

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


def base_row(objective: Objective, w: Array) -> Row:
    r"""``loss`` $L(w)$ and ``grad_norm`` $\|\nabla L(w)\|$ of the base loss."""
    loss, g = jax.value_and_grad(objective.base())(w)
    return {"loss": loss, "grad_norm": jnp.linalg.norm(g)}


def _tree_where(pred: Array, a: Any, b: Any) -> Any:
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def sharpness_row(
    tracker: StepTracker, objective: Objective, w: Array, tstate: StepTrackerState
) -> tuple[StepTrackerState, Row, Array, Array]:
    r"""The certified top eigenvalues of $\nabla^2L(w)$ by ``tracker`` from ``tstate``, as row
    columns (``sharpness``, ``eigs``, ``sharpness_error``, ``sharpness_matvecs``), with $L(w)$
    and $\nabla L(w)$ from the same linearization."""
    op = HessianOperator(objective.base(), w)
    loss, grad, matmat = op.linearize()
    tstate, eig = tracker.update(matmat, tstate, lambda: op.linearize()[2])
    row = {
        "sharpness": eig.values[0],
        "eigs": eig.values,
        "sharpness_error": eig.error_bound[0],
        "sharpness_matvecs": eig.matvecs,
    }
    return tstate, row, loss, grad


@eqx.filter_jit
def advance(
    process: Process,
    objective: Objective,
    state: Any,
    n: int,
    keep_points: bool = False,
    tracker: StepTracker | None = None,
    tstate: StepTrackerState | None = None,
) -> tuple[Any, Row, Array] | tuple[Any, Row, Array, StepTrackerState]:
    """``n`` compiled steps in one ``lax.scan``; a step whose loss or new point is not finite is
    not taken (the state freezes), and ``ok`` (per step) says which steps were.

    Returns ``(state, rows, ok)``, rows stacked along a leading axis of length ``n``; with
    ``keep_points`` each row also holds the point ``w`` it describes. With a ``tracker`` (and its
    state ``tstate``) every row also holds the certified sharpness at its point, measured with the
    step's own gradient (`sharpness_row`), and the tracker's new state is returned last.
    """
    if tracker is not None:

        def body(carry, _):
            (state, tst), alive = carry
            tst, srow, loss, grad = sharpness_row(tracker, objective, process.point(state), tst)
            (new, row), ok, alive = _checked_step(
                process, state, alive, process.step_given(objective, state, loss, grad), keep_points
            )
            new_tst = _tree_where(ok, tst, carry[0][1])
            return ((_tree_where(ok, new, state), new_tst), alive), ({**row, **srow}, ok)

        ((state, tstate), _), (rows, ok) = jax.lax.scan(
            body, ((state, tstate), jnp.asarray(True)), None, length=n
        )
        return state, rows, ok, tstate

    def body(carry, _):
        state, alive = carry
        (new, row), ok, alive = _checked_step(
            process, state, alive, process.step(objective, state), keep_points
        )
        return (_tree_where(ok, new, state), alive), (row, ok)

    (state, _), (rows, ok) = jax.lax.scan(body, (state, jnp.asarray(True)), None, length=n)
    return state, rows, ok


def _checked_step(process: Process, state: Any, alive: Array, stepped, keep_points: bool):
    new, row = stepped
    # a step keeps its state's dtypes (a float64 constant must not promote a float32 run)
    new = jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, jnp.result_type(b)), new, state)
    if keep_points:
        row = {**row, "w": process.point(state)}
    finite_loss = jnp.isfinite(row["loss"])
    ok = alive & finite_loss & jnp.all(jnp.isfinite(process.point(new)))
    row = {**row, "finite_loss": alive & finite_loss}
    return (new, row), ok, ok


@eqx.filter_jit
def measure(process: Process, objective: Objective, state: Any, keep_points: bool = False) -> Row:
    """The compiled row of the current point (with the point ``w`` if ``keep_points``)."""
    row = process.measure(objective, state)
    return {**row, "w": process.point(state)} if keep_points else row
