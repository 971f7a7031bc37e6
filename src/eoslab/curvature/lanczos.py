r"""Thick-restart Lanczos with full reorthogonalization, as one compiled loop.

Builds an orthonormal Krylov basis $V$ of $H=\nabla^2L(w)$ and the projected matrix
$T = V^\top H V$ (filled from the Gram-Schmidt coefficients, so thick restarts need no special
case). The Ritz pairs $(\theta_i, V s_i)$ of $T$ satisfy
$\|H V s_i - \theta_i V s_i\| = \beta\,|s_{m,i}|$ (or, started from a block, the norm of the
coupling to the pending rows), which gives residuals with no extra Hessian-vector product.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Integral
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..errors import ConfigError
from .operator import AbstractOperator, as_operator
from .rounding import rounding_floor

__all__ = [
    "LanczosState",
    "lanczos_top",
    "krylov_top",
    "default_m_max",
    "ritz_vectors",
]


def default_m_max(k: int, d: int) -> int:
    """The basis size before a thick restart, for $k$ wanted eigenpairs of a $D$-dim operator."""
    return int(min(d, max(3 * k + 20, 40)))


class LanczosState(NamedTuple):
    V: Float[Array, "r d"]  # basis rows (r = m_max + p); rows 0..j-1 multiplied, j..j+p-1 pending
    T: Float[Array, "r r"]  # V^T H V: columns of the multiplied rows (and their transposes)
    j: Int[Array, ""]  # number of rows H has been applied to (the Ritz space's dimension)
    matvecs: Int[Array, ""]
    converged: Array  # bool
    theta: Float[Array, " m"]  # Ritz values, descending (padding below the active ones)
    S: Float[Array, "m m"]  # Ritz vectors of T (columns), matching theta
    res: Float[Array, " m"]  # residual norms of the Ritz pairs (beta |s_m|, no extra product)
    bound: Float[Array, " m"]  # certified error bounds: res plus the rounding floor
    norm: Float[Array, ""]  # ||H|| estimated by the largest |Ritz value| seen
    key: Array


def _ritz(T: Array, j_active: Array, m: int):
    r"""Ritz decomposition of the multiplied ``j_active`` rows of ``T`` (shape ``(r, r)``).

    A Ritz pair $(\theta, V_j s)$ has residual $\|T_{[j:, :j]}\, s\|$: the coupling of the
    Ritz space to the pending basis rows, so no extra Hessian-vector product is needed.
    Returns the top ``m`` pairs (``S`` restricted to the first ``m`` rows), their residuals and
    the largest $|\theta|$ of all of them (an estimate of $\|H\|$).
    """
    r = T.shape[0]
    idx = jnp.arange(r)
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
    norm = jnp.max(jnp.where(idx < j_active, jnp.abs(evals[order]), 0.0))  # parked ones last
    theta, S = evals[order[:m]], evecs[:, order[:m]]
    coupling = jnp.where((~active)[:, None] & active[None, :], T, 0.0)
    res = jnp.linalg.norm(coupling @ S, axis=0)
    return theta, S[:m], res, norm


def _orthonormalize_against(V: Array, x: Array) -> tuple[Array, Array]:
    """Two passes of classical Gram-Schmidt (DGKS); returns (x orthogonal to V's rows, coeffs)."""
    c1 = V @ x
    x = x - c1 @ V
    c2 = V @ x
    x = x - c2 @ V
    return x, c1 + c2


def _start_block(v0: Array, key: Array) -> Array:
    """Orthonormal rows spanning the start columns; a dependent column is replaced at random."""
    d, p = v0.shape
    Q = jnp.zeros((p, d), v0.dtype)
    for i in range(p):
        x, _ = _orthonormalize_against(Q, v0[:, i])
        nrm = jnp.linalg.norm(x)
        rand, _ = _orthonormalize_against(
            Q, jax.random.normal(jax.random.fold_in(key, i), (d,), v0.dtype)
        )
        bad = nrm <= 1e3 * jnp.finfo(v0.dtype).eps * jnp.linalg.norm(v0[:, i])
        x = jnp.where(bad, rand, x)
        Q = Q.at[i].set(x / jnp.linalg.norm(x))
    return Q


def ritz_vectors(state: LanczosState, n: int) -> Float[Array, "d n"]:
    """The top ``n`` Ritz vectors (columns) of a finished `lanczos_top`."""
    m = state.S.shape[0]
    return state.V[:m].T @ state.S[:, :n]


def lanczos_top(
    matvec,
    v0: Float[Array, " d"] | Float[Array, "d p"],
    k: int,
    *,
    tol: float,
    m_max: int,
    max_matvecs: int,
    key: Array,
    restart_keep: int,
    rounding: Any = None,
) -> LanczosState:
    """Top-``k`` Ritz pairs of the symmetric operator ``matvec`` (traceable; call under jit).

    ``v0`` is a start vector or a block of ``p`` start columns (a warm start from several
    eigenvectors). With a block, H is applied to one basis row per step, oldest first, and every
    product adds its orthogonalised remainder as a new row: a block Krylov space grown one
    product at a time, so the Ritz space contains all start columns after ``p`` products.

    Stops when every one of the top ``k`` Ritz values has ``bound <= tol * |theta|`` (or its
    residual is at the rounding floor, `rounding_floor`), when the basis spans the whole space,
    or when ``max_matvecs`` is spent. ``rounding``: the dtype whose rounding the products carry
    (the operator's ``rounding_dtype``; default ``v0``'s).
    """
    v0 = v0[:, None] if v0.ndim == 1 else v0
    d = v0.shape[0]
    p = min(v0.shape[1], d)
    dtype = v0.dtype
    eps = jnp.finfo(dtype).eps
    r = m_max + p
    key, sub = jax.random.split(key)
    V = jnp.zeros((r, d), dtype).at[:p].set(_start_block(v0[:, :p], sub))
    zeros_m = jnp.zeros((m_max,), dtype)
    state = LanczosState(
        V=V,
        T=jnp.zeros((r, r), dtype),
        j=jnp.array(0),
        matvecs=jnp.array(0),
        converged=jnp.array(False),
        theta=zeros_m,
        S=jnp.eye(m_max, dtype=dtype),
        res=zeros_m,
        bound=zeros_m,
        norm=jnp.zeros((), dtype),
        key=key,
    )

    def step(s: LanczosState) -> LanczosState:
        j = s.j
        wv = matvec(s.V[j])
        wv, coeff = _orthonormalize_against(s.V, wv)
        T = s.T.at[:, j].set(coeff).at[j, :].set(coeff)
        beta = jnp.linalg.norm(wv)
        anorm = jnp.max(jnp.abs(coeff)) + beta
        # Breakdown (an invariant subspace is found): continue with a fresh random direction,
        # decoupled from T (coupling 0), so eigenvalues outside that subspace are still found.
        key, sub = jax.random.split(s.key)
        broke = beta <= 10 * eps * jnp.maximum(anorm, 1e-30) * jnp.sqrt(d * 1.0)

        def fresh_direction(_):
            fresh = jax.random.normal(sub, (d,), dtype)
            fresh, _ = _orthonormalize_against(s.V, fresh)
            return fresh / jnp.linalg.norm(fresh)

        nxt = jax.lax.cond(broke, fresh_direction, lambda _: wv / jnp.where(broke, 1.0, beta), None)
        beta = jnp.where(broke, 0.0, beta)
        full = j + p >= d  # the basis already spans R^d: no new direction exists
        beta = jnp.where(full, 0.0, beta)
        V = s.V.at[j + p].set(jnp.where(full, 0.0, nxt))
        T = T.at[j + p, j].set(beta).at[j, j + p].set(beta)
        theta, S, res, norm = _ritz(T, j + 1, m_max)
        # a restart keeps the top of the spectrum only: the norm seen before still holds
        norm = jnp.maximum(s.norm, norm)
        floor = rounding_floor(norm, dtype if rounding is None else rounding)
        # The bound is the residual plus what rounding can hide; no gap enters it, because a gap
        # read off Ritz values can hide an eigenvalue the Krylov space has not resolved yet.
        bound = res + floor
        # met, or the residual is at the rounding level, where more products cannot help
        ok = (bound <= tol * jnp.abs(theta)) | (res <= floor)
        enough = j + 1 >= min(k + 1, d)  # the wanted values and a guard below them
        exact = j + 1 >= d  # every basis direction multiplied: the Ritz values are exact
        conv = enough & (jnp.all(jnp.where(jnp.arange(m_max) < k, ok, True)) | exact)
        return s._replace(
            V=V,
            T=T,
            j=j + 1,
            matvecs=s.matvecs + 1,
            converged=conv,
            theta=theta,
            S=S,
            res=res,
            bound=bound,
            norm=norm,
            key=key,
        )

    def restart(s: LanczosState) -> LanczosState:
        # Thick restart: keep the best `restart_keep` Ritz vectors and the pending rows.
        keep = restart_keep
        Y = s.S[:, :keep].T @ s.V[:m_max]
        pending = s.V[m_max : m_max + p]
        V = jnp.zeros_like(s.V).at[:keep].set(Y).at[keep : keep + p].set(pending)
        couple = s.T[m_max : m_max + p, :m_max] @ s.S[:, :keep]  # (p, keep)
        T = jnp.zeros_like(s.T)
        T = T.at[jnp.arange(keep), jnp.arange(keep)].set(s.theta[:keep])
        T = T.at[keep : keep + p, :keep].set(couple).at[:keep, keep : keep + p].set(couple.T)
        return s._replace(V=V, T=T, j=jnp.array(keep))

    def body(s: LanczosState) -> LanczosState:
        s = jax.lax.cond(s.j >= m_max, restart, lambda t: t, s)
        return step(s)

    def cond(s: LanczosState) -> Array:
        return (~s.converged) & (s.matvecs < max_matvecs)

    return jax.lax.while_loop(cond, body, state)


def krylov_top(
    mv: Callable[[Array], Array] | AbstractOperator,
    v0: Float[Array, " d"],
    m: int,
    k: int,
    key: Array,
) -> tuple[Float[Array, " k"], Float[Array, "d k"], Float[Array, " k"]]:
    r"""Top-$k$ Ritz pairs of a symmetric operator from an $m$-dim Krylov space started at $v_0$.

    At most $m$ matvecs ($m$ is capped at $D$), so it runs inside ``lax.scan``; returns (values,
    unit vectors ``(d, k)``, residuals $\|Av-\theta v\|$). ``mv`` is an operator or ``x -> Ax``.
    """
    d = v0.shape[0]
    if isinstance(m, bool) or not isinstance(m, Integral) or m < 1:
        raise ConfigError("m", m, "an integer >= 1 (the Krylov dimension)")
    m = min(int(m), d)
    if isinstance(k, bool) or not isinstance(k, Integral) or not 1 <= k <= m:
        raise ConfigError("k", k, f"an integer in [1, {m}] (at most min(m, D) Ritz pairs)")
    if isinstance(mv, AbstractOperator):
        as_operator(mv, tags=frozenset({"symmetric"}))
        if mv.dim != d:
            raise ConfigError("v0.shape", v0.shape, f"({mv.dim},): the operator's dimension")
        mv = mv.mv
    k = int(k)
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
