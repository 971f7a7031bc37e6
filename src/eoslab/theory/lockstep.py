r"""Processes in lockstep: the optimizer, gradient flow and the limiting flow from one start.

Step $t$ of the optimizer is compared with gradient flow at the time the iterates have used,
$T_t=\sum_{s<t}\eta_s$ (effective LRs), and with the limiting flow at $\tau=\eta^2 t$.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, Float

from ..dynamics.rules import normalized_gd, sqrt_loss_gd
from ..errors import ConfigError, check_positive
from ..objective import LossLike, as_objective
from .flows import LimitingFlow, flow_constant, limiting_flow
from ..dynamics.manifold import DENSE_MAX_DIM
from ..dynamics.phi import gradient_flow, phi
from .trajectory import Iterates, iterate

__all__ = ["Lockstep", "lockstep"]


class Lockstep(NamedTuple):
    metrics: pd.DataFrame  # one row per compared step
    iterates: Iterates
    flow: LimitingFlow


def _lam1(obj, x) -> float:
    if x.shape[0] <= DENSE_MAX_DIM:
        return float(jnp.linalg.eigvalsh(jax.hessian(obj)(x))[-1])
    from ..curvature import top_eigenpairs

    return float(top_eigenpairs(obj, x, 1, tol=1e-6).values[0])


def lockstep(
    loss: LossLike,
    w0: Float[Array, " d"],
    *,
    algorithm: str,
    lr: float,
    steps: int,
    every: int = 1,
    phi_kwargs: dict | None = None,
) -> Lockstep:
    r"""Run ``algorithm`` (normalized GD or sqrt-loss GD on $L$) with gradient flow and the limiting
    flow beside it; columns: ``step``, ``tau``, ``gf_time``, the three losses and sharpnesses, and
    the distances ``opt_gf`` $=\|x_t-\phi(x_0,T_t)\|$, ``opt_flow`` $=\|x_t-X(\tau)\|$,
    ``phi_flow`` $=\|\Phi(x_t)-X(\tau)\|$ and ``opt_phi`` $=\|x_t-\Phi(x_t)\|$.
    """
    obj = as_objective(loss, w0)
    flow_constant(algorithm)
    check_positive("lr", lr)
    rule = normalized_gd(lr) if algorithm == "normalized_gd" else sqrt_loss_gd(lr, obj.loss_min)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError("every", every, "an integer >= 1")
    it = iterate(obj, w0, rule, steps, save_every=every)
    taus = lr**2 * np.asarray(it.steps, dtype=np.float64)
    fl = limiting_flow(
        obj, w0, algorithm=algorithm, tau=taus[-1], n_save=taus.size, phi_kwargs=phi_kwargs
    )
    gf_times = np.maximum.accumulate(np.asarray(it.gf_time, dtype=np.float64))
    gf = np.asarray(gradient_flow(obj, w0, jnp.asarray(gf_times, w0.dtype)))
    rows = []
    ws = np.asarray(it.w)
    Xs = np.asarray(fl.X)
    for i in range(ws.shape[0]):
        x = jnp.asarray(ws[i])
        p = np.asarray(phi(obj, x, **(phi_kwargs or {})))
        rows.append(
            {
                "step": int(it.steps[i]),
                "tau": taus[i],
                "gf_time": gf_times[i],
                "loss_opt": float(it.loss[i]),
                "loss_gf": float(obj(jnp.asarray(gf[i]))),
                "loss_flow": float(obj(jnp.asarray(Xs[i]))),
                "sharpness_opt": _lam1(obj, x),
                "sharpness_gf": _lam1(obj, jnp.asarray(gf[i])),
                "sharpness_flow": float(fl.sharpness[i]),
                "opt_gf": float(np.linalg.norm(ws[i] - gf[i])),
                "opt_flow": float(np.linalg.norm(ws[i] - Xs[i])),
                "phi_flow": float(np.linalg.norm(p - Xs[i])),
                "opt_phi": float(np.linalg.norm(ws[i] - p)),
            }
        )
    return Lockstep(pd.DataFrame(rows), it, fl)
