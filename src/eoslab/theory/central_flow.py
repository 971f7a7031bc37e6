r"""Central flows (Cohen, Damian, Talwalkar, Kolter, Lee 2024/25) and preconditioned sharpness.

GD at the Edge of Stability is modelled as $w_t = w(t) + \delta_t$ with oscillations $\delta_t$ of
covariance $\Sigma(t)$ on the eigenspace at $2/\eta$; the time-averaged iterate follows
$\dot w = -\eta[\nabla L + \tfrac12\nabla\langle H, \Sigma\rangle]$ (t in steps), and $\Sigma$
solves a semidefinite complementarity problem that keeps $\lambda(\eta H) \le 2$.
Formulas: ``shared/docs/theory.md`` section 7.2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, Float

from ..curvature import EigResult, top_eigenpairs
from ..curvature._checks import check_w
from ..curvature.hvp import _hvp
from ..curvature.lanczos import lanczos_top, ritz_vectors
from ..dynamics.rules import Rule
from ..errors import ConfigError, check_choice, check_positive
from ..objective import LossLike, Objective, as_objective
from .trajectory import iterate

__all__ = [
    "CentralFlow",
    "PreconditionedSharpness",
    "RMSPropCentralFlow",
    "adam_threshold",
    "central_flow",
    "central_flow_prediction",
    "heavy_ball_threshold",
    "preconditioned_sharpness",
    "rmsprop_central_flow",
    "solve_sdcp",
    "track_preconditioned_sharpness",
]

SOLVERS = ("auto", "closed_form", "sdp")


# --------------------------------------------------------------------------- small pieces
def _check_int(field: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(field, value, f"an integer >= {low}")
    return int(value)


def krylov_top(
    mv: Callable[[Array], Array], v0: Float[Array, " d"], m: int, k: int, key: Array
) -> tuple[Array, Array, Array]:
    r"""Top-$k$ Ritz pairs of a symmetric operator from an $m$-dim Krylov space started at $v_0$.

    At most $m$ matvecs (the engine's Lanczos with its budget set to $m$), so it runs inside
    ``lax.scan``; returns (values, vectors ``(d, k)``, residuals $\|Av-\theta v\|$).
    """
    m = min(m, v0.shape[0])
    st = lanczos_top(
        mv,
        v0,
        k,
        tol=1e-12,
        m_max=m,
        max_matvecs=m,
        key=key,
        restart_keep=max(1, min(m - 1, k + 1)),
    )
    V = ritz_vectors(st, k)
    return st.theta[:k], V / jnp.linalg.norm(V, axis=0, keepdims=True), st.res[:k]


def _restricted_jac(obj: Objective, w: Array, U: Array) -> tuple[Array, Array]:
    r"""$U^\top H U$ ``(k, k)`` and its gradients $\nabla_w (u_i^\top H u_j)$ ``(k, k, d)``."""

    def restricted(x):
        HU = jax.vmap(lambda u: _hvp(obj, x, u), in_axes=1, out_axes=1)(U)
        return U.T @ HU

    M = restricted(w)
    J = jax.jacrev(restricted)(w)
    return 0.5 * (M + M.T), 0.5 * (J + jnp.swapaxes(J, 0, 1))


# --------------------------------------------------------------------------- the SDCP
def solve_sdcp(
    G: Float[Any, "p p"], C: Float[Any, "k k"], *, solver: str | None = None
) -> np.ndarray:
    r"""$X^\star=\arg\min_{X\succeq0}\tfrac12\beta[X,X]+\langle C,X\rangle$, $\beta[X,X]=
    \mathrm{vec}(X)^\top G\,\mathrm{vec}(X)$ (cvxpy, float64); its KKT conditions are the SDCP.

    ``G`` is the Gram matrix ``(k*k, k*k)`` of $\nabla h_{ij}$ in row-major order of $(i, j)$.
    For $k=1$ the answer is $\max(0, -C/G)$ in closed form.
    """
    C = np.asarray(C, np.float64)
    G = np.asarray(G, np.float64)
    k = C.shape[0]
    if C.shape != (k, k) or G.shape != (k * k, k * k):
        raise ConfigError("G.shape", G.shape, f"({k * k}, {k * k}) for C of shape ({k}, {k})")
    if k == 1:
        g = float(G[0, 0])
        return np.array([[max(0.0, -float(C[0, 0]) / g)]]) if g > 0 else np.zeros((1, 1))
    import cvxpy as cp

    evals, evecs = np.linalg.eigh(0.5 * (G + G.T))
    evals = np.clip(evals, 0.0, None)
    R = (evecs * np.sqrt(evals)[None, :]).T  # G = R^T R
    X = cp.Variable((k, k), PSD=True)
    vec = cp.hstack([X[i, j] for i in range(k) for j in range(k)])
    obj = 0.5 * cp.sum_squares(R @ vec) + cp.trace(0.5 * (C + C.T) @ X)
    prob = cp.Problem(cp.Minimize(obj))
    try:
        prob.solve(solver=solver or cp.CLARABEL)
    except Exception:  # noqa: BLE001 - fall back to the default solver
        prob.solve()
    Xv = np.asarray(X.value, np.float64)
    Xv = 0.5 * (Xv + Xv.T)
    lam, V = np.linalg.eigh(Xv)
    return (V * np.clip(lam, 0.0, None)[None, :]) @ V.T


# --------------------------------------------------------------------------- GD central flow
class CentralFlow(NamedTuple):
    r"""The central flow of GD sampled at steps ``steps`` (one row per saved step)."""

    steps: np.ndarray  # GD step index t of each row
    w: np.ndarray  # (n, d) w(t)
    loss: np.ndarray  # L(w(t))
    pred_loss: np.ndarray  # predicted time average of L(w_t): L(w) + tr(Sigma)/lr
    grad_sq: np.ndarray  # |grad L(w)|^2
    pred_grad_sq: np.ndarray  # |grad L + 1/2 grad<H,Sigma>|^2 + <H^2, Sigma> (= +4 tr Sigma/lr^2)
    trace_sigma: np.ndarray  # tr Sigma(t)
    eigenvalues: np.ndarray  # (n, k) top eigenvalues of H(w(t))
    X: np.ndarray  # (n, k, k) Sigma = U X U^T in the eigenbasis
    U: np.ndarray  # (n, d, k) eigenvectors
    n_active: np.ndarray  # eigenvalues carrying oscillation (X's rank)
    lr: float
    substeps: int

    @property
    def sharpness(self) -> np.ndarray:
        return self.eigenvalues[:, 0]

    def frame(self) -> pd.DataFrame:
        """The scalar series as a DataFrame."""
        return pd.DataFrame(
            {
                "step": self.steps,
                "loss": self.loss,
                "pred_loss": self.pred_loss,
                "grad_sq": self.grad_sq,
                "pred_grad_sq": self.pred_grad_sq,
                "trace_sigma": self.trace_sigma,
                "sharpness": self.sharpness,
                "n_active": self.n_active,
            }
        )


def _closed_form_x(lam, a, b, lr, dt):
    # k = 1: X = max(0, -C/beta), C = 2(2 - lr lam)/(dt lr^2) + 2a, beta = b = |grad S|^2
    C = 2.0 * (2.0 - lr * lam) / (dt * lr**2) + 2.0 * a
    return jnp.where(b > 0, jnp.maximum(0.0, -C / jnp.where(b > 0, b, 1.0)), 0.0)


@eqx.filter_jit
def _cf_scan(obj, w0, v0, key, *, lr, steps, substeps, m, save_every):
    dt = 1.0 / substeps
    vg = jax.value_and_grad(obj)

    def sub(carry, _):
        w, v, key = carry
        key, k1 = jax.random.split(key)
        lam, V, _ = krylov_top(lambda x: _hvp(obj, w, x), v, m, 1, k1)
        u = V[:, 0]
        loss, g = vg(w)
        gS = jax.grad(lambda x: jnp.vdot(u, _hvp(obj, x, u)))(w)
        a, b = jnp.vdot(gS, g), jnp.vdot(gS, gS)
        x = _closed_form_x(lam[0], a, b, lr, dt)
        drift = g + 0.5 * x * gS
        rec = (w, loss, jnp.vdot(g, g), jnp.vdot(drift, drift), lam[0], x, u)
        return (w - dt * lr * drift, u, key), rec

    def step(carry, _):
        carry, recs = jax.lax.scan(sub, carry, None, length=substeps)
        return carry, jax.tree_util.tree_map(lambda r: r[0], recs)

    def block(carry, _):
        carry, recs = jax.lax.scan(step, carry, None, length=save_every)
        return carry, jax.tree_util.tree_map(lambda r: r[0], recs)

    _, recs = jax.lax.scan(block, (w0, v0, key), None, length=steps // save_every)
    return recs


@eqx.filter_jit
def _cf_eig(obj, w, v, key, *, m, k):
    lam, U, res = krylov_top(lambda x: _hvp(obj, w, x), v, m, k, key)
    loss, g = jax.value_and_grad(obj)(w)
    return loss, g, lam, U, res


_cf_jac = eqx.filter_jit(_restricted_jac)


@eqx.filter_jit
def _hessian_quad(f, w, U):
    HU = jax.vmap(lambda u: jax.jvp(jax.grad(f), (w,), (u,))[1], in_axes=1, out_axes=1)(U)
    return U.T @ HU


def central_flow(
    loss: LossLike,
    w0: Float[Array, " d"],
    *,
    lr: float,
    steps: int,
    substeps: int = 4,
    k: int = 1,
    solver: Literal["auto", "closed_form", "sdp"] = "auto",
    save_every: int = 1,
    krylov_dim: int = 30,
    window: float = 0.1,
    seed: int = 0,
) -> CentralFlow:
    r"""Integrate GD's central flow $\dot w=-\eta[\nabla L+\tfrac12\nabla\langle H,\Sigma\rangle]$
    for ``steps`` GD steps with ``substeps`` Euler substeps each.

    At each substep $U$ holds the top-$k$ eigenvectors with $\eta\lambda>2-$``window``;
    $\Sigma=UXU^\top$,
    $X=\arg\min_{X\succeq0}\tfrac12\beta[X,X]+\langle C,X\rangle$ with
    $C=2(2I-\eta U^\top HU)/(dt\,\eta^2)+2[\langle\nabla h_{ij},\nabla L\rangle]$ and
    $\beta$ the Gram of $\nabla h_{ij}=\nabla(u_i^\top Hu_j)$, so that after the substep
    $\lambda(\eta U^\top HU)\le2$ with complementarity. ``solver="closed_form"`` (k = 1) is one
    ``lax.scan``: $X=\max(0,-C/\|\nabla S\|^2)$; ``"sdp"`` solves with cvxpy in a Python loop.
    """
    obj = as_objective(loss, w0)
    w0 = check_w(w0, obj)
    check_positive("lr", lr)
    steps = _check_int("steps", steps)
    substeps = _check_int("substeps", substeps)
    save_every = _check_int("save_every", save_every)
    if steps % save_every:
        raise ConfigError("save_every", save_every, f"a divisor of steps (= {steps})")
    d = obj.dim
    k = _check_int("k", k)
    if k > d:
        raise ConfigError("k", k, f"an integer in [1, {d}]")
    check_choice("solver", solver, SOLVERS)
    if solver == "auto":
        solver = "closed_form" if k == 1 else "sdp"
    if solver == "closed_form" and k != 1:
        raise ConfigError("k", k, "1 for solver='closed_form' (use solver='sdp' for k > 1)")
    m = _check_int("krylov_dim", krylov_dim, 2)
    m = min(m, d)
    if m < k + 1 and d > k:
        raise ConfigError("krylov_dim", krylov_dim, f"an integer >= k + 1 (= {k + 1})")
    check_positive("window", window)
    key = jax.random.PRNGKey(seed)
    v0 = jax.random.normal(key, (d,), w0.dtype)
    v0 = top_eigenpairs(obj, w0, k, tol=1e-6).vectors
    n = steps // save_every
    idx = np.arange(n) * save_every
    if solver == "closed_form":
        recs = _cf_scan(
            obj,
            w0,
            v0[:, 0],
            key,
            lr=float(lr),
            steps=steps,
            substeps=substeps,
            m=m,
            save_every=save_every,
        )
        w, ls, gsq, dsq, lam, x, u = (np.asarray(r) for r in recs)
        tr = x
        return CentralFlow(
            idx,
            w,
            ls,
            ls + tr / lr,
            gsq,
            dsq + 4.0 * tr / lr**2,
            tr,
            lam[:, None],
            x[:, None, None],
            u[:, :, None],
            (x > 0).astype(int),
            float(lr),
            substeps,
        )
    return _central_flow_sdp(obj, w0, v0, key, lr, steps, substeps, k, m, save_every, window)


def _central_flow_sdp(obj, w, V, key, lr, steps, substeps, k, m, save_every, window):
    dt = 1.0 / substeps
    d = w.shape[0]
    out: dict[str, list] = {n: [] for n in ("w", "l", "g", "d", "lam", "X", "U", "tr", "na")}
    v = jnp.sum(V, axis=1)
    for t in range(steps):
        for s in range(substeps):
            key, k1 = jax.random.split(key)
            loss, g, lam, U, _ = _cf_eig(obj, w, v, k1, m=m, k=k)
            lam_np = np.asarray(lam)
            act = np.nonzero(lr * lam_np > 2.0 - window)[0]
            X = np.zeros((k, k))
            corr = np.zeros(d)
            if act.size:
                M, J = _cf_jac(obj, w, U[:, act])
                Ja = np.asarray(J).reshape(act.size**2, -1)
                C = 2.0 * (2.0 * np.eye(act.size) - lr * np.asarray(M)) / (dt * lr**2)
                C = C + 2.0 * (Ja @ np.asarray(g)).reshape(act.size, act.size)
                Xa = solve_sdcp(Ja @ Ja.T, C)
                X[np.ix_(act, act)] = Xa
                corr = Xa.reshape(-1) @ Ja
            drift = np.asarray(g) + 0.5 * corr
            if s == 0 and t % save_every == 0:
                tr = float(np.trace(X))
                out["w"].append(np.asarray(w))
                out["l"].append(float(loss))
                out["g"].append(float(np.vdot(g, g)))
                out["d"].append(float(drift @ drift))
                out["lam"].append(lam_np)
                out["X"].append(X)
                out["U"].append(np.asarray(U))
                out["tr"].append(tr)
                out["na"].append(int(np.sum(np.linalg.eigvalsh(X) > 1e-9 * max(tr, 1e-300))))
            w = w - dt * lr * jnp.asarray(drift, w.dtype)
            v = jnp.sum(U[:, : max(1, act.size)], axis=1) + 0.1 * U[:, -1]
    ls, tr = np.asarray(out["l"]), np.asarray(out["tr"])
    return CentralFlow(
        np.arange(len(ls)) * save_every,
        np.stack(out["w"]),
        ls,
        ls + tr / lr,
        np.asarray(out["g"]),
        np.asarray(out["d"]) + 4.0 * tr / lr**2,
        tr,
        np.stack(out["lam"]),
        np.stack(out["X"]),
        np.stack(out["U"]),
        np.asarray(out["na"]),
        float(lr),
        substeps,
    )


def central_flow_prediction(
    f: Callable[[Array], Array], flow: CentralFlow, rows: Any = None
) -> np.ndarray:
    r"""$\mathbb E f(w_t)\approx f(w(t))+\tfrac12\langle\nabla^2 f(w(t)),\Sigma(t)\rangle$ at the
    flow's saved rows (all by default), for any smooth ``f(w) -> scalar``."""
    if not callable(f):
        raise ConfigError("f", f, "a callable f(w) -> scalar")
    rows = np.arange(flow.steps.size) if rows is None else np.atleast_1d(rows)
    out = []
    for i in rows:
        w = jnp.asarray(flow.w[i])
        U = jnp.asarray(flow.U[i])
        Q = np.asarray(_hessian_quad(f, w, U))
        out.append(float(f(w)) + 0.5 * float(np.sum(Q * flow.X[i])))
    return np.asarray(out)


# --------------------------------------------------------------------------- RMSProp central flow
class RMSPropCentralFlow(NamedTuple):
    r"""RMSProp's central flow: $w(t)$, $\nu(t)$ and the predictions, one row per step."""

    steps: np.ndarray
    w: np.ndarray  # (n, d)
    nu: np.ndarray  # (n, d) or (n, 1) for scalar RMSProp
    loss: np.ndarray
    pred_loss: np.ndarray  # L(w) + 1/2 <H, Sigma>
    sigma2: np.ndarray  # Sigma = sigma2 u u^T in w-space
    eff_sharpness: np.ndarray  # lambda_1(lr P^-1 H), P = sqrt(nu) + eps (threshold 2)


@eqx.filter_jit
def _rms_scan(obj, w0, nu0, v0, key, *, lr, beta2, eps, steps, substeps, m, scalar):
    dt = 1.0 / substeps
    vg = jax.value_and_grad(obj)

    def eff(w, nu, ut):
        s = 1.0 / jnp.sqrt(jnp.sqrt(nu) + eps)
        return lr * jnp.vdot(ut * s, _hvp(obj, w, ut * s))

    def sub(carry, _):
        w, nu, v, key = carry
        key, k1 = jax.random.split(key)
        s = 1.0 / jnp.sqrt(jnp.sqrt(nu) + eps)  # D^{-1/2}, broadcast for scalar nu
        mu, V, _ = krylov_top(lambda z: lr * s * _hvp(obj, w, s * z), v, m, 1, k1)
        ut = V[:, 0]
        u = s * ut
        loss, g = vg(w)
        Hu = _hvp(obj, w, u)
        gh = jax.grad(lambda x: jnp.vdot(u, _hvp(obj, x, u)))(w)
        gm_w, gm_nu = jax.grad(eff, argnums=(0, 1))(w, nu, ut)
        pinv = s**2
        # dw/dt = -lr P^-1 [g + x gh / 2];  dnu/dt = (1 - beta2)[E g^2 - nu]
        gsq0 = jnp.sum(g**2, keepdims=True) if scalar else g**2
        hsq = jnp.sum(Hu**2, keepdims=True) if scalar else Hu**2
        a = jnp.vdot(gm_w, -lr * pinv * g) + jnp.vdot(gm_nu, (1 - beta2) * (gsq0 - nu))
        b = jnp.vdot(gm_w, -0.5 * lr * pinv * gh) + jnp.vdot(gm_nu, (1 - beta2) * hsq)
        # after the substep: mu + dt (a + b x) <= 2, x >= 0, complementary
        x = jnp.where(
            b < 0, jnp.maximum(0.0, (2.0 - mu[0] - dt * a) / (dt * jnp.where(b < 0, b, -1.0))), 0.0
        )
        rec = (w, nu, loss, loss + 0.5 * x * jnp.vdot(u, Hu), x, mu[0])
        w2 = w - dt * lr * pinv * (g + 0.5 * x * gh)
        nu2 = nu + dt * (1 - beta2) * (gsq0 + x * hsq - nu)
        return (w2, nu2, ut, key), rec

    def step(carry, _):
        carry, recs = jax.lax.scan(sub, carry, None, length=substeps)
        return carry, jax.tree_util.tree_map(lambda r: r[0], recs)

    _, recs = jax.lax.scan(step, (w0, nu0, v0, key), None, length=steps)
    return recs


def rmsprop_central_flow(
    loss: LossLike,
    w0: Float[Array, " d"],
    nu0: Float[Array, " d"] | float,
    *,
    lr: float,
    beta2: float = 0.99,
    eps: float = 1e-8,
    steps: int,
    substeps: int = 4,
    scalar: bool = False,
    krylov_dim: int = 30,
    seed: int = 0,
) -> RMSPropCentralFlow:
    r"""Central flow of RMSProp $\nu_{t+1}=\beta_2\nu_t+(1-\beta_2)g_t^2$,
    $w_{t+1}=w_t-\eta g_t/(\sqrt{\nu_{t+1}}+\epsilon)$ (no bias correction).

    $\dot w=-\eta P^{-1}[\nabla L+\tfrac12\nabla\langle H,\Sigma\rangle]$,
    $\dot\nu=(1-\beta_2)[\nabla L^{2}+\mathrm{diag}(H\Sigma H)-\nu]$, with $\Sigma=\sigma^2uu^\top$
    on the top eigenvector of $\eta P^{-1}H$ and $\sigma^2$ from the one-eigenvalue complementarity
    problem that keeps $\lambda_1(\eta P^{-1}H)\le2$. ``scalar=True``: $\nu$ is one number
    tracking $\|g\|^2$ (then $P=(\sqrt\nu+\epsilon)I$).
    """
    obj = as_objective(loss, w0)
    w0 = check_w(w0, obj)
    check_positive("lr", lr)
    if not (isinstance(beta2, (int, float)) and 0.0 <= beta2 < 1.0):
        raise ConfigError("beta2", beta2, "a number in [0, 1)")
    check_positive("eps", eps, allow_zero=True)
    steps = _check_int("steps", steps)
    substeps = _check_int("substeps", substeps)
    nu0 = jnp.asarray(nu0, w0.dtype)
    want = (1,) if scalar else w0.shape
    nu0 = (
        jnp.broadcast_to(nu0.reshape(-1) if nu0.ndim else nu0[None], want)
        if nu0.size in (1, int(np.prod(want)))
        else None
    )
    if nu0 is None or not bool(jnp.all(nu0 > 0)):
        raise ConfigError("nu0", "<array>", f"positive values of shape {want} (or one number)")
    m = min(_check_int("krylov_dim", krylov_dim, 2), obj.dim)
    key = jax.random.PRNGKey(seed)
    v0 = jax.random.normal(key, w0.shape, w0.dtype)
    recs = _rms_scan(
        obj,
        w0,
        nu0,
        v0,
        key,
        lr=float(lr),
        beta2=float(beta2),
        eps=float(eps),
        steps=steps,
        substeps=substeps,
        m=m,
        scalar=bool(scalar),
    )
    w, nu, ls, pl, x, mu = (np.asarray(r) for r in recs)
    return RMSPropCentralFlow(np.arange(steps), w, nu, ls, pl, x, mu)


# ------------------------------------------------------------------- preconditioned sharpness
@dataclasses.dataclass(frozen=True)
class _Preconditioned:
    """$z\\mapsto L(w + P^{-1/2}z)$: its Hessian at 0 is $P^{-1/2}HP^{-1/2}$."""

    fn: Callable[[Array, Any], Array]

    def __call__(self, z: Array, data: Any) -> Array:
        return self.fn(data["w"] + data["s"] * z, data["inner"])


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
    method: Literal["lanczos", "lobpcg", "power"] = "lanczos",
) -> PreconditionedSharpness:
    r"""$\lambda_{1..k}(P^{-1}H)$ for a positive diagonal $P$ (Adam: $P=\sqrt{\hat\nu}+\epsilon$),
    by Lanczos on the symmetric $P^{-1/2}HP^{-1/2}$ (compiled once per shape)."""
    obj = as_objective(loss, w)
    w = check_w(w, obj)
    P = jnp.asarray(P_diag, w.dtype)
    if P.shape != w.shape:
        raise ConfigError("P_diag.shape", P.shape, f"{w.shape} (one entry per parameter)")
    if not bool(jnp.all(jnp.isfinite(P))) or not bool(jnp.all(P > 0)):
        raise ConfigError("P_diag", "<array>", "finite, strictly positive entries")
    sym = Objective.from_data_fn(
        _Preconditioned(obj.fn),
        {"w": w, "s": 1.0 / jnp.sqrt(P), "inner": obj.data},
        jnp.zeros_like(w),
        dtype=w.dtype,
    )
    res = top_eigenpairs(sym, jnp.zeros_like(w), k, tol=tol, v0=v0, method=method)
    return PreconditionedSharpness(res.values, res.vectors, res)


def adam_threshold(lr: float, beta1: float = 0.9) -> float:
    r"""Adam's stability threshold for $\lambda_1(P^{-1}H)$: $(2+2\beta_1)/((1-\beta_1)\eta)$."""
    check_positive("lr", lr)
    if not (isinstance(beta1, (int, float)) and 0.0 <= beta1 < 1.0):
        raise ConfigError("beta1", beta1, "a number in [0, 1)")
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


def heavy_ball_threshold(lr: float, beta: float = 0.9) -> float:
    r"""Heavy ball's stability threshold for $\lambda_1(H)$: $(2+2\beta)/\eta$."""
    check_positive("lr", lr)
    if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
        raise ConfigError("beta", beta, "a number in [0, 1)")
    return (2.0 + 2.0 * beta) / lr


def track_preconditioned_sharpness(
    loss: LossLike,
    w0: Float[Array, " d"],
    rule: Rule,
    steps: int,
    *,
    every: int = 10,
    tol: float = 1e-5,
) -> pd.DataFrame:
    r"""Run ``rule`` and measure $\lambda_1(P_t^{-1}H(w_t))$ every ``every`` steps, where $P_t$
    preconditions the step taken from $w_t$ ($P=I$ for rules without one); columns ``step``,
    ``loss``, ``sharpness`` (of $P^{-1}H$), ``threshold`` (the rule's) and ``ratio``."""
    obj = as_objective(loss, w0)
    w0 = check_w(w0, obj)
    if not isinstance(rule, Rule):
        raise ConfigError("rule", rule, "an eoslab.dynamics.rules.Rule (e.g. rules.adam(1e-3))")
    steps = _check_int("steps", steps)
    every = _check_int("every", every)
    if steps % every:
        raise ConfigError("every", every, f"a divisor of steps (= {steps})")
    it = iterate(obj, w0, rule, steps, save_every=every)
    ws, ls, thr = it.w[:-1], it.loss[:-1], it.threshold[:-1]
    Ps = jnp.ones_like(ws) if it.precond is None else it.precond[:-1]
    rows, v = [], None
    for i in range(ws.shape[0]):
        ps = preconditioned_sharpness(obj, ws[i], Ps[i], 1, tol=tol, v0=v)
        v = ps.vectors[:, 0]
        lam = float(ps.values[0])
        rows.append(
            {
                "step": i * every,
                "loss": float(ls[i]),
                "sharpness": lam,
                "threshold": float(thr[i]),
                "ratio": lam / float(thr[i]),
            }
        )
    return pd.DataFrame(rows)
