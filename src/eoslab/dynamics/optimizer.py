r"""An update rule as a process: $w_{t+1} = \mathrm{step}(w_t, s_t, \nabla L(w_t), L(w_t)-L_{\min})$
($L_{\min}$ the objective's ``loss_min``).

On ``objective.sqrt()`` the rule steps on $\sqrt{L - L_{\min}}$ while the row describes the base
loss $L$: $\nabla L = 2\sqrt{\cdot}\,\nabla\sqrt{\cdot}$, and the effective LR on $L$ is
$\eta_t / (2\sqrt{\cdot})$.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..curvature.operator import AbstractOperator, HessianOperator, PreconditionedOperator
from ..errors import ConfigError
from ..losses import safe_sqrt
from ..objective import Objective
from .process import CompiledProcess, Row
from .rules import Rule

__all__ = ["Optimizer", "OptimizerState", "RuleProcess"]


class OptimizerState(NamedTuple):
    w: Float[Array, " d"]  # the parameters
    inner: Any  # the rule's own state (momentum, second moments, ...)
    gf_time: Float[Array, ""]  # sum of the effective LRs so far: the gradient-flow time used


class RuleProcess(CompiledProcess):
    """A process that steps an update rule (`Optimizer`, `MiniBatch`): ``rule_step(objective,
    state, base)`` takes one step, with ``base = (L, grad L)`` of the base loss when already
    computed; its operator is $H$, preconditioned for adaptive rules."""

    rule: eqx.AbstractVar[Rule]

    @abc.abstractmethod
    def rule_step(self, objective: Objective, state: Any, base=None) -> tuple[Any, Row]:
        """One step of the rule from ``state`` (the row describes the point before it)."""

    def step(self, objective: Objective, state: Any) -> tuple[Any, Row]:
        return self.rule_step(objective, state)

    def step_given(
        self, objective: Objective, state: Any, loss: Array, grad: Array
    ) -> tuple[Any, Row]:
        """`step` with the base loss's value and gradient already computed (no second pass)."""
        return self.rule_step(objective, state, (loss, grad))

    def preconditioner(self, objective: Objective, state: Any) -> Array | None:
        """The diagonal $P$ of the step taken from ``state`` (None for rules without one)."""
        if not self.rule.adaptive:
            return None
        nxt, _ = self.rule_step(objective, state)
        return self.rule.preconditioner(nxt.inner)

    def operator(self, objective: Objective, state: Any) -> AbstractOperator:
        r"""$H$, or $P^{-1/2}HP^{-1/2}$ (the spectrum of $P^{-1}H$) for adaptive rules."""
        H = HessianOperator(objective.base(), state.w)
        p = self.preconditioner(objective, state)
        return H if p is None else PreconditionedOperator(H, p)


class Optimizer(RuleProcess):
    """Runs an update rule (`eoslab.rules`) on the objective, full batch."""

    rule: Rule

    def __check_init__(self) -> None:
        if not isinstance(self.rule, Rule):
            raise ConfigError("rule", self.rule, "an update rule from eoslab.rules (rules.GD(0.1))")

    def init(self, objective: Objective, w0: Float[Array, " d"]) -> OptimizerState:
        return OptimizerState(w0, self.rule.init(w0), jnp.zeros((), w0.dtype))

    def point(self, state: OptimizerState) -> Array:
        return state.w

    def rule_step(self, objective: Objective, state: OptimizerState, base=None):
        w = state.w
        sqrt = objective.transform == "sqrt"
        if base is None:
            loss, g = jax.value_and_grad(objective)(w)
        elif sqrt:  # sqrt(L - L_min) and its gradient from L and grad L
            s = safe_sqrt(base[0] - objective.base().loss_min)
            loss, g = s, jnp.where(s > 0, 0.5 / jnp.where(s > 0, s, 1.0), 0.0) * base[1]
        else:
            loss, g = base
        w_new, inner, info = self.rule.step(w, state.inner, g, loss - objective.loss_min)
        lr_eff, thr = info.lr_eff, info.threshold
        if sqrt:
            s2 = 2.0 * loss
            loss = objective.base()(w) if base is None else base[0]
            g = g * s2 if base is None else base[1]
            lr_eff = jnp.where(s2 > 0, lr_eff / jnp.where(s2 > 0, s2, 1.0), 0.0)
            thr = thr * s2
        row = {
            "loss": loss,
            "grad_norm": jnp.linalg.norm(g),
            "lr_eff": lr_eff,
            "threshold": thr,
            "gf_time": state.gf_time,
        }
        return OptimizerState(w_new, inner, state.gf_time + lr_eff), row

    def describe(self) -> dict[str, Any]:
        record = {k: v for k, v in self.rule.describe().items() if k != "kind"}
        return {"kind": "optimizer", "rule": self.rule.kind, **record}
