r"""Central flows (Cohen, Damian, Talwalkar, Kolter, Lee; ICLR 2025) as processes.

GD at the Edge of Stability is modelled as $w_t = w(t) + \delta_t$ with oscillations of covariance
$\Sigma(t)$ on the eigenspace at $2/\eta$; the time-averaged iterate follows
$\dot w = -\eta[\nabla L + \tfrac12\nabla\langle H, \Sigma\rangle]$ ($t$ in steps), and $\Sigma$
solves a semidefinite complementarity problem that keeps $\lambda(\eta H) \le 2$. One process step
is one GD step, integrated with ``substeps`` Euler substeps (``docs/theory.md``, "Central flows").
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..curvature import krylov_top, top_eigenpairs
from ..curvature.lanczos import lanczos_top, ritz_vectors
from ..curvature.operator import HessianOperator, PreconditionedOperator
from ..curvature.rounding import clip_tol
from ..errors import ConfigError, check_int, check_positive
from ..objective import Objective, as_objective
from .process import CompiledProcess, HostProcess, Process, Row
from .sdcp import solve_sdcp

__all__ = [
    "CentralFlow",
    "CentralFlowState",
    "RMSPropCentralFlow",
    "RMSPropCentralFlowState",
    "SDPCentralFlow",
    "restricted_hessian",
]


class CentralFlowState(NamedTuple):
    w: Float[Array, " d"]  # w(t)
    v: Array  # warm start of the next eigen-solve: (d,), or the tracked block (d, p) (CentralFlow)
    key: Array  # PRNG key of the Krylov restarts


def _closed_form_x(lam, a, b, lr, dt):
    # k = 1: X = max(0, -C/beta), C = 2(2 - lr lam)/(dt lr^2) + 2a, beta = b = |grad S|^2
    C = 2.0 * (2.0 - lr * lam) / (dt * lr**2) + 2.0 * a
    return jnp.where(b > 0, jnp.maximum(0.0, -C / jnp.where(b > 0, b, 1.0)), 0.0)


class _GDCentralFlowBase(Process):
    lr: float
    """GD's learning rate eta (one process step is one GD step)."""
    substeps: int = 4
    """Euler substeps per GD step."""
    krylov_dim: int = 30
    """Krylov dimension of each eigen-solve (the most HVPs it spends per substep)."""
    seed: int = 0
    """Seed of the Krylov restarts."""

    def _check(self) -> None:
        check_positive("lr", self.lr)
        check_int("substeps", self.substeps)
        check_int("krylov_dim", self.krylov_dim, 2)

    def point(self, state: CentralFlowState) -> Array:
        return state.w

    def _start(self, objective: Objective, w0: Array, k: int) -> CentralFlowState:
        key = jax.random.PRNGKey(self.seed)
        V = top_eigenpairs(objective.base(), w0, k, tol=clip_tol(1e-6, w0.dtype)).vectors
        return CentralFlowState(w0, V[:, 0] if k == 1 else jnp.sum(V, axis=1), key)

    @abc.abstractmethod
    def sigma(self, row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        r"""$\Sigma=UXU^\top$ at one of this flow's rows: ``(U (d, k), X (k, k))``."""

    def predicted_mean(self, f: Callable[[Array], Array], row: Mapping[str, Any]) -> float:
        r"""$\mathbb E f(w_t)\approx f(w)+\tfrac12\langle\nabla^2 f(w),\Sigma\rangle$ for any
        smooth ``f(w) -> scalar``, at one row of this flow's run (``run.series(name)``, kept
        with ``keep_points``, and ``record_vectors`` for a `CentralFlow`)."""
        if not callable(f):
            raise ConfigError("f", f, "a callable f(w) -> scalar")
        w = jnp.asarray(row["w"])
        U, X = self.sigma(row)
        Q = np.asarray(_hessian_quad(f, w, jnp.asarray(U, w.dtype)))
        return float(f(w)) + 0.5 * float(np.sum(Q * X))


@eqx.filter_jit
def _hessian_quad(f, w, U):
    return U.T @ HessianOperator(as_objective(f, w), w).mm(U)


class _Tracked(NamedTuple):
    u: Array  # unit top Ritz vector
    lam: Array  # its Ritz value theta_1
    guard: Array  # the block's lowest Ritz value theta_p
    block: Array  # the next warm block (d, p), orthonormal
    matvecs: Array


def _track_top(H: HessianOperator, Y: Array, key: Array, *, tol: float, m: int) -> _Tracked:
    r"""One substep of the warm eigen-solve: Rayleigh-Ritz on the whole carried block $Y$
    (``p`` HVPs, one batched product), then a subspace-iteration step to the next block.

    $Y^\top HY=S\Theta S^\top$ gives Ritz pairs $(\theta_i, z_i=Ys_i)$ and $Hz_i=(HY)s_i$ for
    free, so the top pair's residual $\lVert Hz_1-\theta_1z_1\rVert$ is exact. Above
    ``tol``$\cdot|\theta_1|$ block Lanczos from $[z_1, z_2]$ refines $(u,\lambda_1)$ (at most
    ``m`` HVPs). The next block is $\mathrm{orth}[u, Hz_2,\dots,Hz_p]$: every column is
    multiplied at every substep, so no eigenvalue whose eigenvector lies in the block's span can
    rise past $\theta_1$ unseen (Rayleigh-Ritz), and one that rises from below is drawn into the
    span by the subspace step once it passes the guard $\theta_p$.
    """
    HY = H.mm(Y)
    T = Y.T @ HY
    theta, S = jnp.linalg.eigh(0.5 * (T + T.T))
    theta, S = theta[::-1], S[:, ::-1]
    Z, HZ = Y @ S, HY @ S
    res = jnp.linalg.norm(HZ[:, 0] - theta[0] * Z[:, 0])
    good = res <= tol * jnp.abs(theta[0])

    def refine(_):
        st = lanczos_top(
            H.mv, Z[:, :2], 1, tol=tol, m_max=m, max_matvecs=m, key=key, restart_keep=2
        )
        v = ritz_vectors(st, 1)[:, 0]
        return v / jnp.linalg.norm(v), st.theta[0], st.matvecs

    u, lam, extra = jax.lax.cond(good, lambda _: (Z[:, 0], theta[0], jnp.array(0)), refine, None)
    Q, _ = jnp.linalg.qr(jnp.concatenate([u[:, None], HZ[:, 1:]], axis=1))
    return _Tracked(u, lam, theta[-1], Q, Y.shape[1] + extra)


class CentralFlow(_GDCentralFlowBase, CompiledProcess):
    r"""GD's central flow with one oscillating direction (the closed form of the SDCP).

    Each substep: $u$ = top eigenvector, $\nabla S=\nabla^3L[u,u]$,
    $\sigma^2=\max(0,-C/\|\nabla S\|^2)$ with
    $C=2(2-\eta\lambda_1)/(dt\,\eta^2)+2\langle\nabla S,\nabla L\rangle$, and
    $w\leftarrow w-dt\,\eta(\nabla L+\tfrac12\sigma^2\nabla S)$. The row gives ``pred_loss``
    $=L(w)+\sigma^2/\eta$ (the predicted time average of GD's loss), ``trace_sigma``
    $=\sigma^2$, ``cf_sharpness`` (the solve's $\lambda_1$), ``cf_guard`` (the warm block's
    lowest Ritz value), ``pred_grad_sq`` and ``cf_matvecs`` (the eigen-solves' HVPs over the
    step's substeps).

    The eigen-solve tracks the top ``block`` eigenvectors: each substep applies $H$ to the whole
    carried block (one batched product), takes its top Ritz pair, refines it by block Lanczos
    when its residual exceeds ``eig_tol`` $\cdot\lambda_1$ (at most ``krylov_dim`` HVPs), and
    carries one subspace-iteration step of the block, which costs no HVP. A warm substep spends
    ``block`` HVPs; the step stays one ``lax.scan``. The block must hold every eigenvalue near
    $2/\eta$ with a guard below them: ``cf_guard`` $\cdot\,\eta/2$ close to 1 says it is too
    narrow (``docs/theory.md``, "Central flows").
    """

    eig_tol: float = 5e-3
    """Relative residual of lambda_1 above which a substep refines it by Lanczos."""
    block: int = 8
    """Top eigenvectors tracked by the warm eigen-solve (capped at the dimension)."""
    record_vectors: bool = False
    """Add the oscillation direction u to every row (small problems)."""

    def __check_init__(self) -> None:
        self._check()
        check_positive("eig_tol", self.eig_tol)
        check_int("block", self.block, 2)

    def sigma(self, row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        if "u" not in row:
            raise ConfigError("record_vectors", self.record_vectors, "True (rows need u)")
        return np.asarray(row["u"])[:, None], np.array([[float(row["trace_sigma"])]])

    def init(self, objective: Objective, w0: Float[Array, " d"]) -> CentralFlowState:
        key = jax.random.PRNGKey(self.seed)
        p = min(self.block, w0.shape[0])
        V = top_eigenpairs(objective.base(), w0, p, tol=clip_tol(1e-6, w0.dtype)).vectors
        return CentralFlowState(w0, V, key)

    def step(self, objective: Objective, state: CentralFlowState):
        base, lr, dt = objective.base(), self.lr, 1.0 / self.substeps
        d, p = state.v.shape
        m = max(min(self.krylov_dim, d), min(2, d))

        def sub(carry, _):
            w, V, key = carry
            key, k1 = jax.random.split(key)
            H = HessianOperator(base, w)
            tr = _track_top(H, V, k1, tol=self.eig_tol, m=m)
            u, lam = tr.u, tr.lam
            loss, g = jax.value_and_grad(base)(w)
            _, gS = H.grad_quadratic_form(u)
            a, b = jnp.vdot(gS, g), jnp.vdot(gS, gS)
            x = _closed_form_x(lam, a, b, lr, dt)
            drift = g + 0.5 * x * gS
            rec = {
                "loss": loss,
                "grad_norm": jnp.linalg.norm(g),
                "pred_loss": loss + x / lr,
                "trace_sigma": x,
                "cf_sharpness": lam,
                "cf_guard": tr.guard,
                "pred_grad_sq": jnp.vdot(drift, drift) + 4.0 * x / lr**2,
                "cf_matvecs": tr.matvecs,
            }
            if self.record_vectors:
                rec["u"] = u
            return (w - dt * lr * drift, tr.block, key), rec

        (w, V, key), recs = jax.lax.scan(
            sub, (state.w, state.v, state.key), None, length=self.substeps
        )
        row = jax.tree_util.tree_map(lambda r: r[0], recs)
        row["cf_matvecs"] = jnp.sum(recs["cf_matvecs"])
        row["lr_eff"] = jnp.asarray(lr, w.dtype)
        row["threshold"] = jnp.asarray(2.0 / lr, w.dtype)
        return CentralFlowState(w, V, key), row


def restricted_hessian(obj: Objective, w: Array, U: Array) -> tuple[Array, Array]:
    r"""$U^\top H U$ ``(k, k)`` and its gradients $\nabla_w (u_i^\top H u_j)$ ``(k, k, d)``."""

    def restricted(x):
        return U.T @ HessianOperator(obj, x).mm(U)

    M = restricted(w)
    J = jax.jacrev(restricted)(w)
    return 0.5 * (M + M.T), 0.5 * (J + jnp.swapaxes(J, 0, 1))


@eqx.filter_jit
def _eig(obj, w, v, key, *, m, k):
    lam, U, res = krylov_top(HessianOperator(obj, w), v, m, k, key)
    loss, g = jax.value_and_grad(obj)(w)
    return loss, g, lam, U, res


_restricted_jit = eqx.filter_jit(restricted_hessian)


class SDPCentralFlow(_GDCentralFlowBase, HostProcess):
    r"""GD's central flow with up to ``k`` oscillating directions: $\Sigma=UXU^\top$, $X$ from the
    SDCP (cvxpy) on the top-``k`` eigenvectors with $\eta\lambda>2-$``window`` (a host loop).

    $X=\arg\min_{X\succeq0}\tfrac12\beta[X,X]+\langle C,X\rangle$ with
    $C=2(2I-\eta U^\top HU)/(dt\,\eta^2)+2[\langle\nabla h_{ij},\nabla L\rangle]$ and $\beta$ the
    Gram of $\nabla h_{ij}=\nabla(u_i^\top Hu_j)$.
    """

    k: int = 2
    """Most directions that may oscillate."""
    window: float = 0.1
    """Eigenvalues with eta lambda > 2 - window may carry oscillation."""

    def __check_init__(self) -> None:
        self._check()
        check_int("k", self.k)
        check_positive("window", self.window)

    def sigma(self, row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(row["U"]), np.asarray(row["X"])

    def init(self, objective: Objective, w0: Float[Array, " d"]) -> CentralFlowState:
        if self.k > w0.shape[0]:
            raise ConfigError("k", self.k, f"an integer in [1, {w0.shape[0]}]")
        return self._start(objective, w0, self.k)

    def _substep(self, base: Objective, state: CentralFlowState) -> tuple[CentralFlowState, dict]:
        lr, dt, k = self.lr, 1.0 / self.substeps, self.k
        w, v, key = state
        m = max(min(self.krylov_dim, w.shape[0]), k)
        key, k1 = jax.random.split(key)
        loss, g, lam, U, _ = _eig(base, w, v, k1, m=m, k=k)
        lam_np = np.asarray(lam)
        act = np.nonzero(lr * lam_np > 2.0 - self.window)[0]
        X = np.zeros((k, k))
        corr = np.zeros(w.shape[0])
        if act.size:
            M, J = _restricted_jit(base, w, U[:, act])
            Ja = np.asarray(J).reshape(act.size**2, -1)
            C = 2.0 * (2.0 * np.eye(act.size) - lr * np.asarray(M)) / (dt * lr**2)
            C = C + 2.0 * (Ja @ np.asarray(g)).reshape(act.size, act.size)
            Xa = solve_sdcp(Ja @ Ja.T, C)
            X[np.ix_(act, act)] = Xa
            corr = Xa.reshape(-1) @ Ja
        drift = np.asarray(g) + 0.5 * corr
        tr = float(np.trace(X))
        rec = {
            "loss": float(loss),
            "grad_norm": float(np.linalg.norm(np.asarray(g))),
            "pred_loss": float(loss) + tr / lr,
            "trace_sigma": tr,
            "cf_sharpness": float(lam_np[0]),
            "pred_grad_sq": float(drift @ drift) + 4.0 * tr / lr**2,
            "n_active": int(np.sum(np.linalg.eigvalsh(X) > 1e-9 * max(tr, 1e-300))),
            "eigenvalues": lam_np,
            "X": X,
            "U": np.asarray(U),
            "lr_eff": lr,
            "threshold": 2.0 / lr,
        }
        w = w - dt * lr * jnp.asarray(drift, w.dtype)
        v = jnp.sum(U[:, : max(1, act.size)], axis=1) + 0.1 * U[:, -1]
        return CentralFlowState(w, v, key), rec

    def advance(self, objective: Objective, state: CentralFlowState, n: int) -> CentralFlowState:
        base = objective.base()
        for _ in range(n * self.substeps):
            state, _ = self._substep(base, state)
        return state

    def measure(self, objective: Objective, state: CentralFlowState) -> Row:
        return self._substep(objective.base(), state)[1]


class RMSPropCentralFlowState(NamedTuple):
    w: Float[Array, " d"]
    nu: Float[Array, " d"]  # (d,) or (1,) for scalar RMSProp
    v: Float[Array, " d"]
    key: Array


class RMSPropCentralFlow(CompiledProcess):
    r"""Central flow of RMSProp $\nu_{t+1}=\beta_2\nu_t+(1-\beta_2)g_t^2$,
    $w_{t+1}=w_t-\eta g_t/(\sqrt{\nu_{t+1}}+\epsilon)$ (no bias correction).

    $\dot w=-\eta P^{-1}[\nabla L+\tfrac12\nabla\langle H,\Sigma\rangle]$,
    $\dot\nu=(1-\beta_2)[\nabla L^{2}+\mathrm{diag}(H\Sigma H)-\nu]$, $\Sigma=\sigma^2uu^\top$ on
    the top eigenvector of $\eta P^{-1}H$, $\sigma^2$ from the one-eigenvalue complementarity
    problem that keeps $\lambda_1(\eta P^{-1}H)\le2$. ``scalar=True``: $\nu$ is one number
    tracking $\|g\|^2$. ``nu0`` is $\nu(0)$ (one number, or one per parameter).
    """

    lr: float
    nu0: Float[Array, " d"] | float
    beta2: float = 0.99
    eps: float = 1e-8
    substeps: int = 4
    scalar: bool = False
    krylov_dim: int = 30
    seed: int = 0
    record_vectors: bool = False

    def __check_init__(self) -> None:
        check_positive("lr", self.lr)
        if not (isinstance(self.beta2, (int, float)) and 0.0 <= self.beta2 < 1.0):
            raise ConfigError("beta2", self.beta2, "a number in [0, 1)")
        check_positive("eps", self.eps, allow_zero=True)
        check_int("substeps", self.substeps)
        check_int("krylov_dim", self.krylov_dim, 2)

    def init(self, objective: Objective, w0: Float[Array, " d"]) -> RMSPropCentralFlowState:
        nu0 = jnp.asarray(self.nu0, w0.dtype)
        want = (1,) if self.scalar else w0.shape
        ok = nu0.size in (1, int(np.prod(want)))
        nu0 = jnp.broadcast_to(nu0.reshape(-1) if nu0.ndim else nu0[None], want) if ok else None
        if nu0 is None or not bool(jnp.all(nu0 > 0)):
            raise ConfigError("nu0", "<array>", f"positive values of shape {want} (or one number)")
        key = jax.random.PRNGKey(self.seed)
        return RMSPropCentralFlowState(w0, nu0, jax.random.normal(key, w0.shape, w0.dtype), key)

    def point(self, state: RMSPropCentralFlowState) -> Array:
        return state.w

    def operator(self, objective: Objective, state: RMSPropCentralFlowState):
        r"""$P^{-1/2}HP^{-1/2}$ with $P=\sqrt\nu+\epsilon$ (threshold $2/\eta$)."""
        p = jnp.broadcast_to(jnp.sqrt(state.nu) + self.eps, state.w.shape)
        return PreconditionedOperator(HessianOperator(objective.base(), state.w), p)

    def step(self, objective: Objective, state: RMSPropCentralFlowState):
        base = objective.base()
        lr, beta2, eps, dt = self.lr, self.beta2, self.eps, 1.0 / self.substeps
        m = min(self.krylov_dim, state.w.shape[0])

        def eff(w, nu, ut):
            s = 1.0 / jnp.sqrt(jnp.sqrt(nu) + eps)
            return lr * HessianOperator(base, w).quadratic_form(ut * s)

        def sub(carry, _):
            w, nu, v, key = carry
            key, k1 = jax.random.split(key)
            s = 1.0 / jnp.sqrt(jnp.sqrt(nu) + eps)  # P^{-1/2}, broadcast for scalar nu
            H = HessianOperator(base, w)
            P = PreconditionedOperator(H, jnp.broadcast_to(jnp.sqrt(nu) + eps, w.shape))
            mu, V, _ = krylov_top(P, v, m, 1, k1)
            mu = lr * mu  # the top eigenvalue of lr P^{-1/2} H P^{-1/2}
            ut = V[:, 0]
            u = s * ut
            loss, g = jax.value_and_grad(base)(w)
            Hu = H.mv(u)
            _, gh = H.grad_quadratic_form(u)
            gm_w, gm_nu = jax.grad(eff, argnums=(0, 1))(w, nu, ut)
            pinv = s**2
            # dw/dt = -lr P^-1 [g + x gh / 2];  dnu/dt = (1 - beta2)[E g^2 - nu]
            gsq0 = jnp.sum(g**2, keepdims=True) if self.scalar else g**2
            hsq = jnp.sum(Hu**2, keepdims=True) if self.scalar else Hu**2
            a = jnp.vdot(gm_w, -lr * pinv * g) + jnp.vdot(gm_nu, (1 - beta2) * (gsq0 - nu))
            b = jnp.vdot(gm_w, -0.5 * lr * pinv * gh) + jnp.vdot(gm_nu, (1 - beta2) * hsq)
            # after the substep: mu + dt (a + b x) <= 2, x >= 0, complementary
            bneg = jnp.where(b < 0, b, -1.0)
            x = jnp.where(b < 0, jnp.maximum(0.0, (2.0 - mu[0] - dt * a) / (dt * bneg)), 0.0)
            rec = {
                "loss": loss,
                "grad_norm": jnp.linalg.norm(g),
                "pred_loss": loss + 0.5 * x * jnp.vdot(u, Hu),
                "sigma2": x,
                "cf_eff_sharpness": mu[0] / lr,
            }
            if self.record_vectors:
                rec["nu"] = nu
            w2 = w - dt * lr * pinv * (g + 0.5 * x * gh)
            nu2 = nu + dt * (1 - beta2) * (gsq0 + x * hsq - nu)
            return (w2, nu2, ut, key), rec

        carry, recs = jax.lax.scan(sub, tuple(state), None, length=self.substeps)
        row = jax.tree_util.tree_map(lambda r: r[0], recs)
        row["lr_eff"] = jnp.asarray(lr, state.w.dtype)
        row["threshold"] = jnp.asarray(2.0 / lr, state.w.dtype)
        return RMSPropCentralFlowState(*carry), row
