r"""Self-stabilization (Damian, Nichani, Lee; ICLR 2023) as processes.

GD at the Edge of Stability follows projected GD onto
$\mathcal M=\{S\le2/\eta,\ \nabla L\cdot u=0\}$.
With $S=\lambda_1(\nabla^2L)$, $u$ its eigenvector, $\nabla S=\nabla^3L[u,u]$,
$\nabla S_\perp=\nabla S-u(u\cdot\nabla S)$: $\alpha=-\nabla L\cdot\nabla S_\perp$,
$\beta=\|\nabla S_\perp\|^2$, $\delta=\sqrt{2\alpha/\beta}$ (``docs/theory.md``,
"Self-stabilization").
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..curvature import krylov_top, top_eigenpairs
from ..curvature._checks import check_w
from ..curvature.operator import HessianOperator
from ..curvature.rounding import clip_tol
from ..errors import ConfigError, check_int, check_positive
from ..objective import LossLike, Objective, as_objective
from .process import CompiledProcess, Row

__all__ = [
    "ProjectedGD",
    "ProjectedGDState",
    "SelfStabilization",
    "SelfStabilizationState",
    "StabilityQuantities",
    "predicted_xy",
    "project_to_stable_set",
    "stability_quantities",
    "stability_quantities_at",
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


def stability_quantities_at(obj: Objective, w: Array, u: Array) -> StabilityQuantities:
    r"""$S, \nabla S_\perp, \alpha, \beta, \delta$ at $w$ for the unit top eigenvector $u$."""
    g = jax.grad(obj)(w)
    S, gS = HessianOperator(obj, w).grad_quadratic_form(u)
    gSp = gS - u * jnp.vdot(u, gS)
    alpha = -jnp.vdot(g, gSp)
    beta = jnp.vdot(gSp, gSp)
    delta = jnp.sqrt(2.0 * jnp.maximum(alpha, 0.0) / jnp.where(beta > 0, beta, 1.0))
    return StabilityQuantities(S, u, g, gS, gSp, alpha, beta, delta)


def _top(obj, w, v, key, m):
    _, V, _ = krylov_top(HessianOperator(obj, w), v, m, 1, key)
    u = V[:, 0]
    return jnp.where(jnp.vdot(u, v) < 0, -u, u)


def project_to_stable_set(obj: Objective, w: Array, u: Array, key: Array, *, lr, m, iters):
    r"""$\mathrm{proj}_{\mathcal M}(w)$ by the linearised step repeated ``iters`` times:
    $w\leftarrow w-\max(0,S-2/\eta)\nabla S_\perp/\beta-u(u\cdot\nabla L)/S$; returns $(w, u)$."""
    for _ in range(iters):
        key, k1 = jax.random.split(key)
        u = _top(obj, w, u, k1, m)
        q = stability_quantities_at(obj, w, u)
        step = jnp.maximum(0.0, q.S - 2.0 / lr) * q.grad_S_perp / jnp.where(q.beta > 0, q.beta, 1.0)
        w = w - step - u * jnp.vdot(u, q.grad_L) / q.S
    return w, u


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


def _check(lr, iters, krylov_dim) -> None:
    check_positive("lr", lr)
    for name, val, low in (("iters", iters, 1), ("krylov_dim", krylov_dim, 2)):
        if isinstance(val, bool) or not isinstance(val, int) or val < low:
            raise ConfigError(name, val, f"an integer >= {low}")


class ProjectedGDState(NamedTuple):
    w: Float[Array, " d"]  # theta^dagger_t
    u: Float[Array, " d"]  # top eigenvector (warm start)
    key: Array


class ProjectedGD(CompiledProcess):
    r"""Self-stabilized projected GD, $\theta^\dagger_{t+1}=\mathrm{proj}_{\mathcal M}
    (\theta^\dagger_t-\eta\nabla L(\theta^\dagger_t))$ from $\theta^\dagger_0=\mathrm{proj}(w_0)$:
    the constrained trajectory GD follows at the Edge of Stability. Rows add ``alpha``, ``beta``,
    ``delta`` and ``S`` (the eigen-solve's sharpness) at $\theta^\dagger_t$."""

    lr: float
    """GD's learning rate eta (the stable set is S <= 2/eta)."""
    iters: int = 3
    """Linearised projection steps per projection."""
    krylov_dim: int = 20
    """Krylov dimension of each eigen-solve."""
    seed: int = 0
    """Seed of the Krylov restarts."""

    def __check_init__(self) -> None:
        _check(self.lr, self.iters, self.krylov_dim)

    def _m(self, d: int) -> int:
        return min(self.krylov_dim, d)

    def init(self, objective: Objective, w0: Float[Array, " d"]) -> ProjectedGDState:
        base = objective.base()
        key = jax.random.PRNGKey(self.seed)
        u0 = top_eigenpairs(base, w0, 1, tol=clip_tol(1e-8, w0.dtype)).vectors[:, 0]
        w, u = project_to_stable_set(
            base, w0, u0, key, lr=self.lr, m=self._m(w0.shape[0]), iters=self.iters
        )
        return ProjectedGDState(w, u, key)

    def point(self, state: ProjectedGDState) -> Array:
        return state.w

    def step(self, objective: Objective, state: ProjectedGDState):
        base, lr, m = objective.base(), self.lr, self._m(state.w.shape[0])
        key, k1, k2 = jax.random.split(state.key, 3)
        u = _top(base, state.w, state.u, k1, m)
        q = stability_quantities_at(base, state.w, u)
        dag, u = project_to_stable_set(
            base, state.w - lr * q.grad_L, u, k2, lr=lr, m=m, iters=self.iters
        )
        row = {
            "loss": base(state.w),
            "grad_norm": jnp.linalg.norm(q.grad_L),
            "lr_eff": jnp.asarray(lr, state.w.dtype),
            "threshold": jnp.asarray(2.0 / lr, state.w.dtype),
            "S": q.S,
            "alpha": q.alpha,
            "beta": q.beta,
            "delta": q.delta,
        }
        return ProjectedGDState(dag, u, key), row


class SelfStabilizationState(NamedTuple):
    theta: Float[Array, " d"]  # GD's iterate theta_t
    dagger: Float[Array, " d"]  # projected GD's theta^dagger_t
    v_pred: Float[Array, " d"]  # the predicted displacement theta_t - theta^dagger_t
    u: Float[Array, " d"]
    key: Array


class SelfStabilization(CompiledProcess):
    r"""GD $\theta_t$ together with its constrained trajectory $\theta^\dagger_t$ and the predicted
    displacement $v_{t+1}=v_t-\eta[Hv_t+\tfrac12(x_t^2-\delta_t^2)\nabla S_\perp+u\,x_ty_t]$,
    $x=u\cdot v$, $y=\nabla S_\perp\cdot v$ (all at $\theta^\dagger_t$). The point is GD's.

    Row columns: ``loss`` (GD), ``loss_dagger``, ``sharpness_gd``, ``sharpness_dagger``,
    ``alpha``, ``beta``, ``delta``, ``x``, ``y``, ``x_pred``, ``y_pred``, ``dist``
    $=\|\theta-\theta^\dagger\|$, ``pred_error`` $=\|v-v_{pred}\|$, ``pred_loss``
    $=L(\theta^\dagger)+x^2/\eta$ (the predicted loss, whose time average is GD's) and ``pull``
    $=\nabla S_\perp\cdot\nabla^3L(\theta^\dagger)[v,v]$ (the oscillation's pull on $S$ from
    every direction of $v$; $\approx\beta x^2$ when $v$ lies along $u$, and its time average
    balances $2\alpha$).
    """

    lr: float
    """GD's learning rate eta (the stable set is S <= 2/eta)."""
    iters: int = 3
    """Linearised projection steps per projection."""
    krylov_dim: int = 20
    """Krylov dimension of each eigen-solve."""
    seed: int = 0
    """Seed of the Krylov restarts."""

    def __check_init__(self) -> None:
        _check(self.lr, self.iters, self.krylov_dim)

    def init(self, objective: Objective, w0: Float[Array, " d"]) -> SelfStabilizationState:
        pg = ProjectedGD(self.lr, self.iters, self.krylov_dim, self.seed).init(objective, w0)
        return SelfStabilizationState(w0, pg.w, w0 - pg.w, pg.u, pg.key)

    def point(self, state: SelfStabilizationState) -> Array:
        return state.theta

    def step(self, objective: Objective, state: SelfStabilizationState):
        obj, lr = objective.base(), self.lr
        m = min(self.krylov_dim, state.theta.shape[0])
        theta, dag, vp, u, key = state
        key, k1, k2, k3 = jax.random.split(key, 4)
        u = _top(obj, dag, u, k1, m)
        q = stability_quantities_at(obj, dag, u)
        v = theta - dag
        x, y = jnp.vdot(u, v), jnp.vdot(q.grad_S_perp, v)
        xp, yp = jnp.vdot(u, vp), jnp.vdot(q.grad_S_perp, vp)
        lt, gt = jax.value_and_grad(obj)(theta)
        ug = _top(obj, theta, u, k3, m)
        H_dag = HessianOperator(obj, dag)
        # grad S_perp . grad^3 L(dag)[v, v]: the oscillation's pull on S along every direction
        _, g3 = H_dag.grad_quadratic_form(v)  # grad_w v^T H(w) v at dag
        pull = jnp.vdot(g3, q.grad_S_perp)
        row: Row = {
            "loss": lt,
            "grad_norm": jnp.linalg.norm(gt),
            "lr_eff": jnp.asarray(lr, theta.dtype),
            "threshold": jnp.asarray(2.0 / lr, theta.dtype),
            "loss_dagger": obj(dag),
            "pred_loss": obj(dag) + x**2 / lr,
            "sharpness_gd": HessianOperator(obj, theta).quadratic_form(ug),
            "sharpness_dagger": q.S,
            "alpha": q.alpha,
            "beta": q.beta,
            "delta": q.delta,
            "x": x,
            "y": y,
            "x_pred": xp,
            "y_pred": yp,
            "dist": jnp.linalg.norm(v),
            "pred_error": jnp.linalg.norm(v - vp),
            "pull": pull,
        }
        vp = vp - lr * (H_dag.mv(vp) + 0.5 * (xp**2 - q.delta**2) * q.grad_S_perp + u * xp * yp)
        theta = theta - lr * gt
        dag, u = project_to_stable_set(
            obj, dag - lr * q.grad_L, u, k2, lr=lr, m=m, iters=self.iters
        )
        return SelfStabilizationState(theta, dag, vp, u, key), row
