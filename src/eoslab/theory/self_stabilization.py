r"""Self-stabilization (Damian, Nichani, Lee; ICLR 2023): GD at the Edge of Stability follows
projected GD onto $\mathcal M=\{S\le2/\eta,\ \nabla L\cdot u=0\}$.

With $S=\lambda_1(\nabla^2L)$, $u$ its eigenvector, $\nabla S=\nabla^3L[u,u]$,
$\nabla S_\perp=\nabla S-u(u\cdot\nabla S)$: $\alpha=-\nabla L\cdot\nabla S_\perp$,
$\beta=\|\nabla S_\perp\|^2$, $\delta=\sqrt{2\alpha/\beta}$. Formulas: ``theory.md`` section 7.1.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, Float

from ..curvature import top_eigenpairs
from ..curvature._checks import check_w
from ..errors import ConfigError, check_positive
from ..objective import LossLike, as_objective
from .central_flow import _check_int, _hvp, krylov_top

__all__ = [
    "SelfStabilization",
    "StabilityQuantities",
    "gd_lockstep",
    "moving_average",
    "predicted_xy",
    "self_stabilization",
    "stability_quantities",
    "stable_projection",
]


class StabilityQuantities(NamedTuple):
    """Damian et al.'s quantities at one point (scalars and ``(d,)`` vectors)."""

    S: Array  # sharpness lambda_1
    u: Array  # its unit eigenvector
    grad_L: Array
    grad_S: Array  # grad^3 L[u, u]
    grad_S_perp: Array  # grad S - u (u . grad S)
    alpha: Array  # -grad L . grad S_perp (progressive-sharpening rate)
    beta: Array  # |grad S_perp|^2 (self-stabilization strength)
    delta: Array  # sqrt(2 alpha / beta) (0 when alpha <= 0)


def _quantities(obj, w, u) -> StabilityQuantities:
    g = jax.grad(obj)(w)
    S, gS = jax.value_and_grad(lambda x: jnp.vdot(u, _hvp(obj, x, u)))(w)
    gSp = gS - u * jnp.vdot(u, gS)
    alpha = -jnp.vdot(g, gSp)
    beta = jnp.vdot(gSp, gSp)
    delta = jnp.sqrt(2.0 * jnp.maximum(alpha, 0.0) / jnp.where(beta > 0, beta, 1.0))
    return StabilityQuantities(S, u, g, gS, gSp, alpha, beta, delta)


def _top(obj, w, v, key, m):
    lam, V, _ = krylov_top(lambda x: _hvp(obj, w, x), v, m, 1, key)
    u = V[:, 0]
    return jnp.where(jnp.vdot(u, v) < 0, -u, u)


def _project(obj, w, u, key, *, lr, m, iters):
    r"""$\theta\leftarrow\theta-\max(0,S-2/\eta)\nabla S_\perp/\beta-u(u\cdot\nabla L)/S$."""
    for _ in range(iters):
        key, k1 = jax.random.split(key)
        u = _top(obj, w, u, k1, m)
        q = _quantities(obj, w, u)
        step = jnp.maximum(0.0, q.S - 2.0 / lr) * q.grad_S_perp / jnp.where(q.beta > 0, q.beta, 1.0)
        w = w - step - u * jnp.vdot(u, q.grad_L) / q.S
    return w, u


@eqx.filter_jit
def _project_jit(obj, w, u, key, *, lr, m, iters):
    return _project(obj, w, u, key, lr=lr, m=m, iters=iters)


def stability_quantities(
    loss: LossLike, w: Float[Array, " d"], v0: Float[Array, " d"] | None = None
) -> StabilityQuantities:
    r"""$S, u, \nabla S_\perp, \alpha, \beta, \delta$ at $w$ ($\lambda_1$ by certified Lanczos)."""
    obj = as_objective(loss, w)
    w = check_w(w, obj)
    u = top_eigenpairs(obj, w, 1, tol=1e-8, v0=v0).vectors[:, 0]
    return eqx.filter_jit(_quantities)(obj, w, u)


def stable_projection(
    loss: LossLike, w: Float[Array, " d"], *, lr: float, iters: int = 3, krylov_dim: int = 30
) -> Float[Array, " d"]:
    r"""$\mathrm{proj}_{\mathcal M}(w)$ by the linearised step repeated ``iters`` times (as in the
    reference code): $w\leftarrow w-\max(0,S-2/\eta)\nabla S_\perp/\beta-u(u\cdot\nabla L)/S$."""
    obj = as_objective(loss, w)
    w = check_w(w, obj)
    check_positive("lr", lr)
    iters = _check_int("iters", iters)
    m = min(_check_int("krylov_dim", krylov_dim, 2), obj.dim)
    u = top_eigenpairs(obj, w, 1, tol=1e-8).vectors[:, 0]
    return _project_jit(obj, w, u, jax.random.PRNGKey(0), lr=float(lr), m=m, iters=iters)[0]


def predicted_xy(
    alpha: Float[Array, " n"] | float,
    beta: Float[Array, " n"] | float,
    lr: float,
    x0: float,
    y0: float,
    steps: int,
) -> tuple[np.ndarray, np.ndarray]:
    r"""The 2-D model $x_{t+1}=-(1+\eta y_t)x_t$, $y_{t+1}=y_t+\eta(\alpha-\tfrac\beta2x_t^2)$
    for ``steps`` steps (constant $\alpha,\beta$ or one value per step); returns $(x_t, y_t)$."""
    check_positive("lr", lr)
    steps = _check_int("steps", steps)
    a = np.broadcast_to(np.asarray(alpha, np.float64), (steps,))
    b = np.broadcast_to(np.asarray(beta, np.float64), (steps,))

    def body(c, ab):
        x, y = c
        return (-(1.0 + lr * y) * x, y + lr * (ab[0] - 0.5 * ab[1] * x**2)), (x, y)

    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    init = (jnp.asarray(x0, dtype), jnp.asarray(y0, dtype))
    _, (xs, ys) = jax.lax.scan(body, init, (jnp.asarray(a, dtype), jnp.asarray(b, dtype)))
    return np.asarray(xs), np.asarray(ys)


class SelfStabilization(NamedTuple):
    r"""GD beside its constrained trajectory $\theta^\dagger_t$ and the predicted displacement."""

    metrics: pd.DataFrame  # one row per step
    w_gd: np.ndarray  # (n, d) GD iterates theta_t
    w_dagger: np.ndarray  # (n, d) projected-GD iterates theta^dagger_t


@eqx.filter_jit
def _ss_scan(obj, theta0, dagger0, u0, key, *, lr, steps, m, iters):
    vg = jax.value_and_grad(obj)

    def step(carry, _):
        theta, dag, vp, u, key = carry
        key, k1, k2, k3 = jax.random.split(key, 4)
        u = _top(obj, dag, u, k1, m)
        q = _quantities(obj, dag, u)
        v = theta - dag
        x, y = jnp.vdot(u, v), jnp.vdot(q.grad_S_perp, v)
        xp, yp = jnp.vdot(u, vp), jnp.vdot(q.grad_S_perp, vp)
        lt, gt = vg(theta)
        ug = _top(obj, theta, u, k3, m)
        S_gd = jnp.vdot(ug, _hvp(obj, theta, ug))
        ld = obj(dag)
        rec = (
            theta,
            dag,
            lt,
            ld,
            S_gd,
            q.S,
            q.alpha,
            q.beta,
            q.delta,
            x,
            y,
            xp,
            yp,
            jnp.linalg.norm(v),
            jnp.linalg.norm(v - vp),
        )
        Hv = _hvp(obj, dag, vp)
        vp = vp - lr * (Hv + 0.5 * (xp**2 - q.delta**2) * q.grad_S_perp + u * xp * yp)
        theta = theta - lr * gt
        dag, u = _project(obj, dag - lr * q.grad_L, u, k2, lr=lr, m=m, iters=iters)
        return (theta, dag, vp, u, key), rec

    init = (theta0, dagger0, theta0 - dagger0, u0, key)
    _, recs = jax.lax.scan(step, init, None, length=steps)
    return recs


def self_stabilization(
    loss: LossLike,
    w0: Float[Array, " d"],
    *,
    lr: float,
    steps: int,
    iters: int = 3,
    krylov_dim: int = 20,
    seed: int = 0,
) -> SelfStabilization:
    r"""Run GD $\theta_t$ and projected GD $\theta^\dagger_{t+1}=\mathrm{proj}_{\mathcal M}
    (\theta^\dagger_t-\eta\nabla L(\theta^\dagger_t))$ from $\theta^\dagger_0=\mathrm{proj}(w_0)$,
    with the predicted displacement $v_{t+1}=v_t-\eta[H v_t+\tfrac12(x_t^2-\delta_t^2)\nabla
    S_\perp+u\,x_ty_t]$, $x=u\cdot v$, $y=\nabla S_\perp\cdot v$ (all at $\theta^\dagger_t$).

    Columns: ``step``, ``loss_gd``, ``loss_dagger``, ``pred_loss`` $=L(\theta^\dagger)+x^2/\eta$,
    ``sharpness_gd``, ``sharpness_dagger``, ``alpha``, ``beta``, ``delta``, ``x``, ``y``,
    ``x_pred``, ``y_pred``, ``dist`` $=\|\theta-\theta^\dagger\|$, ``pred_error`` $=\|v-v_{pred}\|$.
    """
    obj = as_objective(loss, w0)
    w0 = check_w(w0, obj)
    check_positive("lr", lr)
    steps = _check_int("steps", steps)
    iters = _check_int("iters", iters)
    m = min(_check_int("krylov_dim", krylov_dim, 2), obj.dim)
    key = jax.random.PRNGKey(seed)
    u0 = top_eigenpairs(obj, w0, 1, tol=1e-8).vectors[:, 0]
    dag0, u0 = _project_jit(obj, w0, u0, key, lr=float(lr), m=m, iters=iters)
    recs = _ss_scan(obj, w0, dag0, u0, key, lr=float(lr), steps=steps, m=m, iters=iters)
    recs = [np.asarray(r) for r in recs]
    th, dag = recs[0], recs[1]
    names = (
        "loss_gd",
        "loss_dagger",
        "sharpness_gd",
        "sharpness_dagger",
        "alpha",
        "beta",
        "delta",
        "x",
        "y",
        "x_pred",
        "y_pred",
        "dist",
        "pred_error",
    )
    df = pd.DataFrame({"step": np.arange(steps), **dict(zip(names, recs[2:], strict=True))})
    df["pred_loss"] = df["loss_dagger"] + df["x"] ** 2 / lr
    if not np.all(np.isfinite(df["loss_gd"])):
        raise ConfigError("lr", lr, "a learning rate at which GD stays finite on this loss")
    return SelfStabilization(df, th, dag)


def moving_average(x: np.ndarray, half_width: int) -> np.ndarray:
    """Centred moving average over ``2*half_width+1`` samples (shrinking at the ends)."""
    x = np.asarray(x, np.float64)
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(x.size)
    lo, hi = np.maximum(0, i - half_width), np.minimum(x.size, i + half_width + 1)
    return (c[hi] - c[lo]) / (hi - lo)


def gd_lockstep(
    loss: LossLike,
    w0: Float[Array, " d"],
    *,
    lr: float,
    steps: int,
    every: int = 10,
    k: int = 1,
    substeps: int = 4,
    window: int = 25,
    self_stabilized: bool = False,
) -> tuple[pd.DataFrame, dict]:
    r"""GD, gradient flow $\phi(w_0,\eta t)$, the central flow and (optionally) projected GD from
    one start; one row every ``every`` steps with losses, sharpnesses and distances.

    Columns: ``loss_gd``, ``loss_gd_avg`` (centred average over ``2*window+1`` steps),
    ``loss_gf``, ``loss_cf``, ``pred_loss_cf``, ``trace_sigma``, ``sharpness_{gd,gf,cf}``,
    ``gd_gf``, ``gd_cf``, ``cf_gf`` (and ``loss_dagger``, ``gd_dagger``). The dict holds the arrays.
    """
    from ..dynamics.rules import gd
    from .central_flow import central_flow
    from ..dynamics.phi import gradient_flow
    from .trajectory import iterate

    obj = as_objective(loss, w0)
    w0 = check_w(w0, obj)
    check_positive("lr", lr)
    steps = _check_int("steps", steps)
    every = _check_int("every", every)
    if steps % every:
        raise ConfigError("every", every, f"a divisor of steps (= {steps})")
    window = _check_int("window", window, 0)
    it = iterate(obj, w0, gd(lr), steps)
    ws, ls = np.asarray(it.w)[:steps], np.asarray(it.loss)[:steps]
    if not np.all(np.isfinite(ls)):
        raise ConfigError("lr", lr, "a learning rate at which GD stays finite on this loss")
    cf = central_flow(obj, w0, lr=lr, steps=steps, k=k, substeps=substeps)
    idx = np.arange(0, steps, every)
    gf = np.asarray(
        gradient_flow(
            obj, w0, jnp.asarray(idx * lr, w0.dtype), solver="tsit5", rtol=1e-7, atol=1e-9
        )
    )
    avg = moving_average(ls, window)
    v_gd = v_gf = None
    rows = []
    for j, t in enumerate(idx):
        e_gd = top_eigenpairs(obj, jnp.asarray(ws[t]), 1, tol=1e-6, v0=v_gd)
        e_gf = top_eigenpairs(obj, jnp.asarray(gf[j]), 1, tol=1e-6, v0=v_gf)
        v_gd, v_gf = e_gd.vectors[:, 0], e_gf.vectors[:, 0]
        rows.append(
            {
                "step": int(t),
                "loss_gd": float(ls[t]),
                "loss_gd_avg": float(avg[t]),
                "loss_gf": float(obj(jnp.asarray(gf[j]))),
                "loss_cf": float(cf.loss[t]),
                "pred_loss_cf": float(cf.pred_loss[t]),
                "trace_sigma": float(cf.trace_sigma[t]),
                "sharpness_gd": float(e_gd.values[0]),
                "sharpness_gf": float(e_gf.values[0]),
                "sharpness_cf": float(cf.sharpness[t]),
                "gd_gf": float(np.linalg.norm(ws[t] - gf[j])),
                "gd_cf": float(np.linalg.norm(ws[t] - cf.w[t])),
                "cf_gf": float(np.linalg.norm(cf.w[t] - gf[j])),
            }
        )
    df = pd.DataFrame(rows)
    arrays = {"gd_loss": ls, "gd_loss_avg": avg, "cf": cf, "gf": gf}
    if self_stabilized:
        ss = self_stabilization(obj, w0, lr=lr, steps=steps)
        df["loss_dagger"] = ss.metrics["loss_dagger"].to_numpy()[idx]
        df["gd_dagger"] = ss.metrics["dist"].to_numpy()[idx]
        arrays["self_stabilization"] = ss
    return df, arrays
