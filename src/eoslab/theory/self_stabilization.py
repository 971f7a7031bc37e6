r"""Self-stabilization (Damian, Nichani, Lee; ICLR 2023): quantities, the stable projection, the
2-D model, and front doors that run GD beside its constrained trajectory through the one loop.

Formulas: ``docs/theory.md``, "Self-stabilization".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..curvature import top_eigenpairs
from ..curvature._checks import check_w
from ..curvature.rounding import clip_tol
from ..dynamics.central_flow import CentralFlow, SDPCentralFlow
from ..dynamics.gradient_flow import GradientFlow
from ..dynamics.optimizer import Optimizer
from ..dynamics.rules import GD
from ..dynamics.self_stabilization import (
    ProjectedGD,
    SelfStabilization,
    StabilityQuantities,
    project_to_stable_set,
    stability_quantities_at,
)
from ..errors import ConfigError, check_int, check_positive
from ..objective import LossLike, as_objective
from ..runner import Probes, run

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "SelfStabilizationResult",
    "StabilityQuantities",
    "gd_lockstep",
    "moving_average",
    "predicted_xy",
    "self_stabilization",
    "stability_quantities",
    "stable_projection",
]


def stability_quantities(
    loss: LossLike, w: Float[Array, " d"], v0: Float[Array, " d"] | None = None
) -> StabilityQuantities:
    r"""$S, u, \nabla S_\perp, \alpha, \beta, \delta$ at $w$ ($\lambda_1$ by certified Lanczos)."""
    obj = as_objective(loss, w)
    w = check_w(w, obj)
    u = top_eigenpairs(obj, w, 1, tol=clip_tol(1e-8, w.dtype), v0=v0).vectors[:, 0]
    return eqx.filter_jit(stability_quantities_at)(obj, w, u)


_project_jit = eqx.filter_jit(project_to_stable_set)


def stable_projection(
    loss: LossLike, w: Float[Array, " d"], *, lr: float, iters: int = 3, krylov_dim: int = 30
) -> Float[Array, " d"]:
    r"""$\mathrm{proj}_{\mathcal M}(w)$ by the linearised step repeated ``iters`` times (as in the
    reference code): $w\leftarrow w-\max(0,S-2/\eta)\nabla S_\perp/\beta-u(u\cdot\nabla L)/S$."""
    obj = as_objective(loss, w)
    w = check_w(w, obj)
    check_positive("lr", lr)
    iters = check_int("iters", iters)
    m = min(check_int("krylov_dim", krylov_dim, 2), obj.dim)
    u = top_eigenpairs(obj, w, 1, tol=clip_tol(1e-8, w.dtype)).vectors[:, 0]
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
    steps = check_int("steps", steps)
    a = np.broadcast_to(np.asarray(alpha, np.float64), (steps,))
    b = np.broadcast_to(np.asarray(beta, np.float64), (steps,))

    def body(c, ab):
        x, y = c
        return (-(1.0 + lr * y) * x, y + lr * (ab[0] - 0.5 * ab[1] * x**2)), (x, y)

    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    init = (jnp.asarray(x0, dtype), jnp.asarray(y0, dtype))
    _, (xs, ys) = jax.lax.scan(body, init, (jnp.asarray(a, dtype), jnp.asarray(b, dtype)))
    return np.asarray(xs), np.asarray(ys)


class SelfStabilizationResult(NamedTuple):
    r"""GD beside its constrained trajectory $\theta^\dagger_t$ and the predicted displacement."""

    metrics: pd.DataFrame  # one row per step
    w_gd: np.ndarray  # (n, d) GD iterates theta_t


def self_stabilization(
    loss: LossLike,
    w0: Float[Array, " d"],
    *,
    lr: float,
    steps: int,
    iters: int = 3,
    krylov_dim: int = 20,
    seed: int = 0,
) -> SelfStabilizationResult:
    r"""Run `eoslab.dynamics.SelfStabilization` (GD, projected GD from
    $\theta^\dagger_0=\mathrm{proj}(w_0)$ and the predicted displacement) for ``steps`` steps
    through the one loop; one row per step, plus ``pred_loss`` $=L(\theta^\dagger)+x^2/\eta$."""
    obj = as_objective(loss, w0)
    w0 = check_w(w0, obj)
    check_positive("lr", lr)
    steps = check_int("steps", steps)
    proc = SelfStabilization(
        float(lr),
        check_int("iters", iters),
        min(check_int("krylov_dim", krylov_dim, 2), obj.dim),
        seed,
    )
    res = run(
        {"ss": proc},
        obj,
        steps,
        w0=w0,
        probe_every=steps,
        probes=Probes(sharpness=False),
        keep_points=True,
    )
    if res.diverged:
        raise ConfigError("lr", lr, "a learning rate at which GD stays finite on this loss")
    m = res.metrics[res.metrics["step"] < steps].reset_index(drop=True)
    df = m.rename(columns={"loss": "loss_gd"})[
        [
            "step",
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
            "pull",
        ]
    ].copy()
    df["pred_loss"] = df["loss_dagger"] + df["x"] ** 2 / lr
    return SelfStabilizationResult(df, np.stack(m["w"].to_list()))


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
    substeps: int = 4,
    window: int = 25,
    self_stabilized: bool = False,
    central_flow: CentralFlow | SDPCentralFlow | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    r"""GD, gradient flow $\phi(w_0,\eta t)$, the central flow and (optionally) projected GD from
    one start, in lockstep through `eoslab.runner.run`.

    Returns ``(wide, rows)``: ``rows`` is the run's table (one row per step and process);
    ``wide`` has one row every ``every`` steps with ``loss_gd``, ``loss_gd_avg`` (centred average
    over ``2*window+1`` steps), ``loss_gf``, ``loss_cf``, ``pred_loss_cf``, ``pred_loss_cf_avg``
    (the same centred average of the prediction), ``trace_sigma``, ``sharpness_{gd,gf,cf}``,
    ``gd_gf``, ``gd_cf``, ``cf_gf`` (``cf_matvecs`` for a `CentralFlow`; ``loss_dagger``,
    ``gd_dagger`` with ``self_stabilized``).
    ``central_flow`` replaces the default ``CentralFlow(lr, substeps)`` (e.g. an `SDPCentralFlow`).
    """
    import pandas as pd

    obj = as_objective(loss, w0)
    w0 = check_w(w0, obj)
    check_positive("lr", lr)
    steps = check_int("steps", steps)
    every = check_int("every", every)
    if steps % every:
        raise ConfigError("every", every, f"a divisor of steps (= {steps})")
    window = check_int("window", window, 0)
    procs = {
        "gd": Optimizer(GD(lr)),
        "gf": GradientFlow(lr=float(lr)),
        "cf": central_flow
        if central_flow is not None
        else CentralFlow(lr=float(lr), substeps=check_int("substeps", substeps)),
    }
    if self_stabilized:
        procs["dagger"] = ProjectedGD(float(lr))
    res = run(
        procs,
        obj,
        steps,
        w0=w0,
        probe_every=every,
        probes=Probes(tol=clip_tol(1e-6, obj.dtype), alignment=False),
    )
    if res.diverged:
        raise ConfigError("lr", lr, "a learning rate at which GD stays finite on this loss")
    rows = res.metrics
    per = {n: rows[rows["process"] == n].set_index("step") for n in procs}
    avg = moving_average(per["gd"]["loss"].to_numpy()[:steps], window)  # steps 0 .. steps-1
    # the prediction averaged over the same window (a host-loop flow has rows at probes only)
    pred = per["cf"]["pred_loss"].reindex(np.arange(steps)).to_numpy(np.float64)
    have = np.isfinite(pred)
    num, cnt = moving_average(np.where(have, pred, 0.0), window), moving_average(have, window)
    pred_avg = np.divide(num, cnt, out=np.full(steps, np.nan), where=cnt > 0)
    idx = np.arange(0, steps, every)
    gd_, gf_, cf_ = (per[n].loc[idx] for n in ("gd", "gf", "cf"))
    wide = pd.DataFrame(
        {
            "step": idx,
            "loss_gd": gd_["loss"].to_numpy(),
            "loss_gd_avg": avg[idx],
            "loss_gf": gf_["loss"].to_numpy(),
            "loss_cf": cf_["loss"].to_numpy(),
            "pred_loss_cf": cf_["pred_loss"].to_numpy(),
            "pred_loss_cf_avg": pred_avg[idx],
            "trace_sigma": cf_["trace_sigma"].to_numpy(),
            "sharpness_gd": gd_["sharpness"].to_numpy(),
            "sharpness_gf": gf_["sharpness"].to_numpy(),
            "sharpness_cf": cf_["cf_sharpness"].to_numpy(),
            "gd_gf": gd_["dist_gf"].to_numpy(),
            "gd_cf": gd_["dist_cf"].to_numpy(),
            "cf_gf": cf_["dist_gf"].to_numpy(),
        }
    )
    if "cf_matvecs" in cf_:
        wide["cf_matvecs"] = cf_["cf_matvecs"].to_numpy()
    if self_stabilized:
        dg = per["dagger"].loc[idx]
        wide["loss_dagger"] = dg["loss"].to_numpy()
        wide["gd_dagger"] = gd_["dist_dagger"].to_numpy()
    return wide, rows
