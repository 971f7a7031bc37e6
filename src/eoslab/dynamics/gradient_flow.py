r"""Gradient flow as a process: step $t$ is $\phi(w_0, \eta t)$, so it sits beside GD at lr $\eta$.

$\partial_s\phi = -\nabla L(\phi)$; each step integrates flow time ``lr`` with diffrax (adaptive
Tsit5 by default), so step $t$ of the process is comparable with step $t$ of GD at that lr.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..errors import check_choice, check_positive
from ..objective import Objective
from .phi import SOLVERS, gradient_field, ode_solver
from .process import CompiledProcess, Row

__all__ = ["GradientFlow", "GradientFlowState"]


class GradientFlowState(NamedTuple):
    w: Float[Array, " d"]  # phi(w0, time)
    time: Float[Array, ""]  # flow time so far


class GradientFlow(CompiledProcess):
    r"""$\phi(w_0, \eta t)$: gradient flow with ``lr`` units of flow time per step."""

    lr: float
    """Flow time per step (the optimizer's learning rate, for a step-by-step comparison)."""
    solver: Literal["auto", "kvaerno5", "tsit5"] = "tsit5"
    """ODE solver (diffrax): explicit Tsit5, implicit Kvaerno5, or auto by size."""
    rtol: float = 1e-7
    """Relative tolerance of the adaptive step."""
    atol: float = 1e-9
    """Absolute tolerance of the adaptive step."""
    max_steps: int = 10_000
    """Most solver steps per process step."""

    def __check_init__(self) -> None:
        check_positive("lr", self.lr)
        check_positive("rtol", self.rtol)
        check_positive("atol", self.atol)
        check_choice("solver", self.solver, SOLVERS)

    def init(self, objective: Objective, w0: Float[Array, " d"]) -> GradientFlowState:
        return GradientFlowState(w0, jnp.zeros((), w0.dtype))

    def point(self, state: GradientFlowState) -> Array:
        return state.w

    def step(self, objective: Objective, state: GradientFlowState) -> tuple[GradientFlowState, Row]:
        import diffrax

        base = objective.base()
        loss, g = jax.value_and_grad(base)(state.w)
        sol = diffrax.diffeqsolve(
            gradient_field(base),
            ode_solver(self.solver, state.w.shape[0], self.rtol, self.atol),
            t0=jnp.zeros((), state.w.dtype),
            t1=jnp.asarray(self.lr, state.w.dtype),
            dt0=None,
            y0=state.w,
            stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol),
            max_steps=self.max_steps,
            throw=False,
        )
        w_new = jnp.where(sol.result == diffrax.RESULTS.successful, sol.ys[-1], jnp.nan)
        nan = jnp.full((), jnp.nan, state.w.dtype)
        row = {
            "loss": loss,
            "grad_norm": jnp.linalg.norm(g),
            "lr_eff": jnp.asarray(self.lr, state.w.dtype),
            "threshold": nan,
            "gf_time": state.time,
        }
        return GradientFlowState(w_new, state.time + self.lr), row
