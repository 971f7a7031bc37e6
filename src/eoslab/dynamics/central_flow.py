r"""Central flows (Cohen, Damian, Talwalkar, Kolter, Lee; ICLR 2025) as processes.

GD at the Edge of Stability is modelled as $w_t = w(t) + \delta_t$ with oscillations of covariance
$\Sigma(t)$ on the eigenspace at $2/\eta$; the time-averaged iterate follows
$\dot w = -\eta[\nabla L + \tfrac12\nabla\langle H, \Sigma\rangle]$ ($t$ in steps), and $\Sigma$
solves a semidefinite complementarity problem that keeps $\lambda(\eta H) \le 2$. One process step
is one GD step, integrated with ``substeps`` Euler substeps (``docs/theory.md``, "Central flows").
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..curvature import krylov_top, top_eigenpairs
from ..curvature.lanczos import LanczosState, lanczos_top, ritz_vectors
from ..curvature.operator import HessianOperator, PreconditionedOperator
from ..errors import ConfigError, check_int, check_positive
from ..objective import Objective
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
    v: Array  # warm start of the next eigen-solve: (d,), or (d, 2) = [u, guard] (CentralFlow)
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
        V = top_eigenpairs(objective.base(), w0, k, tol=1e-6).vectors
        return CentralFlowState(w0, V[:, 0] if k == 1 else jnp.sum(V, axis=1), key)


def _ritz_and_power_step(st: LanczosState, p: int) -> tuple[Array, Array, Array]:
    r"""The top Ritz pair $(u, \theta_1)$ of a finished Lanczos and the next warm block
    $\mathrm{orth}(HY)$, $Y$ = the top ``p`` Ritz vectors: one subspace-iteration step for free,
    since $HV_j=\sum_i T_{ij}V_i$ over every basis row (the pending ones included)."""
    m = st.S.shape[0]
    Y = ritz_vectors(st, p)
    u = Y[:, 0] / jnp.linalg.norm(Y[:, 0])
    HY = st.V.T @ (st.T[:, :m] @ st.S[:, :p])
    Q, _ = jnp.linalg.qr(HY)
    return u, st.theta[0], Q


class CentralFlow(_GDCentralFlowBase, CompiledProcess):
    r"""GD's central flow with one oscillating direction (the closed form of the SDCP).

    Each substep: $u$ = top eigenvector, $\nabla S=\nabla^3L[u,u]$,
    $\sigma^2=\max(0,-C/\|\nabla S\|^2)$ with
    $C=2(2-\eta\lambda_1)/(dt\,\eta^2)+2\langle\nabla S,\nabla L\rangle$, and
    $w\leftarrow w-dt\,\eta(\nabla L+\tfrac12\sigma^2\nabla S)$. The row gives ``pred_loss``
    $=L(w)+\sigma^2/\eta$ (the predicted time average of GD's loss), ``trace_sigma``
    $=\sigma^2$, ``cf_sharpness`` (the solve's $\lambda_1$), ``pred_grad_sq`` and
    ``cf_matvecs`` (the eigen-solves' HVPs over the step's substeps).

    The eigen-solve is block Lanczos warm-started from a block of two vectors carried in the
    state: it applies $H$ to both, then grows the Krylov space one HVP at a time until the bound
    on $\lambda_1$ (residual, or residual$^2$/gap once the guard Ritz value is resolved) is at
    most ``eig_tol`` $\cdot\lambda_1$, or ``krylov_dim`` HVPs are spent. The next block is
    $\mathrm{orth}(HY)$ for the top two Ritz vectors $Y$ (a subspace-iteration step that costs no
    HVP), so a warm substep usually spends 2 HVPs; the step stays one ``lax.scan``.
    """

    eig_tol: float = 5e-3
    """Relative bound on the error of lambda_1 at which a substep's eigen-solve stops."""
    record_vectors: bool = False
    """Add the oscillation direction u to every row (small problems)."""

    def __check_init__(self) -> None:
        self._check()
        check_positive("eig_tol", self.eig_tol)

    def init(self, objective: Objective, w0: Float[Array, " d"]) -> CentralFlowState:
        key = jax.random.PRNGKey(self.seed)
        p = min(2, w0.shape[0])
        V = top_eigenpairs(objective.base(), w0, p, tol=1e-6).vectors
        return CentralFlowState(w0, V, key)

    def step(self, objective: Objective, state: CentralFlowState):
        base, lr, dt = objective.base(), self.lr, 1.0 / self.substeps
        d, p = state.v.shape
        m = max(min(self.krylov_dim, d), p)

        def sub(carry, _):
            w, V, key = carry
            key, k1 = jax.random.split(key)
            H = HessianOperator(base, w)
            st = lanczos_top(
                H.mv,
                V,
                1,
                tol=self.eig_tol,
                m_max=m,
                max_matvecs=m,
                key=k1,
                restart_keep=max(1, min(m - 1, 2)),
            )
            u, lam, V = _ritz_and_power_step(st, p)
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
                "pred_grad_sq": jnp.vdot(drift, drift) + 4.0 * x / lr**2,
                "cf_matvecs": st.matvecs,
            }
            if self.record_vectors:
                rec["u"] = u
            return (w - dt * lr * drift, V, key), rec

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
            mu, V, _ = krylov_top(lambda z: lr * s * H.mv(s * z), v, m, 1, k1)
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
