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
    R: Float[Array, "d k1"]  # the previous residual directions of the top k and the guard


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
    # Householder QR: Q has orthonormal columns even when X is rank-deficient (a zero residual)
    Q, _ = jnp.linalg.qr(X)
    return Q


class StepTracker(eqx.Module):
    r"""Warm block Rayleigh-Ritz for the top-$k$ eigenvalues of $H_t$, one call per step.

    ``update(matmat, state)`` returns the new state and a `StepEig`; ``matmat(X) = H_t X``.
    Each round costs $2k+2$ products; the first round usually certifies ``tol`` along a smooth
    trajectory, and at most ``max_rounds`` are spent.

    >>> import jax, jax.numpy as jnp
    >>> H = jnp.diag(jnp.arange(1.0, 9.0))
    >>> tr = StepTracker(k=1, tol=1e-6, max_rounds=50)
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
        """Products per round: the top $k$, the guard, and their $k+1$ residual directions."""
        return 2 * self.k + 2

    def init(self, d: int, dtype, key: Array) -> StepTrackerState:
        """A random orthonormal start (the first steps converge from it)."""
        if d < self.block:
            raise ConfigError("dim", d, f"at least {self.block} parameters (2k+2 with k={self.k})")
        X = _orth(jax.random.normal(key, (d, self.block), dtype))
        return StepTrackerState(X[:, : self.k + 1], X[:, self.k + 1 :])

    def warm(self, vectors: Float[Array, "d k"], guard: Float[Array, " d"]) -> StepTrackerState:
        """A state from eigenvectors solved otherwise (e.g. by Lanczos at the first step)."""
        V = jnp.concatenate([vectors[:, : self.k], guard[:, None]], axis=1)
        d = V.shape[0]
        # residual directions start as the coordinate vectors Householder QR completes V with
        X = _orth(jnp.concatenate([V, jnp.eye(d, self.k + 1, dtype=V.dtype)], axis=1))
        return StepTrackerState(V, X[:, self.k + 1 :])

    def _round(self, matmat, V: Array, R: Array):
        X = _orth(jnp.concatenate([V, R], axis=1))
        HX = matmat(X)
        T = X.T @ HX
        theta, S = jnp.linalg.eigh(0.5 * (T + T.T))
        order = jnp.argsort(-theta)
        theta, S = theta[order], S[:, order]
        U, HU = X @ S, HX @ S
        Rfull = HU - U * theta[None, :]
        res = jnp.linalg.norm(Rfull, axis=0)
        active = jnp.ones(theta.shape, bool)
        k = self.k
        eps = jnp.finfo(X.dtype).eps
        scale = jnp.max(jnp.abs(theta))
        # no bound is tighter than the rounding of the products themselves
        bound = jnp.maximum(ritz_error_bounds(theta, res, active, k), _ROUNDING * eps * scale)
        ok = bound[:k] <= jnp.maximum(self.tol * jnp.abs(theta[:k]), _ROUNDING * eps * scale)
        eig = (theta[:k], bound[:k], theta[k])
        return U[:, : k + 1], Rfull[:, : k + 1], eig, jnp.all(ok)

    def update(
        self, matmat: Callable[[Array], Array], state: StepTrackerState
    ) -> tuple[StepTrackerState, StepEig]:
        """Certified top-$k$ eigenvalues of the operator ``matmat`` from the warm ``state``."""
        V, R, eig, ok = self._round(matmat, state.V, state.R)

        def cond(c):
            return (~c[3]) & (c[4] < self.max_rounds)

        def body(c):
            V, R, _, _, n = c
            V, R, eig, ok = self._round(matmat, V, R)
            return V, R, eig, ok, n + 1

        V, R, eig, ok, rounds = jax.lax.while_loop(cond, body, (V, R, eig, ok, jnp.asarray(1)))
        values, bound, nxt = eig
        return StepTrackerState(V, R), StepEig(
            values=values,
            error_bound=bound,
            next_value=nxt,
            matvecs=rounds * self.block,
            converged=ok,
        )
