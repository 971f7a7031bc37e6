r"""`StepTracker`: certified top eigenvalues at *every* step, inside the compiled loop.

Along a trajectory $H_t=\nabla^2L(w_t)$ moves little from one step to the next, so the previous
step's Ritz vectors are an excellent start. Each step does block Rayleigh-Ritz on
$X=\mathrm{orth}[V_{t-1},\ R_{t-1}]$: the previous top-$k$ Ritz vectors, the guard Ritz vector
below them, and their residuals $r_i = Hv_i-\theta_iv_i$ (the steepest-ascent directions
of the Rayleigh quotient). All $|X|$ products $H_tX$ come from one linearization of $\nabla L$ at
$w_t$, which also yields the gradient the step itself needs. Rounds repeat, from the new Ritz
vectors and residuals, until every wanted bound meets the tolerance or ``max_rounds`` is spent.

The certificate comes from true products at $w_t$ only: each value's bound is
$\min(r_i, r_i^2/\mathrm{gap}_i)$ (`ritz_error_bounds`, with the guard Ritz value counting in the
gap once resolved), exactly as for the stand-alone Lanczos solver, and never below the rounding
level $100\,\epsilon\,|\theta_1|$ of the working precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..errors import ConfigError, check_positive
from .lanczos import ritz_error_bounds

__all__ = ["StepTracker", "StepTrackerState", "StepEig", "linearized_gradient"]


class StepTrackerState(NamedTuple):
    V: Float[Array, "d k1"]  # the previous Ritz vectors: top k, then the guard


class StepEig(NamedTuple):
    """One step's certified eigenvalues (largest first)."""

    values: Float[Array, " k"]
    error_bound: Float[Array, " k"]
    next_value: Float[Array, ""]  # the guard Ritz value (a lower bound on lambda_{k+1})
    matvecs: Int[Array, ""]
    converged: Array


def linearized_gradient(
    loss: Callable[[Array], Array], w: Float[Array, " d"]
) -> tuple[Array, Array, Callable[[Array], Array]]:
    r"""$L(w)$, $\nabla L(w)$ and $X\mapsto\nabla^2L(w)X$ from one linearization of $\nabla L$.

    The gradient is the linearization's primal output, so a step that needs both the gradient and
    Hessian products pays for the backward pass once.
    """
    (value, grad), jvp = jax.linearize(jax.value_and_grad(loss), w)

    def matmat(X: Array) -> Array:
        return jax.vmap(lambda x: jvp(x)[1], in_axes=1, out_axes=1)(X)

    return value, grad, matmat


#: The floor of every bound, in units of eps * |theta_1|: the rounding error of H X in the
#: working precision (a float32 HVP is accurate to about 10 eps relative on the nets tested).
_ROUNDING = 100


def _orth(X: Array) -> Array:
    Q, _ = jnp.linalg.qr(X)
    return Q


def _extend(X: Array, active: Array, R: Array) -> tuple[Array, Array]:
    """The columns of ``R`` orthonormalized against the active columns of ``X`` and each other
    (two Gram-Schmidt passes); a column already in the span comes back zero and inactive."""
    cols, ok = [], []
    Xa = X * active[None, :]
    for j in range(R.shape[1]):
        r = R[:, j]
        p = r
        for _ in range(2):
            p = p - Xa @ (Xa.T @ p)
            for c in cols:
                p = p - c * jnp.vdot(c, p)
        n = jnp.linalg.norm(p)
        good = n > 1e-6 * jnp.linalg.norm(r)
        cols.append(jnp.where(good, p / jnp.where(good, n, 1.0), 0.0))
        ok.append(good)
    return jnp.stack(cols, axis=1), jnp.stack(ok)


class StepTracker(eqx.Module):
    r"""Warm block Davidson for the top-$k$ eigenvalues of $H_t$, one call per step.

    ``update(matmat, state)`` returns the new state and a `StepEig`; ``matmat(X) = H_t X``.
    The first round multiplies the previous step's $k+1$ Ritz vectors (top $k$ and the guard);
    while a bound misses ``tol``, each further round adds the current Ritz pairs' residuals to
    the subspace ($k+1$ more products), up to ``max_rounds`` rounds.

    >>> import jax, jax.numpy as jnp
    >>> H = jnp.diag(jnp.arange(1.0, 9.0))
    >>> tr = StepTracker(k=1, tol=1e-6, max_rounds=8)
    >>> st = tr.init(8, jnp.float64 if jax.config.x64_enabled else jnp.float32, jax.random.key(0))
    >>> st, eig = tr.update(lambda X: H @ X, st)
    >>> round(float(eig.values[0]), 4)
    8.0
    """

    k: int = eqx.field(static=True, default=1)
    tol: float = eqx.field(static=True, default=1e-3)
    max_rounds: int = eqx.field(static=True, default=8)

    def __check_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError("k", self.k, "an integer >= 1")
        check_positive("tol", self.tol)
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int):
            raise ConfigError("max_rounds", self.max_rounds, "an integer >= 1")
        if self.max_rounds < 1:
            raise ConfigError("max_rounds", self.max_rounds, "an integer >= 1")

    @property
    def block(self) -> int:
        """Products per round: the top $k$ and the guard (then their residual directions)."""
        return self.k + 1

    def init(self, d: int, dtype, key: Array) -> StepTrackerState:
        """A random orthonormal start (the first steps converge from it)."""
        if d < self.block * self.max_rounds:
            raise ConfigError(
                "dim", d, f"at least (k+1) * max_rounds = {self.block * self.max_rounds} parameters"
            )
        return StepTrackerState(_orth(jax.random.normal(key, (d, self.block), dtype)))

    def warm(self, vectors: Float[Array, "d k"], guard: Float[Array, " d"]) -> StepTrackerState:
        """A state from eigenvectors solved otherwise (e.g. by Lanczos at the first step)."""
        return StepTrackerState(jnp.concatenate([vectors[:, : self.k], guard[:, None]], axis=1))

    def _ritz(self, X: Array, HX: Array, active: Array):
        k, k1 = self.k, self.k + 1
        both = active[:, None] & active[None, :]
        T = jnp.where(both, 0.5 * (X.T @ HX + HX.T @ X), 0.0)
        # inactive columns are parked below every eigenvalue of the active block
        park = -2.0 * jnp.sqrt(jnp.sum(T * T)) - 1.0
        theta, S = jnp.linalg.eigh(T + jnp.diag(jnp.where(active, 0.0, park)))
        order = jnp.argsort(-theta)[:k1]
        theta, S = theta[order], S[:, order]
        U, HU = X @ S, HX @ S
        R = HU - U * theta[None, :]
        res = jnp.linalg.norm(R, axis=0)
        eps = jnp.finfo(X.dtype).eps
        scale = jnp.max(jnp.abs(theta))
        # no bound is tighter than the rounding of the products themselves
        bound = ritz_error_bounds(theta, res, jnp.ones(k1, bool), k)
        bound = jnp.maximum(bound, _ROUNDING * eps * scale)
        ok = bound[:k] <= jnp.maximum(self.tol * jnp.abs(theta[:k]), _ROUNDING * eps * scale)
        return U, R, (theta[:k], bound[:k], theta[k]), jnp.all(ok)

    def update(
        self, matmat: Callable[[Array], Array], state: StepTrackerState
    ) -> tuple[StepTrackerState, StepEig]:
        """Certified top-$k$ eigenvalues of the operator ``matmat`` from the warm ``state``."""
        k1, m = self.block, self.block * self.max_rounds
        X0 = _orth(state.V)
        d, dtype = X0.shape[0], X0.dtype
        X = jnp.zeros((d, m), dtype).at[:, :k1].set(X0)
        HX = jnp.zeros((d, m), dtype).at[:, :k1].set(matmat(X0))
        active = jnp.arange(m) < k1
        U, R, eig, ok = self._ritz(X, HX, active)

        def cond(c):
            return (~c[6]) & (c[7] < self.max_rounds)

        def body(c):
            X, HX, active, _, R, _, _, n = c
            Xn, good = _extend(X, active, R)
            X = jax.lax.dynamic_update_slice_in_dim(X, Xn, n * k1, axis=1)
            HX = jax.lax.dynamic_update_slice_in_dim(HX, matmat(Xn), n * k1, axis=1)
            active = jax.lax.dynamic_update_slice_in_dim(active, good, n * k1, axis=0)
            U, R, eig, ok = self._ritz(X, HX, active)
            return X, HX, active, U, R, eig, ok, n + 1

        *_, U, R, eig, ok, rounds = jax.lax.while_loop(
            cond, body, (X, HX, active, U, R, eig, ok, jnp.asarray(1))
        )
        values, bound, nxt = eig
        return StepTrackerState(U), StepEig(
            values=values,
            error_bound=bound,
            next_value=nxt,
            matvecs=rounds * k1,
            converged=ok,
        )
