r"""`StepTracker`: certified top eigenvalues at *every* step, inside the compiled loop.

Along a trajectory $H_t=\nabla^2L(w_t)$ moves little from one step to the next, so the last
certified Ritz vectors, extrapolated (`StepTracker.predict`), are an excellent start. A step
multiplies only these top-$k$ vectors, from the same linearization of $\nabla L$ at $w_t$ that
yields the gradient the step itself needs. When their residuals are not small enough, rounds of
block Davidson follow: the guard vector below them and the residuals $r_i=Hv_i-\theta_iv_i$ (the
steepest-ascent directions of the Rayleigh quotient) join the subspace, until the residuals are
a quarter of the tolerance, so that the next steps start close enough for one round.

The certificate is the residual norm, from true products at $w_t$ only: $|\theta_i-\lambda|\le
\lVert r_i\rVert$ for an eigenvalue $\lambda$ of $H_t$, never below the rounding level
$100\,\epsilon\,|\theta_1|$ of the working precision. It assumes no gap (a guard Ritz value
can sit below an eigenvalue the small subspace misses, and then a gap-based bound
$r^2/\mathrm{gap}$ is too small: along eos-gd such bounds failed on 13 of 300 steps), only that
the tracked vectors follow the top $k$ eigenvalues, as any warm start does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..errors import ConfigError, check_positive

__all__ = ["StepTracker", "StepTrackerState", "StepEig", "linearized_gradient"]


class StepTrackerState(NamedTuple):
    V: Float[Array, "d k1"]  # the previous Ritz vectors: top k, then the guard
    past: Float[Array, "4 d k"]  # the top k Ritz vectors of the 4 steps before, newest first
    count: Int[Array, ""]  # how many of ``past`` are filled


#: Predictions of the next top Ritz vectors from the certified ones: $v_t$ itself, the linear
#: extrapolation $2v_t - v_{t-1}$, and the period-2 one $2v_{t-1} - v_{t-3}$ (at the edge of
#: stability the iterate, and with it the Hessian, alternates from step to step). Each row:
#: (weights of $v_t, v_{t-1}, v_{t-2}, v_{t-3}$), the number of past vectors it needs.
_PREDICTORS = ((1.0, 0.0, 0.0, 0.0, 1), (2.0, -1.0, 0.0, 0.0, 2), (0.0, 2.0, 0.0, -1.0, 4))


class StepEig(NamedTuple):
    """One step's certified eigenvalues (largest first)."""

    values: Float[Array, " k"]
    error_bound: Float[Array, " k"]
    next_value: Float[Array, ""]  # the guard Ritz value (<= lambda_{k+1}); NaN if not multiplied
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
        if X.shape[1] == 1:  # vmap's batched matmuls cost ~15% more than one product on CPU
            return jvp(X[:, 0])[1][:, None]
        return jax.vmap(lambda x: jvp(x)[1], in_axes=1, out_axes=1)(X)

    return value, grad, matmat


#: Once a step needs a second round, rounds go on until the top residuals are below
#: ``_POLISH * tol * |theta|``: the vectors then start the next steps close enough that the top
#: products alone certify them.
_POLISH = 0.25

#: The floor of every bound, in units of eps * |theta_1|: the rounding error of H X in the
#: working precision (a float32 HVP is accurate to about 10 eps relative on the nets tested).
_ROUNDING = 100


def _rounding(theta: Array) -> Array:
    return _ROUNDING * jnp.finfo(theta.dtype).eps * jnp.max(jnp.abs(theta))


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
    The first round multiplies the top $k$ vectors predicted from the last certified ones
    (`predict`); each value's bound is its residual norm. While a bound misses ``tol``, each
    further round adds the guard (in round 2) and the current Ritz pairs' residuals to the
    subspace ($k+1$ products), until the residuals are below ``tol/4`` or ``max_rounds``
    rounds are spent.

    >>> import jax, jax.numpy as jnp
    >>> H = jnp.diag(jnp.arange(1.0, 13.0))
    >>> tr = StepTracker(k=1, tol=1e-3, max_rounds=6)
    >>> st = tr.init(12, jnp.float64 if jax.config.x64_enabled else jnp.float32, jax.random.key(0))
    >>> st, eig = tr.update(lambda X: H @ X, st)
    >>> bool(eig.converged), round(float(eig.values[0]), 2)
    (True, 12.0)
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
        return self._fresh(_orth(jax.random.normal(key, (d, self.block), dtype)))

    def warm(self, vectors: Float[Array, "d k"], guard: Float[Array, " d"]) -> StepTrackerState:
        """A state from eigenvectors solved otherwise (e.g. by Lanczos at the first step)."""
        return self._fresh(jnp.concatenate([vectors[:, : self.k], guard[:, None]], axis=1))

    def _fresh(self, V: Array) -> StepTrackerState:
        past = jnp.zeros((4, V.shape[0], self.k), V.dtype)
        return StepTrackerState(V, past, jnp.zeros((), jnp.int32))

    def predict(self, state: StepTrackerState) -> Float[Array, "d k"]:
        r"""The start of the next step's top block: of the `_PREDICTORS` that the history allows,
        the one that would have predicted the last certified vectors best. Only the start
        depends on it; the values and bounds come from true products at the new point."""
        hist = (state.V[:, : self.k], *state.past)  # v_t, v_t-1, ..., v_t-4
        errs = []
        for *c, need in _PREDICTORS:
            # the same rule one step back, against the vectors it would have predicted; the
            # weights are Python numbers, so the sum reads only the vectors it uses, once
            back = sum(w * h for w, h in zip(c, hist[1:], strict=True) if w) - hist[0]
            err = jnp.sqrt(jnp.sum(back * back))
            errs.append(jnp.where(state.count >= need, err, jnp.inf))
        weights = jnp.asarray([c for *c, _ in _PREDICTORS], hist[0].dtype)
        c = weights[jnp.argmin(jnp.stack(errs))]
        return sum(c[i] * hist[i] for i in range(4))

    def _ritz(self, X: Array, HX: Array, active: Array, tol: float):
        k, k1 = self.k, self.k + 1
        # the guard Ritz value exists once k + 1 columns are multiplied
        valid = jnp.sum(active) > k
        both = active[:, None] & active[None, :]
        T = jnp.where(both, 0.5 * (X.T @ HX + HX.T @ X), 0.0)
        # inactive columns are parked below every eigenvalue of the active block
        park = -2.0 * jnp.sqrt(jnp.sum(T * T)) - 1.0
        theta, S = jnp.linalg.eigh(T + jnp.diag(jnp.where(active, 0.0, park)))
        order = jnp.argsort(-theta)[:k1]
        theta, S = theta[order], S[:, order]
        U, HU = X @ S, HX @ S
        R = HU - U * theta[None, :]
        # no bound is tighter than the rounding of the products themselves
        floor = _rounding(theta[:k])
        bound = jnp.maximum(jnp.linalg.norm(R[:, :k], axis=0), floor)
        ok = jnp.all(bound <= jnp.maximum(tol * jnp.abs(theta[:k]), floor))
        eig = (theta[:k], bound, jnp.where(valid, theta[k], jnp.nan))
        return U, R, eig, ok

    def update(
        self, matmat: Callable[[Array], Array], state: StepTrackerState
    ) -> tuple[StepTrackerState, StepEig]:
        """Certified top-$k$ eigenvalues of the operator ``matmat`` from the warm ``state``."""
        k, k1, m = self.k, self.block, self.block * self.max_rounds
        X0 = _orth(jnp.concatenate([self.predict(state), state.V[:, k:]], axis=1))
        d, dtype = X0.shape[0], X0.dtype
        top = jnp.arange(k1) < k
        X1 = X0 * top[None, :]
        HX1 = jnp.zeros_like(X0).at[:, :k].set(matmat(X0[:, :k]))
        # round 1 on its own k + 1 columns: most steps end there, and a Rayleigh-Ritz over all
        # m padded columns would cost about as much as the product itself on small nets
        U, R, eig, ok = self._ritz(X1, HX1, top, self.tol)

        def cond(c):
            return (~c[6]) & (c[7] < self.max_rounds)

        def body(c):
            X, HX, active, _, R, _, _, n = c
            # the guard joins in round 2, beside the top residuals
            R = R.at[:, k].set(jnp.where(n == 1, X0[:, k], R[:, k]))
            Xn, good = _extend(X, active, R)
            X = jax.lax.dynamic_update_slice_in_dim(X, Xn, n * k1, axis=1)
            HX = jax.lax.dynamic_update_slice_in_dim(HX, matmat(Xn), n * k1, axis=1)
            active = jax.lax.dynamic_update_slice_in_dim(active, good, n * k1, axis=0)
            U, R, eig, polished = self._ritz(X, HX, active, _POLISH * self.tol)
            return X, HX, active, U, R, eig, polished, n + 1

        def more_rounds(U, R, eig):
            # the m-column subspace exists only on the steps that need it: filling it costs
            # 2m vectors of memory traffic, more than the round-1 work on large nets
            X = jnp.zeros((d, m), dtype).at[:, :k1].set(X1)
            HX = jnp.zeros((d, m), dtype).at[:, :k1].set(HX1)
            active = jnp.zeros(m, bool).at[:k1].set(top)
            *_, U, R, eig, _, rounds = jax.lax.while_loop(
                cond, body, (X, HX, active, U, R, eig, jnp.asarray(False), jnp.asarray(1))
            )
            return U, R, eig, rounds

        U, R, eig, rounds = jax.lax.cond(
            ok, lambda U, R, eig: (U, R, eig, jnp.asarray(1)), more_rounds, U, R, eig
        )
        values, bound, nxt = eig
        # a step that never multiplied the guard keeps the previous one
        V = U.at[:, k].set(jnp.where(jnp.isfinite(nxt), U[:, k], X0[:, k]))
        # signs follow the previous vectors, so the history can be extrapolated
        V = V.at[:, :k].multiply(jnp.where(jnp.sum(V[:, :k] * state.V[:, :k], 0) < 0, -1.0, 1.0))
        past = jnp.concatenate([state.V[None, :, :k], state.past[:3]], axis=0)
        new = StepTrackerState(V, past, jnp.minimum(state.count + 1, 4))
        return new, StepEig(
            values=values,
            error_bound=bound,
            next_value=nxt,
            matvecs=rounds * k1 - 1,
            converged=jnp.all(bound <= jnp.maximum(self.tol * jnp.abs(values), _rounding(values))),
        )
