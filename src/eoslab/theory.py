r"""`limiting_flow`: the paper's flow on $\Gamma$ from $X(0)=\Phi(x_0)$, solved through the loop.

Normalized GD tracks $\frac{dX}{d\tau}=-\frac14 P^\perp_{X,\Gamma}\nabla\log\lambda_1(X)$ and GD on
$\sqrt{L-\min L}$ tracks $\frac{dX}{d\tau}=-\frac18 P^\perp_{X,\Gamma}\nabla\lambda_1(X)$, with
$\tau=\eta^2\cdot$steps (``docs/theory.md``, "Limiting flows"). The theories' point-wise math
($\Phi$, the tangent projector, stability quantities, diagnostics) lives in `eoslab.dynamics`,
beside the processes that use it; any trajectory is `eoslab.runner.run` over those processes.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .curvature._checks import check_w
from .curvature.rounding import clip_tol
from .dynamics.limiting_flow import LimitingFlow, ProjectedLimitingFlow, RetractedLimitingFlow
from .dynamics.manifold import DENSE_MAX_DIM
from .dynamics.phi import phi
from .errors import ConfigError, check_choice, check_positive
from .objective import LossLike, as_objective
from .runner import Probes, run

__all__ = ["limiting_flow"]


def limiting_flow(
    loss: LossLike,
    x0: Float[Array, " d"],
    *,
    algorithm: Literal["normalized_gd", "sqrt_loss_gd"],
    tau: float | Float[Array, " n"],
    integrator: Literal["auto", "projection", "retraction"] = "auto",
    n_save: int = 101,
    h: float | None = None,
    rank_tol: float = 1e-6,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    phi_gtol: float = 1e-8,
    project_start: bool = True,
    phi_kwargs: dict | None = None,
) -> LimitingFlow:
    r"""Integrate the paper's flow from $X(0)=\Phi(x_0)$ up to flow time ``tau``.

    ``tau`` is a final time (saved on ``n_save`` equally spaced times) or an increasing array of
    times starting at 0. ``integrator="projection"`` (`ProjectedLimitingFlow`) solves
    $\dot X = -c P^\perp(X)\nabla f(X)$ with diffrax, $P^\perp$ and $\lambda_1$ from the dense
    Hessian; ``"retraction"`` (`RetractedLimitingFlow`) takes Euler steps of at most ``h``
    retracted by $\Phi$ to ``phi_gtol``. ``phi_kwargs`` are passed to `eoslab.phi` for $X(0)$;
    ``project_start=False`` starts from ``x0`` as given (assumed on $\Gamma$). The result keeps
    the guard columns ``loss`` and ``grad_norm`` at every saved point (`LimitingFlow.drift`).
    Runs the process through `eoslab.runner.run`, one step per saved time (its ``schedule``).
    """
    obj = as_objective(loss, x0)
    x0 = check_w(x0, obj)
    if phi_kwargs and project_start:
        x0, project_start = phi(obj, x0, **phi_kwargs), False
        phi_gtol = phi_kwargs.get("gtol", phi_gtol)
    check_choice("integrator", integrator, ("auto", "projection", "retraction"))
    taus = np.atleast_1d(np.asarray(tau, dtype=np.float64))
    if taus.size == 1:
        check_positive("tau", float(taus[0]))
        if isinstance(n_save, bool) or not isinstance(n_save, int) or n_save < 2:
            raise ConfigError("n_save", n_save, "an integer >= 2")
        taus = np.linspace(0.0, float(taus[0]), n_save)
    if taus.ndim != 1 or taus[0] != 0 or np.any(np.diff(taus) <= 0):
        raise ConfigError("tau", "<array>", "a positive final time or increasing times from 0")
    if integrator == "auto":
        integrator = "projection" if x0.shape[0] <= DENSE_MAX_DIM else "retraction"
    schedule = tuple(float(x) for x in np.diff(taus))
    common = dict(
        algorithm=algorithm,
        lr=float(np.sqrt(schedule[0])),
        schedule=schedule,
        phi_gtol=phi_gtol,
        project_start=project_start,
    )
    if integrator == "projection":
        proc = ProjectedLimitingFlow(**common, rank_tol=rank_tol, rtol=rtol, atol=atol)
        probes, sharp = Probes(sharpness=False, alignment=False), "lambda1"
    else:
        proc = RetractedLimitingFlow(**common, h=min(0.01, min(schedule)) if h is None else h)
        probes = Probes(tol=clip_tol(1e-6, x0.dtype), alignment=False)
        sharp = "sharpness"
    res = run(proc, obj, len(schedule), w0=x0, probe_every=1, probes=probes, keep_points=True)
    m = res.series()
    col = lambda name: jnp.asarray(m[name].to_numpy(), x0.dtype)  # noqa: E731
    return LimitingFlow(
        jnp.asarray(taus, x0.dtype),
        jnp.asarray(res.trajectory(), x0.dtype),
        col(sharp),
        algorithm,
        integrator,
        col("loss"),
        col("grad_norm"),
    )
