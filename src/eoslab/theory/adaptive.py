r"""Adaptive optimizers at the Edge of Stability: the preconditioned sharpness $\lambda_1(P^{-1}H)$.

Cohen et al. (2022): RMSProp and Adam hold $\lambda_1(P^{-1}H)$ at $2/\eta$ and
$(2+2\beta_1)/((1-\beta_1)\eta)$, where $P$ preconditions the step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..curvature import AbstractEigenSolver, EigResult, top_eigenpairs
from ..curvature._checks import check_w
from ..curvature.operator import HessianOperator, PreconditionedOperator
from ..dynamics.optimizer import Optimizer
from ..dynamics.rules import Rule
from ..errors import ConfigError
from ..objective import LossLike, as_objective
from ..runner import Probes, run

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "PreconditionedSharpness",
    "preconditioned_sharpness",
    "track_preconditioned_sharpness",
]


class PreconditionedSharpness(NamedTuple):
    r"""Top eigenpairs of $P^{-1}H$ (same spectrum as the symmetric $P^{-1/2}HP^{-1/2}$)."""

    values: Array  # (k,) eigenvalues of P^-1 H, largest first
    vectors: Array  # (d, k) eigenvectors of P^-1/2 H P^-1/2 (unit); P^-1/2 v are P^-1 H's
    eig: EigResult  # the full certificate of the symmetric solve


def preconditioned_sharpness(
    loss: LossLike,
    w: Float[Array, " d"],
    P_diag: Float[Array, " d"],
    k: int = 1,
    *,
    tol: float = 1e-6,
    v0: Array | None = None,
    solver: AbstractEigenSolver | None = None,
) -> PreconditionedSharpness:
    r"""$\lambda_{1..k}(P^{-1}H)$ for a positive diagonal $P$ (Adam: $P=\sqrt{\hat\nu}+\epsilon$),
    by Lanczos on the `PreconditionedOperator` $P^{-1/2}HP^{-1/2}$."""
    obj = as_objective(loss, w)
    w = check_w(w, obj)
    P = jnp.asarray(P_diag, w.dtype)
    if P.shape != w.shape:
        raise ConfigError("P_diag.shape", P.shape, f"{w.shape} (one entry per parameter)")
    if not bool(jnp.all(jnp.isfinite(P))) or not bool(jnp.all(P > 0)):
        raise ConfigError("P_diag", "<array>", "finite, strictly positive entries")
    op = PreconditionedOperator(HessianOperator(obj, w), P)
    res = top_eigenpairs(op, k=k, tol=tol, v0=v0, solver=solver)
    return PreconditionedSharpness(res.values, res.vectors, res)


def track_preconditioned_sharpness(
    loss: LossLike,
    w0: Float[Array, " d"],
    rule: Rule,
    steps: int,
    *,
    every: int = 10,
    tol: float = 1e-5,
) -> pd.DataFrame:
    r"""Run ``rule`` and measure $\lambda_1(P_t^{-1}H(w_t))$ every ``every`` steps ($P_t$
    preconditions the step taken from $w_t$; $P=I$ for rules without one); columns ``step``,
    ``loss``, ``sharpness`` (of $P^{-1}H$), ``threshold`` (the rule's) and ``ratio``.
    A front door to `eoslab.runner.run` with the ``eff_sharpness`` probe."""
    import pandas as pd

    obj = as_objective(loss, w0)
    w0 = check_w(w0, obj)
    if not isinstance(rule, Rule):
        raise ConfigError("rule", rule, "an eoslab.rules.Rule (e.g. rules.Adam(lr=1e-3))")
    for name, val in (("steps", steps), ("every", every)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ConfigError(name, val, "an integer >= 1")
    if steps % every:
        raise ConfigError("every", every, f"a divisor of steps (= {steps})")
    res = run(
        {"opt": Optimizer(rule)},
        obj,
        steps,
        w0=w0,
        probe_every=every,
        log_every=every,
        probes=Probes(tol=tol, alignment=False),
    )
    m = res.metrics[res.metrics["step"] < steps]
    lam = m["eff_sharpness"] if rule.adaptive else m["sharpness"]
    out = pd.DataFrame(
        {
            "step": m["step"].to_numpy(),
            "loss": m["loss"].to_numpy(np.float64),
            "sharpness": lam.to_numpy(np.float64),
            "threshold": m["threshold"].to_numpy(np.float64),
        }
    )
    out["ratio"] = out["sharpness"] / out["threshold"]
    return out
