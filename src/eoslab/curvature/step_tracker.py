r"""`StepTracker`: certified top eigenvalues at *every* step, inside the compiled loop.

Along a trajectory $H_t=\nabla^2L(w_t)$ moves little from one step to the next, so the last
steps' vectors, extrapolated (`StepTracker.predict`), are an excellent start. A step
multiplies only these top-$k$ vectors, from the same linearization of $\nabla L$ at $w_t$ that
yields the gradient the step itself needs. When their residuals are not small enough, rounds of
block Davidson follow: the guard vector below them and the residuals $r_i=Hv_i-\theta_iv_i$ (the
steepest-ascent directions of the Rayleigh quotient) join the subspace, until the residuals are
a quarter of the tolerance, so that the next steps start close enough for one round.

What a step keeps for the next is not the Ritz vector $v$ but $Hv/\theta=v+r/\theta$, a power
step that costs no product: it removes the error along the bulk of the spectrum
($|\lambda|\ll\theta$), which along eos-gd halves the products a step needs (2.7 to 1.3 a
step over 300 steps of its edge of stability).

The certificate is the residual norm, from true products at $w_t$ only, plus what rounding in the
working precision can hide (`eoslab.curvature.rounding`): $|\theta_i-\lambda|\le
\lVert r_i\rVert + c\,\epsilon\,\lVert H_t\rVert$ for an eigenvalue $\lambda$ of $H_t$, with
$\lVert H_t\rVert$ estimated by the largest $|\theta|$ seen (the warm start's Lanczos solve saw both
ends of the spectrum). It assumes no gap (a guard Ritz value
can sit below an eigenvalue the small subspace misses, and then a gap-based bound
$r^2/\mathrm{gap}$ is too small: along eos-gd such bounds failed on 13 of 300 steps), only that
the tracked vectors follow the top $k$ eigenvalues, as any warm start does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..errors import ConfigError, check_positive
from ..precision import check_matmul_dtype, rounding_dtype
from .rounding import check_tol, rounding_floor

__all__ = [
    "ClusterEig",
    "ClusterState",
    "ClusterTracker",
    "StepEig",
    "StepTracker",
    "StepTrackerState",
]


class StepTrackerState(NamedTuple):
    # one vector per row, so each is contiguous (XLA's reductions over a column of a (d, k)
    # array cost several times a row's on CPU)
    vectors: Float[Array, "k1 d"]  # the kept top k (H v / theta, see update), then the guard
    past: Float[Array, "4 k d"]  # the kept top k of the 4 steps before, newest first
    count: Int[Array, ""]  # how many of ``past`` are filled
    norm: Float[Array, ""]  # ||H|| estimated by the largest |Ritz value| seen (rounding's scale)


#: The extrapolation's coefficients are scaled down to $|c_1|+|c_2|\le$ this, so one odd step
#: cannot throw the start far from the last vectors (linear extrapolation has $|c|_1=1$).
_MAX_EXTRAPOLATION = 2.0

#: Ridge of the extrapolation's least squares, relative to the trace of its normal matrix.
_RIDGE = 1e-4


class StepEig(NamedTuple):
    """One step's certified eigenvalues (largest first)."""

    values: Float[Array, " k"]
    error_bound: Float[Array, " k"]
    next_value: Float[Array, ""]  # the guard Ritz value (<= lambda_{k+1}); NaN if not multiplied
    matvecs: Int[Array, ""]
    converged: Array


#: Once a step needs a second round, rounds go on until the top residuals are below
#: ``_POLISH * tol * |theta|``: the vectors then start the next steps close enough that the top
#: products alone certify them.
_POLISH = 0.25


def _certify(
    theta: Array, resid: Array, norm: Array, tol: float, rounding: Any
) -> tuple[Array, Array]:
    """Each value's bound, its residual norm plus the products' rounding floor (in ``rounding``,
    the products' precision), and whether all bounds are within ``tol`` of their values or at
    the rounding level (no round can help)."""
    floor = rounding_floor(norm, rounding)
    bound = resid + floor
    return bound, jnp.all((bound <= tol * jnp.abs(theta)) | (resid <= floor))


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
    The first round multiplies the top $k$ vectors predicted from the last steps' ones
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
    rounding: str | None = eqx.field(static=True, default=None)
    """The dtype of the products' rounding when coarser than the vectors' (``"bfloat16"`` for
    a mixed-precision model, `eoslab.precision`); None: the vectors' dtype."""

    def __check_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError("k", self.k, "an integer >= 1")
        check_positive("tol", self.tol)
        check_matmul_dtype(self.rounding, "rounding")
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
        check_tol(self.tol, rounding_dtype(dtype, self.rounding))
        if d < self.block * self.max_rounds:
            raise ConfigError(
                "dim", d, f"at least (k+1) * max_rounds = {self.block * self.max_rounds} parameters"
            )
        return self._fresh(_orth(jax.random.normal(key, (d, self.block), dtype)).T)

    def warm(
        self, vectors: Float[Array, "d k"], guard: Float[Array, " d"], norm: float | Array = 0.0
    ) -> StepTrackerState:
        """A state from eigenvectors solved otherwise (e.g. by Lanczos at the first step), with
        that solve's estimate of $\\lVert H\rVert$ (`EigResult.operator_norm`)."""
        check_tol(self.tol, rounding_dtype(vectors.dtype, self.rounding))
        rows = jnp.concatenate([vectors[:, : self.k].T, guard[None, :]], axis=0)
        return self._fresh(rows, norm)

    def _fresh(self, rows: Array, norm: float | Array = 0.0) -> StepTrackerState:
        past = jnp.zeros((4, self.k, rows.shape[1]), rows.dtype)
        return StepTrackerState(rows, past, jnp.zeros((), jnp.int32), jnp.asarray(norm, rows.dtype))

    def predict(self, state: StepTrackerState) -> Float[Array, "k d"]:
        r"""The start of the next step's top block, per vector, from the last five of it
        $h_0=v_t,\dots,h_4=v_{t-4}$ and their differences $\Delta_i=h_i-h_{i+1}$:
        $v_{t+1}=h_0+c_1\Delta_0+c_2\Delta_1+c_3\Delta_2$.

        $c$ is the candidate that would have predicted $h_0$ from the older vectors best: the last
        vector ($c=0$), a straight line ($c=(1,0,0)$), a line plus the edge of stability's
        period-2 alternation ($c=(0,1,0)$), the same-parity vector $h_1$ ($c=(-1,0,0)$), the
        same-parity line $2h_1-h_3$ ($c=(-1,1,1)$: an alternation whose amplitude drifts, as
        inside an unstable cluster), or the two-term recurrence $\Delta_j\approx c_1\Delta_{j+1}+
        c_2\Delta_{j+2}$ fitted to the older vectors (which also holds for an alternation that
        grows or shrinks by a factor per step). The recurrence, when chosen, is refitted with
        $h_0$ for the prediction. Only the start depends on $c$: values and bounds come from
        true products at the new point."""
        hist = jnp.concatenate([state.vectors[None, : self.k], state.past])  # (5, k, d)
        filled = jnp.arange(1, 5) <= state.count  # Delta_i needs h_(i+1)
        D = (hist[:-1] - hist[1:]) * filled[:, None, None]  # (4, k, d)
        G = jnp.stack([D[:, j] @ D[:, j].T for j in range(self.k)])  # (k, 4, 4)
        dtype, tiny = D.dtype, jnp.finfo(D.dtype).tiny ** 0.5

        def fit(rows):  # least squares of Delta_j ~ c1 Delta_(j+1) + c2 Delta_(j+2), j in rows
            A = sum(G[:, j + 1 : j + 3, j + 1 : j + 3] for j in rows)
            b = sum(G[:, j + 1 : j + 3, j] for j in rows)
            ridge = _RIDGE * jnp.trace(A, axis1=1, axis2=2)[:, None, None] / 2 + tiny
            c = jnp.linalg.solve(A + ridge * jnp.eye(2, dtype=dtype), b[..., None])[..., 0]
            l1 = jnp.sum(jnp.abs(c), -1, keepdims=True)
            return c * jnp.minimum(1.0, _MAX_EXTRAPOLATION / (l1 + tiny))  # (k, 2)

        # h_0 + c . (Delta_0, Delta_1, Delta_2): the last vector, a line, a line plus the period-2
        # alternation, the same-parity vector h_1, and the same-parity line 2 h_1 - h_3
        fixed = jnp.asarray([[0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [-1, 1, 1]], dtype)
        need = jnp.asarray([1, 2, 3, 2, 4, 4])  # past vectors each backtest reads
        fitted = jnp.pad(fit([1]), ((0, 0), (0, 1)))
        n_fixed = fixed.shape[0]
        cands = jnp.concatenate([jnp.broadcast_to(fixed, (self.k, n_fixed, 3)), fitted[:, None]], 1)
        # |Delta_0 - c . (Delta_1, Delta_2, Delta_3)|^2 for each candidate, from the Gram matrix
        c0 = jnp.concatenate([jnp.ones((self.k, n_fixed + 1, 1), dtype), -cands], axis=2)
        err = jnp.einsum("kci,kij,kcj->kc", c0, G, c0)
        err = jnp.where(need[None, :] <= state.count, err, jnp.inf)
        best = jnp.argmin(err, axis=1)
        refit = jnp.pad(fit([0, 1]), ((0, 0), (0, 1)))
        c = jnp.where((best == n_fixed)[:, None], refit, cands[jnp.arange(self.k), best])
        return hist[0] + c[:, :1] * D[0] + c[:, 1:2] * D[1] + c[:, 2:] * D[2]

    def _ritz(self, X: Array, HX: Array, active: Array, norm: Array, tol: float):
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
        seen = jnp.arange(k1) < jnp.sum(active)
        norm = jnp.maximum(norm, jnp.max(jnp.where(seen, jnp.abs(theta), 0.0)))
        bound, ok = _certify(
            theta[:k],
            jnp.linalg.norm(R[:, :k], axis=0),
            norm,
            tol,
            rounding_dtype(theta.dtype, self.rounding),
        )
        eig = (theta[:k], bound, jnp.where(valid, theta[k], jnp.nan))
        return U, R, eig, ok, norm

    def _first_round(self, Q: Array, HQ: Array, norm: Array):
        """Rayleigh-Ritz on the predicted top block alone (rows), the round most steps end with."""
        if self.k == 1:
            theta, U, HU = jnp.sum(Q * HQ, axis=1), Q, HQ
        else:
            theta, S = jnp.linalg.eigh(0.5 * (Q @ HQ.T + HQ @ Q.T))
            theta, S = theta[::-1], S[:, ::-1]
            U, HU = S.T @ Q, S.T @ HQ
        R = HU - theta[:, None] * U
        norm = jnp.maximum(norm, jnp.max(jnp.abs(theta)))
        bound, ok = _certify(
            theta,
            jnp.linalg.norm(R, axis=1),
            norm,
            self.tol,
            rounding_dtype(theta.dtype, self.rounding),
        )
        return U, HU, R, (theta, bound, jnp.asarray(jnp.nan, theta.dtype)), ok, norm

    def update(
        self,
        matmat: Callable[[Array], Array],
        state: StepTrackerState,
        relinearize: Callable[[], Callable[[Array], Array]] | None = None,
    ) -> tuple[StepTrackerState, StepEig]:
        """Certified top-$k$ eigenvalues of the operator ``matmat`` from the warm ``state``.

        ``relinearize``, if given, builds the same operator anew for the later rounds. A
        ``matmat`` from an operator's ``linearize()`` (`eoslab.curvature.HessianOperator`) is
        then used once, so XLA fuses that product with
        the gradient instead of storing the linearization for rounds most steps skip (along
        eos-gd the stored one cost 0.2 of a plain step, every step)."""
        k, k1, m = self.k, self.block, self.block * self.max_rounds
        P = self.predict(state)
        Q = P / jnp.linalg.norm(P) if k == 1 else _orth(P.T).T
        d, dtype = Q.shape[1], Q.dtype
        guard = state.vectors[k]
        U1, HU1, R1, eig1, ok, norm1 = self._first_round(Q, matmat(Q.T).T, state.norm)

        def more_rounds():
            mm = matmat if relinearize is None else relinearize()

            def body(c):
                X, HX, active, _, R, _, _, n, norm = c
                Xn, good = _extend(X, active, R)  # in round 2, R's last column is the guard
                X = jax.lax.dynamic_update_slice_in_dim(X, Xn, n * k1, axis=1)
                HX = jax.lax.dynamic_update_slice_in_dim(HX, mm(Xn), n * k1, axis=1)
                active = jax.lax.dynamic_update_slice_in_dim(active, good, n * k1, axis=0)
                U, R, eig, polished, norm = self._ritz(X, HX, active, norm, _POLISH * self.tol)
                return X, HX, active, U, R, eig, polished, n + 1, norm

            # the rounds work on columns, in an m-column subspace that exists only on the steps
            # that need it: filling it costs 2m vectors of memory traffic
            X = jnp.zeros((d, m), dtype).at[:, :k].set(U1.T)
            HX = jnp.zeros((d, m), dtype).at[:, :k].set(HU1.T)
            active = jnp.arange(m) < k
            R = jnp.concatenate([R1, guard[None, :]]).T
            init = (X, HX, active, R, R, eig1, jnp.asarray(False), jnp.asarray(1), norm1)
            *_, U, R, eig, _, rounds, norm = jax.lax.while_loop(
                lambda c: (~c[6]) & (c[7] < self.max_rounds), body, init
            )
            # a guard that was never multiplied (a degenerate subspace) stays as it was
            g = jnp.where(jnp.isfinite(eig[2]), U[:, k], guard)
            return U[:, :k].T, R[:, :k].T, g, eig, rounds, norm

        U, R, guard, (values, bound, nxt), rounds, norm = jax.lax.cond(
            ok, lambda: (U1, R1, guard, eig1, jnp.asarray(1), norm1), more_rounds
        )
        # one free power step, Hv / theta = v + r / theta, shrinks the error along the bulk
        # of the spectrum (|lambda| << theta) to nothing: the next prediction starts from it
        refine = values > 0
        W = U + R * (refine / jnp.where(refine, values, 1.0))[:, None]
        W = W / jnp.linalg.norm(W, axis=1, keepdims=True)
        # signs follow the previous vectors, so the history can be extrapolated
        W = W * jnp.where(jnp.sum(W * state.vectors[:k], 1) < 0, -1.0, 1.0)[:, None]
        past = jnp.concatenate([state.vectors[None, :k], state.past[:3]])
        new = StepTrackerState(
            jnp.concatenate([W, guard[None, :]]), past, jnp.minimum(state.count + 1, 4), norm
        )
        return new, StepEig(
            values=values,
            error_bound=bound,
            next_value=nxt,
            matvecs=(rounds - 1) * k1 + k,
            converged=jnp.all(bound <= self.tol * jnp.abs(values)),
        )


# --------------------------------------------------------------------------- clusters


class ClusterState(NamedTuple):
    """`ClusterTracker`'s carry: Ritz vectors at the last step (largest value first; rows
    ``[0, size)`` the block, row ``size`` its guard, the rest spare), and $\\lVert H\\rVert$."""

    vectors: Float[Array, "m1 d"]
    size: Int[Array, ""]  # the block's size: how many values lay above the cutoff
    norm: Float[Array, ""]
    past: Float[Array, "4 m1 d"]  # the kept vectors of the 4 steps before, newest first
    count: Int[Array, ""]  # how many of ``past`` are filled


class ClusterEig(NamedTuple):
    """One step's certified block: ``values[:size]`` (largest first; NaN beyond ``size``) each
    within ``error_bound`` of an eigenvalue of $H_t$, the guard's Ritz value ``next_value``
    (below the cutoff unless the block is full), the products spent."""

    values: Float[Array, " m"]
    error_bound: Float[Array, " m"]
    size: Int[Array, ""]
    next_value: Float[Array, ""]
    matvecs: Int[Array, ""]
    converged: Array


def _products(matmat: Callable[[Array], Array], Q: Array, count: Array, chunk: int):
    """``H q`` for the first ``count`` columns of ``Q`` (d, p): ``chunk`` columns per call (one
    vmapped product) while a whole chunk remains, then one at a time, in while loops
    (shapes are static, the count is not); the other columns come back zero. Returns the
    products and how many were made (``count``)."""
    d, p = Q.shape
    Qp = jnp.pad(Q, ((0, 0), (0, chunk)))

    def loop(width: int, begin: Array, n: Array, HQ: Array) -> Array:
        def body(c):
            i, HQ = c
            at = begin + i * width
            block = jax.lax.dynamic_slice_in_dim(Qp, at, width, axis=1)
            return i + 1, jax.lax.dynamic_update_slice_in_dim(HQ, matmat(block), at, axis=1)

        zero = jnp.zeros((), jnp.int32)
        return jax.lax.while_loop(lambda c: c[0] < n, body, (zero, HQ))[1]

    count = jnp.asarray(count, jnp.int32)
    done = jnp.zeros((), jnp.int32)
    HQ = jnp.zeros_like(Qp)
    if chunk > 1:
        HQ = loop(chunk, done, count // chunk, HQ)
        done = count // chunk * chunk
    HQ = loop(1, done, count - done, HQ)
    keep = jnp.arange(p) < count
    return jnp.where(keep[None, :], HQ[:, :p], 0.0), count


def _cluster_state(rows: Array, size: int | Array, norm: float | Array) -> ClusterState:
    return ClusterState(
        rows,
        jnp.asarray(size, jnp.int32),
        jnp.asarray(norm, rows.dtype),
        jnp.zeros((4, *rows.shape), rows.dtype),
        jnp.zeros((), jnp.int32),
    )


class _Round(NamedTuple):
    """The carry of `ClusterTracker`'s rounds: the subspace ``X`` (its first ``p`` columns live)
    and its products, the Ritz pairs (rows, largest first) and what the round concluded."""

    X: Array
    HX: Array
    p: Array
    theta: Array
    U: Array
    R: Array
    seen: Array
    norm: Array
    size: Array
    bound: Array
    ok: Array
    rounds: Array
    used: Array


class ClusterTracker(eqx.Module):
    r"""Certified top eigenvalues of $H_t$ at every step: the block of all of them above
    ``frac`` times a threshold (e.g. $2/\eta$), its size following them as they cross.

    The block predicted from the last steps' (`predict`) and its guard are orthonormalized and
    multiplied, ``chunk`` columns per call while a whole chunk remains and then one at a time
    (``max_k + 1`` rows at most: shapes inside a scan are static, the count is not), from the
    step's linearization. Rayleigh-Ritz on them gives Ritz pairs
    $(\theta_i,u_i)$, largest first, with residuals $r_i=Hu_i-\theta_iu_i$; the block is the
    values at or above the cutoff $c$ (at least one), the guard the next one.

    **Bounds.** Each value has the residual bound $\lVert r_i\rVert+\phi$, with
    $\phi=8\epsilon\lVert H\rVert$ rounding's floor in the products' precision
    (`eoslab.curvature.rounding`): some eigenvalue of $H_t$ lies within it, whatever the rest
    of the spectrum. With ``gap`` (the default) a block value's bound is the smaller of that and
    the quadratic gap bound below.

    *Gap bound* (Lehmann's; a block Kato-Temple). Let $s$ be the block's size, $U$ its $s$
    Ritz vectors, $R=[r_1,\dots,r_s]$, $\alpha$ a number with $\alpha<\theta_s$ and
    $D=\mathrm{diag}(\theta_i-\alpha)$. If $\lambda_{s+1}(H_t)\le\alpha$, then for $i\le s$

    $$0\;\le\;\lambda_i-\theta_i\;\le\;\lVert R\,D^{-1/2}\rVert_2^2\;\le\;
    \frac{\lVert R\rVert_2^2}{\theta_s-\alpha}.$$

    Proof: $\theta_i\le\lambda_i$ by Cauchy interlacing. With $B=H-\alpha$, $B$ has exactly $s$
    positive eigenvalues $\lambda_i-\alpha$. The pencil $(U^\top B^2U,\;U^\top BU)=(D^2+R^\top
    R,\;D)$ has eigenvalues $\kappa_1\ge\dots\ge\kappa_s>0$ whose reciprocals are Ritz values of
    $B^{-1}$ on $BU$; interlacing for $B^{-1}$, whose largest eigenvalues are the
    $1/(\lambda_i-\alpha)$, gives $\lambda_i\le\alpha+\kappa_i$, and Weyl's inequality on
    $D+D^{-1/2}R^\top RD^{-1/2}$ gives $\kappa_i\le\theta_i-\alpha+\lVert RD^{-1/2}\rVert_2^2$.
    Rounding: the computed residuals are within $\phi$ per vector of the true ones, so
    $\lVert R\,D^{-1/2}\rVert_2$ is taken plus $\sqrt{s}\,\phi/\sqrt{\min(\theta_i-\alpha)-\phi}$,
    $D$ less $\phi$, and $\phi$ is added.

    Here $\alpha=\max(c,\ \theta_{s+1}+\lVert r_{s+1}\rVert+\phi)$, the cutoff or the top of the
    guard's interval: the hypothesis is that *outside the block no eigenvalue lies above the
    cutoff, except possibly the one in the guard's interval* (it is weaker than "the block holds
    every eigenvalue above the cutoff"). It is not used for a full block (its guard is above
    the cutoff, and so may be more). The hypothesis is not certified by the products (no few
    products can rule out an eigenvector they never touched): it is the one the block's size
    rests on anyway (the guard's Ritz value bounds $\lambda_{s+1}$ from *below*). The gap is to
    the cutoff or to the top of the guard's certified interval, never to a Ritz value: a gap to
    a Ritz value below an eigenvalue the subspace misses is too large, and such bounds failed
    on 13 of 300 steps of eos-gd (`StepTracker` keeps residual
    bounds for that reason). The residual bound needs no hypothesis but
    is linear in the residual; the gap bound is quadratic, so a block whose subspace turns a
    little each step certifies from one round. ``gap=False`` keeps only residual bounds.

    **Rounds.** A step is done when every block bound is within ``tol`` (or the residual at the
    rounding floor) and the guard is certified below the cutoff (its value plus its residual
    bound), or the block is full. Otherwise a further round grows one subspace (block
    Davidson without restart) by the directions still needed: with ``gap``, the leading left
    singular vectors of $RD^{-1/2}$ whose squared singular value is above ``tol`` times the
    smallest block value (the gap bound is the largest one); without, the residuals of the
    values that miss ``tol``, and once a round is needed on to ``tol/4``; with both, the
    guard's residual while it is not certified; until ``max_rounds``. Each step starts from the
    block predicted from the last steps' (`predict`), and keeps $Hu/\theta$ (a free power
    step), as `StepTracker` does.

    >>> import jax, jax.numpy as jnp
    >>> H = jnp.diag(jnp.concatenate([jnp.array([10.0, 9.5, 9.0]), jnp.linspace(0.0, 5.0, 37)]))
    >>> tr = ClusterTracker(max_k=4, frac=0.75, tol=1e-3, max_rounds=8)
    >>> st = tr.init(40, jnp.float64 if jax.config.x64_enabled else jnp.float32, jax.random.key(0))
    >>> st, eig = tr.update(lambda X: H @ X, st, 10.0)
    >>> int(eig.size), [round(float(v), 2) for v in eig.values[:3]], bool(eig.converged)
    (3, [10.0, 9.5, 9.0], True)
    """

    max_k: int = eqx.field(static=True, default=16)
    frac: float = eqx.field(static=True, default=0.75)
    tol: float = eqx.field(static=True, default=1e-3)
    max_rounds: int = eqx.field(static=True, default=4)
    chunk: int = eqx.field(static=True, default=1)
    rounding: str | None = eqx.field(static=True, default=None)
    """The dtype of the products' rounding when coarser than the vectors' (as `StepTracker`)."""
    gap: bool = eqx.field(static=True, default=True)
    """Block bounds may use the quadratic gap bound (hypothesis: nothing above the cutoff
    outside the block); False: residual bounds only."""

    def __check_init__(self) -> None:
        check_matmul_dtype(self.rounding, "rounding")
        for name in ("max_k", "max_rounds", "chunk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, v, "an integer >= 1")
        check_positive("tol", self.tol)
        if not (isinstance(self.frac, (int, float)) and 0.0 < self.frac <= 1.0):
            raise ConfigError("frac", self.frac, "a fraction in (0, 1] of the threshold")
        if not isinstance(self.gap, bool):
            raise ConfigError("gap", self.gap, "True or False")

    def init(self, d: int, dtype, key: Array) -> ClusterState:
        """A random orthonormal start with a block of one."""
        check_tol(self.tol, rounding_dtype(dtype, self.rounding))
        if d < 2 * (self.max_k + 1):
            raise ConfigError("dim", d, f"at least 2 (max_k + 1) = {2 * (self.max_k + 1)}")
        X = _orth(jax.random.normal(key, (d, self.max_k + 1), dtype)).T
        return _cluster_state(X, 1, 0.0)

    def warm(
        self, vectors: Float[Array, "d j"], key: Array, norm: float | Array = 0.0, size: int = 1
    ) -> ClusterState:
        """A state from eigenvectors solved otherwise (the top ones first; random vectors fill
        the rest of the ``max_k + 1`` rows), with a block of ``size``."""
        check_tol(self.tol, rounding_dtype(vectors.dtype, self.rounding))
        d, j = vectors.shape
        m1 = self.max_k + 1
        X = vectors[:, :m1]
        if j < m1:
            X = jnp.concatenate([X, jax.random.normal(key, (d, m1 - j), vectors.dtype)], axis=1)
        size = max(1, min(int(size), self.max_k))
        return _cluster_state(_orth(X).T, size, norm)

    def predict(self, state: ClusterState) -> Float[Array, "m1 d"]:
        r"""The start of this step's block from the kept vectors of the last five steps,
        $h_0=V_t,\dots,h_4=V_{t-4}$ (rows), each turned onto $h_0$ first: $h_j'=O_jh_j$ with
        $O_j$ the orthogonal factor of $h_0h_j^\top$ on the block and its guard (Procrustes),
        since a block's basis inside its subspace changes from step to step while its subspace
        moves little.

        The candidates are the last block $h_0$, the same-parity block $h_1'$, the line
        $2h_0-h_1'$, the same-parity line $2h_1'-h_3'$ and the two-term recurrence of the
        differences fitted as in `StepTracker.predict` (at the edge of stability GD
        alternates along the top directions with an amplitude that drifts, and $H_{t+1}$ is
        closer to $H_{t-1}$ than to $H_t$: on the synthetic fc-tanh 5k overshoot the
        same-parity line's first-round residuals were 6-11x below the last block's). The one
        chosen is the one that would have predicted $h_0$ best from the older blocks (Frobenius
        norm over the block and its guard). Only the start depends on it: values and bounds
        come from products at the new point."""
        m1 = self.max_k + 1
        rows = jnp.arange(m1) < state.size + 1
        both = rows[:, None] & rows[None, :]
        h0 = state.vectors

        def turned(h: Array) -> Array:
            M = jnp.where(both, h0 @ h.T, jnp.eye(m1, dtype=h.dtype))
            u, _, vt = jnp.linalg.svd(M)
            return (u @ vt) @ h

        h1, h2, h3, h4 = (turned(state.past[j]) for j in range(4))
        # the recurrence Delta_j ~ c1 Delta_(j+1) + c2 Delta_(j+2) of the differences
        # Delta_j = h_j - h_(j+1), as `StepTracker.predict` (also an alternation that grows)
        D = jnp.stack([h0 - h1, h1 - h2, h2 - h3, h3 - h4]) * rows[None, :, None]
        G = jnp.einsum("iab,jab->ij", D, D)
        tiny = jnp.finfo(G.dtype).tiny ** 0.5

        def fit(js):
            A = sum(G[j + 1 : j + 3, j + 1 : j + 3] for j in js)
            b = sum(G[j + 1 : j + 3, j] for j in js)
            ridge = _RIDGE * jnp.trace(A) / 2 + tiny
            c = jnp.linalg.solve(A + ridge * jnp.eye(2, dtype=G.dtype), b)
            return c * jnp.minimum(1.0, _MAX_EXTRAPOLATION / (jnp.sum(jnp.abs(c)) + tiny))

        cb, cn = fit([1]), fit([0, 1])
        # (prediction of h0 from the older blocks, prediction of the next, past blocks needed)
        cands = [
            (h1, h0, 1),
            (h2, h1, 2),
            (2 * h1 - h2, 2 * h0 - h1, 2),
            (2 * h2 - h4, 2 * h1 - h3, 4),
            (h1 + cb[0] * D[1] + cb[1] * D[2], h0 + cn[0] * D[0] + cn[1] * D[1], 4),
        ]
        err = jnp.stack(
            [
                jnp.where(
                    need <= state.count,
                    jnp.sum(jnp.where(rows[:, None], h0 - b, 0.0) ** 2),
                    jnp.inf,
                )
                for b, _, need in cands
            ]
        )
        best = jnp.where(state.count >= 1, jnp.argmin(err), 0)
        return jax.lax.switch(best, [lambda n=n: n for _, n, _ in cands])

    def _rr(self, Q: Array, HQ: Array, valid: Array, norm: Array):
        """Rayleigh-Ritz on the ``valid`` orthonormal columns of ``Q``: the top ``max_k + 1``
        Ritz pairs as rows (invalid ones parked below), their residuals, the updated norm."""
        m1 = self.max_k + 1
        both = valid[:, None] & valid[None, :]
        T = jnp.where(both, 0.5 * (Q.T @ HQ + HQ.T @ Q), 0.0)
        # invalid columns are parked below the valid block, in their order (distinct values,
        # so that eigh keeps each of them a column of Q instead of mixing them)
        scale = 2.0 * jnp.sqrt(jnp.sum(T * T)) + 1.0
        park = -scale * (1.0 + jnp.arange(valid.shape[0], dtype=T.dtype))
        theta, S = jnp.linalg.eigh(T + jnp.diag(jnp.where(valid, 0.0, park)))
        theta, S = theta[::-1][:m1], S[:, ::-1][:, :m1]
        U, HU = (Q @ S).T, (HQ @ S).T
        R = HU - theta[:, None] * U
        seen = jnp.arange(m1) < jnp.sum(valid)
        norm = jnp.maximum(norm, jnp.max(jnp.where(seen, jnp.abs(theta), 0.0)))
        return theta, U, R, seen, norm

    def _gap_bound(self, theta: Array, R: Array, seen: Array, size: Array, floor: Array, alpha):
        r"""The block's gap bound given $\lambda_{s+1}\le$ ``alpha`` (see the class; ``inf``
        where some block value is not above ``alpha`` by more than ``floor``), and the left
        singular vectors of $RD^{-1/2}$ as rows (their norms the singular values, largest
        first)."""
        m1 = self.max_k + 1
        inblock = jnp.arange(m1) < size
        gap = theta - alpha - floor
        fine = jnp.all(jnp.where(inblock, seen & (gap > 0), True))
        w = jnp.where(inblock & (gap > 0), jax.lax.rsqrt(jnp.where(gap > 0, gap, 1.0)), 0.0)
        WR = R * w[:, None]
        G = WR @ WR.T
        ev, Z = jnp.linalg.eigh(G)
        trace = jnp.trace(G)
        # the largest eigenvalue of the small Gram matrix, plus what eigh's rounding can hide
        eps = float(jnp.finfo(G.dtype).eps)
        top = jnp.clip(ev[-1] + 4 * m1 * eps * trace, 0.0, trace)
        dmin = jnp.min(jnp.where(inblock, gap, jnp.inf))
        a = jnp.sqrt(top) + jnp.sqrt(size.astype(G.dtype)) * floor / jnp.sqrt(dmin)
        q = jnp.where(fine, a * a + floor, jnp.inf)
        return q, Z[:, ::-1].T @ WR

    def _block(self, theta: Array, seen: Array, R: Array, norm: Array, cutoff: Array, tol):
        """The block's size (values at or above the cutoff, at least 1, at most ``max_k``), the
        bounds, whether the round certifies (every block bound within ``tol`` or its residual at
        the rounding floor, and the guard multiplied and certified below the cutoff, or the
        block full), and the directions a further round needs (rows; zero rows unneeded)."""
        m = self.max_k
        rows = jnp.arange(m + 1)
        above = seen[:m] & (theta[:m] >= cutoff)
        size = jnp.clip(jnp.sum(jnp.cumprod(above.astype(jnp.int32)), dtype=jnp.int32), 1, m)
        floor = rounding_floor(norm, rounding_dtype(theta.dtype, self.rounding))
        resid = jnp.linalg.norm(R, axis=1)
        bound = resid + floor
        inblock = rows < size
        want = tol * jnp.abs(theta)
        guard = (rows == size) & (size < m) & ~(seen & (theta + bound < cutoff))
        top = theta[size] + resid[size] + floor  # the guard's interval's top
        below = seen[size] & (top < cutoff)  # the guard, certified below the cutoff
        if self.gap:
            # the hypothesis: nothing outside the block above the cutoff, but the eigenvalue
            # in the guard's interval (not for a full block, whose guard lies above the cutoff)
            q = self._gap_bound(theta, R, seen, size, floor, jnp.maximum(cutoff, top))[0]
            bound = jnp.where(inblock & seen[size] & (size < m), jnp.minimum(bound, q), bound)
            # the rounds' directions: those of the bound once the guard is below the cutoff
            q, V = self._gap_bound(theta, R, seen, size, floor, cutoff)
        good = (bound <= want) | (resid <= floor)
        settled = below | (seen[size] & (size == m))
        ok = jnp.all(good | ~inblock) & settled
        # residuals of the block values that miss tol (above twice the floor), and the guard's
        miss = inblock & ~good & (bound > 2.0 * floor)
        need = jnp.where((miss | guard)[:, None], R, 0.0)
        if self.gap:
            # the gap bound is the largest squared singular value of R D^(-1/2): the directions
            # whose squared singular value is above the tightest block tolerance
            smin = jnp.min(jnp.where(inblock, want, jnp.inf))
            big = jnp.sum(V * V, axis=1) > smin
            # while the gap bound is finite its directions replace the block's residuals
            use = jnp.isfinite(q)
            need = jnp.where(
                use, jnp.where(big[:, None], V, 0.0) + jnp.where(guard[:, None], R, 0.0), need
            )
            # (V has rank <= size: its row ``size``, where the guard's residual goes, is zero)
        return size, bound, ok, need

    def update(
        self, matmat: Callable[[Array], Array], state: ClusterState, threshold: Array
    ) -> tuple[ClusterState, ClusterEig]:
        """The certified block at this step: ``matmat(X) = H_t X`` (``X`` is (d, j)),
        ``threshold`` the value whose fraction ``frac`` is the cutoff (e.g. $2/\\eta$)."""
        m, m1, chunk = self.max_k, self.max_k + 1, self.chunk
        big = m1 * self.max_rounds
        dtype = state.vectors.dtype
        cutoff = self.frac * jnp.asarray(threshold, dtype)
        # round 1: the predicted block and its guard
        Q = _orth(self.predict(state).T)
        HQ, used = _products(matmat, Q, jnp.minimum(state.size + 1, m1), chunk)
        valid = jnp.arange(m1) < jnp.minimum(used, m1)
        theta, U, R, seen, norm = self._rr(Q, HQ, valid, state.norm)
        size, bound, ok, need = self._block(theta, seen, R, norm, cutoff, self.tol)
        first = _Round(
            Q, HQ, jnp.minimum(used, m1).astype(jnp.int32), theta, U, R, seen, norm, size, bound,
            ok, jnp.ones((), jnp.int32), used,
        )  # fmt: skip

        def more_rounds() -> _Round:
            # one subspace, grown by the directions still needed each round (no restart: the
            # earlier directions are what makes it converge like a Krylov method); it exists
            # only on the steps that need it
            X = jnp.zeros((Q.shape[0], big), dtype).at[:, :m1].set(Q)
            init = (first._replace(X=X, HX=jnp.zeros_like(X).at[:, :m1].set(HQ)), need)

            def body(carry: tuple[_Round, Array]) -> tuple[_Round, Array]:
                c, need = carry
                keep = jnp.linalg.norm(need, axis=1) > 0
                a = jnp.sum(keep, dtype=jnp.int32)
                order = jnp.argsort(~keep, stable=True)  # the needed rows first
                D = need[order].T  # (d, m1)
                Xa = c.X * (jnp.arange(big) < c.p)[None, :]
                for _ in range(2):
                    D = D - Xa @ (Xa.T @ D)
                Dq, _ = jnp.linalg.qr(D)
                Dq = Dq - Xa @ (Xa.T @ Dq)
                Dq = Dq / jnp.linalg.norm(Dq, axis=0, keepdims=True)
                HD, made = _products(matmat, Dq, a, chunk)
                X = jax.lax.dynamic_update_slice_in_dim(c.X, Dq, c.p, axis=1)
                HX = jax.lax.dynamic_update_slice_in_dim(c.HX, HD, c.p, axis=1)
                p = c.p + a
                theta, U, R, seen, norm = self._rr(X, HX, jnp.arange(big) < p, c.norm)
                # with residual bounds, on to tol / 4 (the next steps start closer); the gap
                # bound's directions are few and the prediction starts the next step
                tol = self.tol if self.gap else _POLISH * self.tol
                size, bound, ok, need = self._block(theta, seen, R, norm, cutoff, tol)
                nxt = _Round(
                    X, HX, p, theta, U, R, seen, norm, size, bound, ok, c.rounds + 1, c.used + made
                )
                return nxt, need

            def more(carry: tuple[_Round, Array]) -> Array:
                c, need = carry
                more = jnp.any(jnp.linalg.norm(need, axis=1) > 0)
                return (~c.ok) & more & (c.rounds < self.max_rounds) & (c.p + m1 <= big)

            res = jax.lax.while_loop(more, body, init)[0]
            return res._replace(X=res.X[:, :m1], HX=res.HX[:, :m1])  # the shapes of ``first``

        out = jax.lax.cond(ok, lambda: first, more_rounds)
        theta, U, R, seen, size = out.theta, out.U, out.R, out.seen, out.size
        # the free power step, Hu / theta, on every vector seen; the others stay as they were
        refine = seen & (theta > 0)
        W = U + R * (refine / jnp.where(refine, theta, 1.0))[:, None]
        W = W / jnp.linalg.norm(W, axis=1, keepdims=True)
        W = jnp.where(seen[:, None], W, state.vectors)
        inblock = jnp.arange(m) < size
        nan = jnp.asarray(jnp.nan, theta.dtype)
        values = jnp.where(inblock, theta[:m], nan)
        bounds = jnp.where(inblock, out.bound[:m], nan)
        past = jnp.concatenate([state.vectors[None], state.past[:3]])
        count = jnp.minimum(state.count + 1, 4)
        return ClusterState(W, size.astype(jnp.int32), out.norm, past, count), ClusterEig(
            values=values,
            error_bound=bounds,
            size=size,
            next_value=jnp.where(seen[size], theta[size], nan),
            matvecs=out.used,
            converged=jnp.all((bounds <= self.tol * jnp.abs(values)) | ~inblock),
        )
