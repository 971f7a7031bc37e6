r"""The limiting flows on the manifold of minimizers (Arora, Li, Panigrahi 2022).

Normalized GD tracks $\frac{dX}{d\tau}=-\frac14 P^\perp_{X,\Gamma}\nabla\log\lambda_1(X)$ and GD on
$\sqrt{L-\min L}$ tracks $\frac{dX}{d\tau}=-\frac18 P^\perp_{X,\Gamma}\nabla\lambda_1(X)$, with
$X(0)=\Phi(x_{\rm init})$ and $\tau=\eta^2\cdot$steps.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..curvature import EigenTracker, grad_top_eigenvalue
from ..curvature._checks import check_w
from ..curvature.hvp import _grad_top_eigenvalue
from ..errors import ConfigError, check_choice, check_positive
from ..objective import LossLike, as_objective
from ..dynamics.manifold import DENSE_MAX_DIM
from ..dynamics.phi import gradient_flow, phi, solve_at

__all__ = ["ALGORITHMS", "LimitingFlow", "flow_constant", "limiting_flow"]

ALGORITHMS = ("normalized_gd", "sqrt_loss_gd")


def flow_constant(algorithm: str) -> tuple[float, bool]:
    r"""$(c, \log)$: the flow is $-c\,P\nabla\log\lambda_1$ or $-c\,P\nabla\lambda_1$."""
    check_choice("algorithm", algorithm, ALGORITHMS)
    return (0.25, True) if algorithm == "normalized_gd" else (0.125, False)


class LimitingFlow(NamedTuple):
    tau: Float[Array, " n"]  # flow times, tau = lr^2 * steps
    X: Float[Array, "n d"]  # X(tau), one row per time
    sharpness: Float[Array, " n"]  # lambda_1(X(tau))
    algorithm: str
    integrator: str

    def steps(self, lr: float) -> np.ndarray:
        """The optimizer step matching each flow time: tau / lr^2."""
        return np.asarray(self.tau) / lr**2


def _dense_field(obj, X, c, log, rank_tol):
    H = jax.hessian(obj)(X)
    evals, evecs = jnp.linalg.eigh(H)
    lam1, v1 = evals[-1], evecs[:, -1]
    normal = (evals > rank_tol * lam1).astype(X.dtype)
    U = evecs * normal[None, :]
    _, g = _grad_top_eigenvalue(obj, X, v1, log)  # D^3 L[v1, v1], divided by lambda_1 if log
    Pg = g - U @ (U.T @ g)
    return -c * Pg, lam1


@eqx.filter_jit
def _projection_flow(obj, X0, taus, *, c, log, rank_tol, rtol, atol, max_steps):
    term = diffrax.ODETerm(lambda t, y, args: _dense_field(obj, y, c, log, rank_tol)[0])
    ys = solve_at(term, diffrax.Tsit5(), X0, taus, rtol=rtol, atol=atol, max_steps=max_steps)
    lam = jax.vmap(lambda x: jnp.linalg.eigvalsh(jax.hessian(obj)(x))[-1])(ys)
    return ys, lam


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
    phi_kwargs: dict | None = None,
    max_steps: int = 100_000,
    projection_time: float | None = None,
) -> LimitingFlow:
    r"""Integrate the paper's flow from $X(0)=\Phi(x_0)$ up to flow time ``tau``.

    ``tau`` is a final time (saved on ``n_save`` equally spaced times) or an increasing array of
    times. ``integrator="projection"`` solves $\dot X = -c P^\perp(X)\nabla f(X)$ with diffrax
    (Tsit5, adaptive), $P^\perp$ and $\lambda_1$ from the dense Hessian: accurate, for small
    problems. ``"retraction"`` takes Riemannian Euler steps $X\leftarrow\Phi(X-h\,c\,\nabla f(X))$
    with matrix-free $\lambda_1, v_1$ (warm-started Lanczos) and
    $\nabla\lambda_1=\nabla^3L[v_1,v_1]$: first order in ``h``, and it scales to networks (the
    paper's "sharpness minimizer").
    """
    obj = as_objective(loss, x0)
    x0 = check_w(x0, obj)
    c, log = flow_constant(algorithm)
    check_choice("integrator", integrator, ("auto", "projection", "retraction"))
    check_positive("rank_tol", rank_tol)
    taus = np.atleast_1d(np.asarray(tau, dtype=np.float64))
    if taus.size == 1:
        check_positive("tau", float(taus[0]))
        if isinstance(n_save, bool) or not isinstance(n_save, int) or n_save < 2:
            raise ConfigError("n_save", n_save, "an integer >= 2")
        taus = np.linspace(0.0, float(taus[0]), n_save)
    if taus.ndim != 1 or np.any(taus < 0) or np.any(np.diff(taus) <= 0):
        raise ConfigError("tau", "<array>", "a positive final time or increasing times >= 0")
    d = x0.shape[0]
    if integrator == "auto":
        integrator = "projection" if d <= DENSE_MAX_DIM else "retraction"
    if integrator == "projection" or projection_time is None:
        X0 = phi(obj, x0, **(phi_kwargs or {}))
    else:
        X0 = x0  # networks: start from the given (near-)minimizer, as the paper's code does
    if integrator == "projection":
        ts = jnp.asarray(taus, x0.dtype)
        X, lam = _projection_flow(
            obj,
            X0,
            ts,
            c=c,
            log=log,
            rank_tol=float(rank_tol),
            rtol=float(rtol),
            atol=float(atol),
            max_steps=max_steps,
        )
        return LimitingFlow(ts, X, lam, algorithm, integrator)
    if projection_time is None:
        project = lambda x: phi(obj, x, **(phi_kwargs or {}))
    else:
        check_positive("projection_time", projection_time)
        ts = jnp.asarray([projection_time], x0.dtype)
        project = lambda x: gradient_flow(obj, x, ts, **(phi_kwargs or {}))[-1]
    return _retraction_flow(obj, X0, taus, c, log, h, project, algorithm)


def _retraction_flow(obj, X0, taus, c, log, h, project, algorithm) -> LimitingFlow:
    if h is None:
        h = float(np.min(np.diff(taus))) if taus.size > 1 else float(taus[0])
        h = min(h, 0.01)
    check_positive("h", h)
    tracker = EigenTracker(obj, k=1, tol=1e-6)
    X = X0
    t = 0.0
    out_X, out_lam, out_t = [], [], []
    i = 0
    while i < taus.size:
        res = tracker.update(X)
        if t >= taus[i] - 1e-12:
            out_X.append(X)
            out_lam.append(res.values[0])
            out_t.append(t)
            i += 1
            continue
        step = min(h, taus[i] - t)
        g = grad_top_eigenvalue(obj, X, res.vectors[:, 0], log=log)
        X = project(X - step * c * g)
        t += step
    return LimitingFlow(
        jnp.asarray(out_t, X0.dtype), jnp.stack(out_X), jnp.stack(out_lam), algorithm, "retraction"
    )
