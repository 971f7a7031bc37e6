r"""Thick-restart Lanczos with full reorthogonalization, as one compiled loop.

Builds an orthonormal Krylov basis $V$ of $H=\nabla^2L(w)$ and the projected matrix
$T = V^\top H V$ (filled from the Gram-Schmidt coefficients, so thick restarts need no special
case). The Ritz pairs $(\theta_i, V s_i)$ of $T$ satisfy
$\|H V s_i - \theta_i V s_i\| = \beta\,|s_{m,i}|$, which gives residuals with no extra
Hessian-vector product.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

__all__ = ["LanczosState", "lanczos_top", "ritz_error_bounds", "GUARD_RESOLUTION"]

#: A guard Ritz value counts in the gap once its residual is at most this fraction of its
#: distance to the wanted value (its eigenvalue is then separated from the wanted one).
GUARD_RESOLUTION = 0.1


class LanczosState(NamedTuple):
    V: Float[
        Array, "m1 d"
    ]  # basis rows; rows >= active are zero; row `j` is the next to apply H to
    T: Float[Array, "m m"]  # projected matrix on the active rows
    j: Int[Array, ""]  # index of the vector H is applied to next (= active size before the step)
    beta: Float[Array, ""]  # norm of the residual block after the last step
    matvecs: Int[Array, ""]
    converged: Array  # bool
    theta: Float[Array, " m"]  # Ritz values, descending (padding below the active ones)
    S: Float[Array, "m m"]  # Ritz vectors of T (columns), matching theta
    res: Float[Array, " m"]  # residual norms of the Ritz pairs
    bound: Float[Array, " m"]  # error bounds of the Ritz values
    key: Array


def ritz_error_bounds(theta: Array, res: Array, active: Array, n_wanted: int) -> Array:
    r"""Error bound of each wanted Ritz value: $\min(r_i,\ r_i^2/\mathrm{gap}_i)$ (Kato-Temple).

    $\mathrm{gap}_i$ is a lower bound on the distance from $\theta_i$ to the rest of the spectrum,
    from the other wanted Ritz values ($|\theta_i-\theta_j| - r_j$) and from one *guard* Ritz
    value below them (index ``n_wanted``), which counts only once it is resolved
    ($r_j \le |\theta_i-\theta_j|/10$): an unresolved guard may sit far below the eigenvalue it
    will converge to, and would make the gap look wider than it is. Without a usable gap the bound
    is the residual $r_i$, which needs no assumption. Like every Krylov bound it assumes the
    Krylov space has not missed an eigenvalue above the guard (Parlett, *The Symmetric Eigenvalue
    Problem*, 11.7).
    """
    m = theta.shape[0]
    idx = jnp.arange(m)
    dist = jnp.abs(theta[:, None] - theta[None, :])
    contrib = dist - res[None, :]
    guard = idx[None, :] == n_wanted
    resolved = res[None, :] <= GUARD_RESOLUTION * dist
    contrib = jnp.where(guard & ~resolved, 0.0, contrib)
    neighbour = active[None, :] & (idx[None, :] <= n_wanted) & (idx[:, None] != idx[None, :])
    gap = jnp.min(jnp.where(neighbour, contrib, jnp.inf), axis=1)
    known = jnp.isfinite(gap) & (gap > res)
    quad = jnp.where(known, res**2 / jnp.where(known, gap, 1.0), res)
    return jnp.minimum(res, quad)


def _ritz(T: Array, j_active: Array, beta: Array, n_wanted: int):
    """Ritz decomposition of the leading ``j_active`` block of a fixed-size ``T``."""
    m = T.shape[0]
    idx = jnp.arange(m)
    active = idx < j_active
    both = active[:, None] & active[None, :]
    Ta = jnp.where(both, T, 0.0)
    # Park inactive diagonal entries below the Gershgorin lower bound so they sort last.
    radius = jnp.sum(jnp.abs(Ta), axis=1) - jnp.abs(jnp.diag(Ta))
    low = jnp.min(jnp.where(active, jnp.diag(Ta) - radius, jnp.inf))
    scale = jnp.max(jnp.where(active, jnp.abs(jnp.diag(Ta)) + radius, 0.0))
    park = low - 1.0 - scale
    Ta = Ta + jnp.diag(jnp.where(active, 0.0, park))
    evals, evecs = jnp.linalg.eigh(Ta)
    order = jnp.argsort(-evals)
    theta, S = evals[order], evecs[:, order]
    last = jnp.clip(j_active - 1, 0, m - 1)
    res = jnp.abs(beta * S[last, :])
    active_sorted = idx < j_active
    bound = ritz_error_bounds(theta, res, active_sorted, n_wanted)
    return theta, S, res, bound, active_sorted


def _orthonormalize_against(V: Array, x: Array) -> tuple[Array, Array]:
    """Two passes of classical Gram-Schmidt (DGKS); returns (x orthogonal to V's rows, coeffs)."""
    c1 = V @ x
    x = x - c1 @ V
    c2 = V @ x
    x = x - c2 @ V
    return x, c1 + c2


def lanczos_top(
    matvec,
    v0: Float[Array, " d"],
    k: int,
    *,
    tol: float,
    m_max: int,
    max_matvecs: int,
    key: Array,
    restart_keep: int,
) -> LanczosState:
    """Top-``k`` Ritz pairs of the symmetric operator ``matvec`` (traceable; call under jit).

    Stops when every one of the top ``k`` Ritz values has ``bound <= tol * |theta|`` (or is at the
    float floor), when the basis spans the whole space, or when ``max_matvecs`` is spent.
    """
    d = v0.shape[0]
    dtype = v0.dtype
    eps = jnp.finfo(dtype).eps
    V = jnp.zeros((m_max + 1, d), dtype)
    v0 = v0 / jnp.linalg.norm(v0)
    V = V.at[0].set(v0)
    T = jnp.zeros((m_max, m_max), dtype)
    zeros_m = jnp.zeros((m_max,), dtype)
    state = LanczosState(
        V=V,
        T=T,
        j=jnp.array(0),
        beta=jnp.array(0.0, dtype),
        matvecs=jnp.array(0),
        converged=jnp.array(False),
        theta=zeros_m,
        S=jnp.eye(m_max, dtype=dtype),
        res=zeros_m,
        bound=zeros_m,
        key=key,
    )

    def step(s: LanczosState) -> LanczosState:
        j = s.j
        x = s.V[j]
        wv = matvec(x)
        wv, coeff = _orthonormalize_against(s.V, wv)
        coeff = coeff[:m_max]
        T = s.T.at[:, j].set(coeff).at[j, :].set(coeff)
        beta = jnp.linalg.norm(wv)
        anorm = jnp.max(jnp.abs(coeff)) + beta
        # Breakdown (an invariant subspace is found): continue with a fresh random direction,
        # decoupled from T (beta = 0), so eigenvalues outside that subspace are still found.
        key, sub = jax.random.split(s.key)
        broke = beta <= 10 * eps * jnp.maximum(anorm, 1e-30) * jnp.sqrt(d * 1.0)

        def fresh_direction(_):
            fresh = jax.random.normal(sub, (d,), dtype)
            fresh, _ = _orthonormalize_against(s.V, fresh)
            return fresh / jnp.linalg.norm(fresh)

        nxt = jax.lax.cond(broke, fresh_direction, lambda _: wv / jnp.where(broke, 1.0, beta), None)
        beta = jnp.where(broke, 0.0, beta)
        full = j + 1 >= d  # the basis spans R^d: everything is exact
        V = s.V.at[j + 1].set(jnp.where(full, 0.0, nxt))
        nj = jnp.minimum(j + 1, m_max - 1)  # T's coupling to the next vector (none past the end)
        T = jnp.where(j + 1 < m_max, T.at[nj, j].set(beta).at[j, nj].set(beta), T)
        beta = jnp.where(full, 0.0, beta)
        theta, S, res, bound, active = _ritz(T, j + 1, beta, k)
        floor = 50 * eps * jnp.max(jnp.abs(jnp.where(active, theta, 0.0)))
        ok = (bound <= tol * jnp.abs(theta)) | (bound <= floor)
        enough = j + 1 >= min(k + 1, d)  # the wanted values and a guard below them
        conv = enough & (jnp.all(jnp.where(jnp.arange(m_max) < k, ok, True)) | full)
        return s._replace(
            V=V,
            T=T,
            j=j + 1,
            beta=beta,
            matvecs=s.matvecs + 1,
            converged=conv,
            theta=theta,
            S=S,
            res=res,
            bound=bound,
            key=key,
        )

    def restart(s: LanczosState) -> LanczosState:
        # Thick restart: keep the best `restart_keep` Ritz vectors and the residual direction.
        keep = restart_keep
        Y = s.S[:, :keep].T @ s.V[:m_max]
        V = jnp.zeros_like(s.V).at[:keep].set(Y).at[keep].set(s.V[m_max])
        couple = s.beta * s.S[m_max - 1, :keep]
        T = jnp.zeros_like(s.T)
        T = T.at[jnp.arange(keep), jnp.arange(keep)].set(s.theta[:keep])
        T = T.at[keep, :keep].set(couple).at[:keep, keep].set(couple)
        return s._replace(V=V, T=T, j=jnp.array(keep))

    def body(s: LanczosState) -> LanczosState:
        s = jax.lax.cond(s.j >= m_max, restart, lambda t: t, s)
        return step(s)

    def cond(s: LanczosState) -> Array:
        return (~s.converged) & (s.matvecs < max_matvecs)

    return jax.lax.while_loop(cond, body, state)
