"""`EigenTracker`: top eigenpairs along a trajectory, warm-started from the previous point."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..errors import ConfigError, check_positive
from ..objective import LossLike
from .eigen import AbstractEigenSolver, EigResult, Lanczos, top_eigenpairs
from .operator import AbstractOperator, as_operator

__all__ = ["EigenTracker", "align_vectors"]


def align_vectors(
    new: Float[Array, "d k"], old: Float[Array, "d k"], values: Float[Array, " k"], rtol: float
) -> Float[Array, "d k"]:
    r"""Rotate/flip ``new`` eigenvectors to follow ``old`` ones from step to step.

    Within a cluster of eigenvalues closer than ``rtol`` (relative), the basis is only defined up
    to rotation: the columns are replaced by the orthogonal Procrustes fit $U = N Q$,
    $Q = \arg\min_{Q^\top Q = I}\|NQ - O\|$. Elsewhere each column's sign makes
    $\langle v_{new}, v_{old}\rangle \ge 0$.
    """
    new = np.asarray(new)
    old = np.asarray(old)
    vals = np.asarray(values)
    k = min(new.shape[1], old.shape[1])
    out = new.copy()
    i = 0
    while i < k:
        j = i + 1
        scale = max(abs(vals[i]), 1e-30)
        while j < k and abs(vals[j - 1] - vals[j]) <= rtol * scale:
            j += 1
        N, P = new[:, i:j], old[:, i:j]
        M = N.T @ P
        U, _, Vt = np.linalg.svd(M)
        out[:, i:j] = N @ (U @ Vt)
        i = j
    return jnp.asarray(out)


class EigenTracker:
    r"""Tracks the top-$k$ eigenpairs of $\nabla^2 L(w_t)$ (or of operators $H_t$) as $t$ moves.

    The solver that carries state: each ``update`` is one `top_eigenpairs` call with ``solver``
    (`Lanczos` by default), warm-started from the last, and returns its `EigResult`.
    ``update(w)`` solves at the point ``w`` of ``loss`` (an operator's ``at(w)`` if ``loss`` is
    one); ``update(op)`` solves for the operator ``op`` itself, e.g. a
    `PreconditionedOperator` whose preconditioner changes from step to step (no ``loss`` needed).
    `state` and `load_state` carry the warm start through a checkpoint.

    Each `update` warm-starts block Lanczos from the previous eigenvectors and the guard Ritz vector
    below them, extrapolated linearly from the two previous updates ($2v_t - v_{t-1}$; the start
    only affects speed, never the certificate), so a slowly moving trajectory costs a few HVPs per
    update; eigenvectors keep their signs (and clustered subspaces their
    orientation) from one update to the next. With ``grow_above``, $k$ grows by one whenever the
    next Ritz value (a certified lower bound on $\lambda_{k+1}$) exceeds that threshold
    (e.g. $1.5/\eta$), up to ``max_k``.

    >>> import jax.numpy as jnp
    >>> tr = EigenTracker(lambda w: jnp.sum(jnp.cos(w)) + 2.0 * w @ w, k=1, tol=1e-5)
    >>> round(float(tr.update(jnp.zeros(4)).values[0]), 4)
    3.0
    """

    def __init__(
        self,
        loss: LossLike | AbstractOperator | None = None,
        k: int = 1,
        tol: float = 1e-3,
        *,
        grow_above: float | None = None,
        max_k: int = 20,
        solver: AbstractEigenSolver | None = None,
        align_rtol: float = 1e-3,
        max_matvecs: int | None = None,
        seed: int = 0,
    ) -> None:
        if loss is not None and not (callable(loss) or isinstance(loss, AbstractOperator)):
            raise ConfigError("loss", loss, "None, an operator, an Objective or a callable loss(w)")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError("k", k, "an integer >= 1")
        check_positive("tol", tol)
        solver = Lanczos() if solver is None else solver
        if not isinstance(solver, AbstractEigenSolver):
            raise ConfigError("solver", solver, "an eigensolver: Lanczos(), LOBPCG() or Power()")
        if grow_above is not None:
            check_positive("grow_above", grow_above)
        if not isinstance(max_k, int) or max_k < k:
            raise ConfigError("max_k", max_k, f"an integer >= k (= {k})")
        self.loss = loss
        self.k = k
        self.tol = tol
        self.grow_above = grow_above
        self.max_k = max_k
        self.solver = solver
        self.align_rtol = align_rtol
        self.max_matvecs = max_matvecs
        self._key = jax.random.PRNGKey(seed)
        self.vectors: Array | None = None
        self.previous: Array | None = None  # the update before, signs aligned with `vectors`
        self.last: EigResult | None = None
        self.total_matvecs = 0
        self.updates = 0

    def _operator(self, point: Array | AbstractOperator) -> AbstractOperator:
        # top_eigenpairs checks the operator before any work.
        if isinstance(point, AbstractOperator):
            return point
        if self.loss is None:
            raise ConfigError(
                "point",
                "<a point>",
                "an operator (this tracker has no loss: EigenTracker(loss) takes points)",
            )
        if isinstance(self.loss, AbstractOperator):
            return self.loss.at(jnp.asarray(point, self.loss.dtype))
        return as_operator(self.loss, point)

    def _solve(self, op: AbstractOperator, k: int) -> EigResult:
        self._key, sub = jax.random.split(self._key)
        v0 = self.vectors
        if v0 is not None and self.previous is not None and self.previous.shape == v0.shape:
            v0 = 2.0 * v0 - self.previous
        if v0 is not None and v0.shape[1] > k + 1:
            v0 = v0[:, : k + 1]
        return top_eigenpairs(
            op,
            k=k,
            v0=v0,
            tol=self.tol,
            solver=self.solver,
            max_matvecs=self.max_matvecs,
            key=sub,
        )

    def state(self) -> dict[str, np.ndarray]:
        """The warm-start state as plain arrays (for checkpoints without pickle)."""
        key = self._key
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        out = {"key": np.asarray(key), "k": np.asarray(self.k)}
        if self.vectors is not None:
            out["vectors"] = np.asarray(self.vectors)
        if self.previous is not None:
            out["previous"] = np.asarray(self.previous)
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what `state` returned: the next `update` continues bit for bit."""
        self._key = jnp.asarray(state["key"])
        self.k = int(state["k"])
        self.vectors = jnp.asarray(state["vectors"]) if "vectors" in state else None
        self.previous = jnp.asarray(state["previous"]) if "previous" in state else None

    @staticmethod
    def _with_guard(res: EigResult) -> Array:
        # Warm starts include the guard Ritz vector, so its eigenvalue (the gap) resolves quickly.
        if bool(jnp.any(res.next_vector != 0)):
            return jnp.concatenate([res.vectors, res.next_vector[:, None]], axis=1)
        return res.vectors

    def update(self, point: Float[Array, " d"] | AbstractOperator) -> EigResult:
        """Eigenpairs at the point ``w`` of ``loss``, or of an operator; warm-started."""
        op = self._operator(point)
        dim = op.dim
        k = min(self.k, dim)
        res = self._solve(op, k)
        spent = int(res.matvecs)
        while (
            self.grow_above is not None
            and self.k < min(self.max_k, dim)
            and bool(jnp.isfinite(res.next_value))
            and float(res.next_value) > self.grow_above
        ):
            self.k += 1
            self.vectors, self.previous = self._with_guard(res), None
            res = self._solve(op, self.k)
            spent += int(res.matvecs)
        if self.vectors is not None:
            vecs = align_vectors(
                res.vectors, self.vectors[:, : res.vectors.shape[1]], res.values, self.align_rtol
            )
            res = eqx.tree_at(lambda r: (r.vectors, r.matvecs), res, (vecs, jnp.asarray(spent)))
        new = self._with_guard(res)
        if self.vectors is not None and self.vectors.shape == new.shape:
            # the guard keeps the sign of the previous one, so the extrapolation is consistent
            flip = jnp.sign(jnp.sum(new[:, -1] * self.vectors[:, -1]))
            new = new.at[:, -1].multiply(jnp.where(flip == 0, 1.0, flip))
            self.previous = self.vectors
        else:
            self.previous = None
        self.vectors = new
        self.last = res
        self.total_matvecs += spent
        self.updates += 1
        return res
