r"""Per-step EoS diagnostics of a normalized-GD or sqrt-loss-GD run, beside the theory's values.

For iterates $x_t$ with learning rate $\eta$ (Arora, Li, Panigrahi 2022, sections 3-4):

* ``phi_dist`` $=\|x_t-\Phi(x_t)\|$ and ``flow_dist`` $=\|\Phi(x_t)-X(\eta^2 t)\|$;
* ``theta``: the angle between $\tilde x_t$ and $v_1(\Phi(x_t))$, where
  $\tilde x = \nabla^2L(\Phi)(x-\Phi)$ (normalized GD) or $(2\nabla^2L(\Phi))^{1/2}(x-\Phi)$ (sqrt);
* ``R_j`` $=\|P_{j..M}\tilde x_t\| - \lambda_j\eta$ (the invariant sets are $R_j\le0$);
* ``stab_sum`` $=\frac{1}{\eta_t\lambda_1(x_t)}+\frac{1}{\eta_{t+1}\lambda_1(x_{t+1})}$
  (predicted 1);
* ``sqrt_loss_sum`` $=\sqrt{L_t}+\sqrt{L_{t+1}}$ against ``sqrt_loss_pred``
  $=\eta\sqrt{\lambda_1/2}$ (normalized GD) or $\eta\lambda_1/2$ (sqrt-loss GD).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..curvature import top_eigenpairs
from ..curvature.operator import HessianOperator
from ..curvature.rounding import clip_tol
from ..errors import ConfigError, check_positive
from ..objective import LossLike, as_objective
from .limiting_flow import LimitingFlow, flow_constant
from .manifold import DENSE_MAX_DIM
from .phi import phi

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["eos_diagnostics"]


def _lam1_all(obj, ws, dense: bool) -> np.ndarray:
    if dense:
        top = lambda x: jnp.linalg.eigvalsh(HessianOperator(obj, x).as_matrix())[-1]  # noqa: E731
        return np.asarray(jax.jit(jax.vmap(top))(ws))
    return np.array(
        [float(top_eigenpairs(obj, w, 1, tol=clip_tol(1e-6, w.dtype)).values[0]) for w in ws]
    )


def eos_diagnostics(
    loss: LossLike,
    ws: Float[Array, "n d"],
    *,
    algorithm: str,
    lr: float,
    flow: LimitingFlow,
    steps: np.ndarray | None = None,
    phi_every: int = 1,
    n_R: int = 2,
    phi_kwargs: dict | None = None,
) -> pd.DataFrame:
    r"""Diagnostics for consecutive iterates ``ws`` (row $t$ is step ``steps[t]``, default $t$).

    ``loss`` is $L$ (the base loss, also for sqrt-loss GD). Identities between consecutive rows
    (``stab_sum``, ``sqrt_loss_sum``) need ``ws`` saved every step. $\Phi$-based columns are
    computed every ``phi_every`` rows (NaN elsewhere). ``flow`` is the limiting flow from
    ``ws[0]`` (`eoslab.limiting_flow`), reaching $\tau=\eta^2$ (``steps[-1] - steps[0]``); row
    $t$ is compared with $X(\eta^2(\text{steps}[t]-\text{steps}[0]))$.
    """
    import pandas as pd

    ws = jnp.asarray(ws)
    if ws.ndim != 2 or ws.shape[0] < 2:
        raise ConfigError("ws.shape", ws.shape, "(n, D) with n >= 2 consecutive iterates")
    obj = as_objective(loss, ws[0])
    flow_constant(algorithm)
    check_positive("lr", lr)
    n, d = ws.shape
    steps = np.arange(n) if steps is None else np.asarray(steps)
    if steps.shape != (n,):
        raise ConfigError("steps.shape", steps.shape, f"({n},), one step per row of ws")
    dense = d <= DENSE_MAX_DIM
    losses = np.asarray(jax.vmap(obj)(ws)) - obj.loss_min
    grads = jax.vmap(jax.grad(obj))(ws)
    gnorm = np.asarray(jnp.linalg.norm(grads, axis=1))
    lam1 = _lam1_all(obj, ws, dense)
    sqrtL = np.sqrt(np.maximum(losses, 0.0))
    if algorithm == "normalized_gd":
        eta_t = lr / gnorm
        pred = lr * np.sqrt(lam1 / 2)
    else:
        eta_t = lr / (2 * sqrtL)
        pred = lr * lam1 / 2
    inv = 1.0 / (eta_t * lam1)
    nan = np.full(n, np.nan)
    cols = {
        "step": steps,
        "tau": lr**2 * steps,
        "loss": losses,
        "lambda1": lam1,
        "lr_eff": eta_t,
        "stab_proxy": eta_t * lam1,
        "stab_sum": np.append(inv[:-1] + inv[1:], np.nan),
        "sqrt_loss_sum": np.append(sqrtL[:-1] + sqrtL[1:], np.nan),
        "sqrt_loss_pred": pred,
        "phi_dist": nan.copy(),
        "flow_dist": nan.copy(),
        "theta": nan.copy(),
        "lambda1_phi": nan.copy(),
    }
    for j in range(1, n_R + 1):
        cols[f"R_{j}"] = nan.copy()
    rows = np.arange(0, n, phi_every)
    Xs = np.stack([flow.at(lr**2 * float(steps[r] - steps[0])) for r in rows])
    for i, r in enumerate(rows):
        x = ws[r]
        p = phi(obj, x, **(phi_kwargs or {}))
        k = min(n_R, d)
        eig = top_eigenpairs(obj, p, k=k, tol=1e-10 if p.dtype == jnp.float64 else 1e-5)
        lam, V = np.asarray(eig.values), np.asarray(eig.vectors)
        off = np.asarray(x - p)
        coef = V.T @ off  # <v_i, x - Phi>
        h_off = np.asarray(HessianOperator(obj, p).mv(x - p))  # H(Phi) (x - Phi)
        if algorithm == "normalized_gd":
            proj = lam * coef  # <v_i, H (x - Phi)>
            total = float(np.linalg.norm(h_off))
        else:
            proj = np.sqrt(2 * np.maximum(lam, 0)) * coef
            total = float(np.sqrt(max(2 * float(off @ h_off), 0.0)))
        cols["phi_dist"][r] = np.linalg.norm(off)
        cols["flow_dist"][r] = np.linalg.norm(np.asarray(p) - Xs[i])
        cols["theta"][r] = np.arccos(np.clip(abs(proj[0]) / max(total, 1e-300), 0.0, 1.0))
        cols["lambda1_phi"][r] = lam[0]
        for j in range(1, k + 1):
            rest = max(total**2 - float(np.sum(proj[: j - 1] ** 2)), 0.0)
            cols[f"R_{j}"][r] = np.sqrt(rest) - lam[j - 1] * lr
    return pd.DataFrame(cols)
