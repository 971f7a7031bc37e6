"""Top and bottom eigenpairs of a symmetric operator: one entry point (`top_eigenpairs`, and
`bottom_eigenpairs` on $-H$), solvers as Modules (`Lanczos`, the default; `LOBPCG`; `Power`, a
baseline), one result type (`EigResult`, with certified bounds)."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..errors import ConfigError, check_positive
from ..objective import LossLike
from ._checks import check_k
from .lanczos import default_m_max, lanczos_top, ritz_vectors
from .operator import AbstractOperator, as_operator
from .rounding import check_tol, default_tol, rounding_floor

__all__ = [
    "AbstractEigenSolver",
    "EigResult",
    "LOBPCG",
    "Lanczos",
    "Power",
    "bottom_eigenpairs",
    "top_eigenpairs",
]


class EigResult(eqx.Module):
    r"""Eigenpairs of an operator $H$ (e.g. $\nabla^2 L(w)$), largest first, with certificates.

    Attributes:
        values: $\lambda_1 \ge \dots \ge \lambda_k$, shape ``(k,)``.
        vectors: unit eigenvectors as columns, shape ``(D, k)``.
        residuals: $\|H v_i - \lambda_i v_i\|$, shape ``(k,)``.
        error_bound: certified bound: some eigenvalue of $H$ lies within it of ``values[i]``
            (the residual plus what rounding in the working precision can hide, see
            `eoslab.curvature.rounding`).
        matvecs: Hessian-vector products spent.
        converged: whether every bound met the tolerance (False when the budget ran out, or when
            rounding keeps a bound above ``tol * |value|``).
        next_value: the $(k{+}1)$-th Ritz value (a lower bound on $\lambda_{k+1}$; NaN if none).
        next_vector: its Ritz vector (the guard a warm start should include; zeros if none).
        operator_norm: $\|H\|$ as estimated by the largest $|\theta|$ the solver saw (the scale
            of the rounding term in ``error_bound``).
    """

    values: Float[Array, " k"]
    vectors: Float[Array, "d k"]
    residuals: Float[Array, " k"]
    error_bound: Float[Array, " k"]
    matvecs: Int[Array, ""]
    converged: Array
    next_value: Float[Array, ""]
    next_vector: Float[Array, " d"]
    operator_norm: Float[Array, ""]

    @property
    def relative_error_bound(self) -> Array:
        return self.error_bound / jnp.abs(self.values)


def _initial_vector(v0, d, dtype, key) -> Array:
    if v0 is None:
        return jax.random.normal(key, (d,), dtype)
    # A block warm start stays a block: Lanczos's Ritz space holds every column after as many
    # products as there are columns, so close eigenvalues separate at once.
    return jnp.asarray(v0, dtype)


def _check_v0(v0, d: int, k: int) -> None:
    if v0 is None:
        return
    shape = jnp.shape(v0)
    if shape != (d,) and not (len(shape) == 2 and shape[0] == d and shape[1] >= 1):
        raise ConfigError("v0.shape", shape, f"({d},) or ({d}, j): a vector or a block of columns")
    arr = jnp.asarray(v0)
    if not bool(jnp.all(jnp.isfinite(arr))):
        raise ConfigError("v0", "<contains NaN or inf>", "finite values only")
    norms = jnp.linalg.norm(arr.reshape(d, -1), axis=0)
    if bool(jnp.any(norms == 0)):
        raise ConfigError("v0", "<a zero vector>", "non-zero start vectors")


@eqx.filter_jit
def _lanczos_jit(op, v0, key, sign, tol, *, k, m_max, max_matvecs, keep):
    mv = lambda x: sign * op.mv(x)
    st = lanczos_top(
        mv,
        v0,
        k,
        tol=tol,
        m_max=m_max,
        max_matvecs=max_matvecs,
        key=key,
        restart_keep=keep,
        rounding=op.rounding_dtype,
    )
    kk = min(k + 1, m_max)
    vecs = ritz_vectors(st, kk)
    vecs = vecs / jnp.linalg.norm(vecs, axis=0, keepdims=True)
    has_next = (st.j > k) & (kk > k)
    nxt = jnp.where(has_next, st.theta[kk - 1], jnp.nan)
    nxt_vec = jnp.where(has_next, vecs[:, kk - 1], 0.0)
    vecs = vecs[:, :k]
    return EigResult(
        values=sign * st.theta[:k],
        vectors=vecs,
        residuals=st.res[:k],
        error_bound=st.bound[:k],
        matvecs=st.matvecs,
        converged=jnp.all(st.bound[:k] <= tol * jnp.abs(st.theta[:k])),
        next_value=sign * nxt,
        next_vector=nxt_vec,
        operator_norm=st.norm,
    )


def _certify_block(op, X, sign, tol, extra_mv):
    """Rayleigh-Ritz on a block X, then explicit residuals (one HVP per column).

    The bound is the residual plus the rounding floor: some eigenvalue lies within it of
    $\theta_i$ ($\\|H\\|$ is estimated by the block's largest $|\theta|$).
    """
    HX = sign * op.mm(X)
    theta, Q = jnp.linalg.eigh(X.T @ HX)
    order = jnp.argsort(-theta)
    theta, Q = theta[order], Q[:, order]
    X, HX = X @ Q, HX @ Q
    res = jnp.linalg.norm(HX - X * theta[None, :], axis=0)
    k = X.shape[1]
    norm = jnp.max(jnp.abs(theta))
    bound = res + rounding_floor(norm, op.rounding_dtype)
    ok = bound <= tol * jnp.abs(theta)
    return EigResult(
        values=sign * theta,
        vectors=X,
        residuals=res,
        error_bound=bound,
        matvecs=jnp.asarray(extra_mv + k),
        converged=jnp.all(ok),
        next_value=jnp.asarray(jnp.nan, X.dtype),
        next_vector=jnp.zeros((X.shape[0],), X.dtype),
        operator_norm=norm,
    )


@eqx.filter_jit
def _lobpcg_jit(op, X0, sign, *, tol, max_iters):
    from jax.experimental.sparse.linalg import lobpcg_standard

    d, k = X0.shape
    A = lambda X: sign * op.mm(X)
    # lobpcg_standard stops at r < tol' * 10 d (|theta| + |Av|) ~ 20 d tol' |theta|.
    _, X, iters = lobpcg_standard(A, X0, m=max_iters, tol=tol / (20.0 * d))
    return _certify_block(op, X, sign, tol, k + 4 * k * iters)


@eqx.filter_jit
def _power_jit(op, X0, sign, *, tol, max_iters):
    # Subspace (block power) iteration with the classic stopping rule on successive estimates.
    # It finds the eigenvalues largest in *magnitude*: a baseline, not a correct top-k solver.
    A = lambda X: sign * op.mm(X)
    k = X0.shape[1]

    def cond(s):
        i, _, theta, prev = s
        return (i < max_iters) & ((i < 2) | jnp.any(jnp.abs(theta - prev) > tol * jnp.abs(theta)))

    def body(s):
        i, X, theta, _ = s
        Y = A(X)
        th = jnp.sum(X * Y, axis=0)
        Xn, _ = jnp.linalg.qr(Y)
        return i + 1, Xn, th, theta

    X, _ = jnp.linalg.qr(X0)
    init = (jnp.array(0), X, jnp.zeros((k,), X.dtype), jnp.zeros((k,), X.dtype))
    i, X, _, _ = jax.lax.while_loop(cond, body, init)
    return _certify_block(op, X, sign, tol, k * i)


def _block_start(v0, d, k, dtype, key) -> Array:
    """A random ``(D, k)`` block whose first columns are the warm start's."""
    X0 = jax.random.normal(key, (d, k), dtype)
    if v0 is not None:
        v0 = jnp.asarray(v0, dtype).reshape(d, -1)
        j = min(k, v0.shape[1])
        X0 = X0.at[:, :j].set(v0[:, :j])
    return X0


class AbstractEigenSolver(eqx.Module):
    r"""How `top_eigenpairs` and `bottom_eigenpairs` find eigenpairs of a symmetric operator.

    A subclass (final) implements ``check(k, dim)``, which raises `ConfigError` for what it
    cannot solve (before any work), and ``solve(op, k, *, v0, tol, max_matvecs, key, sign)``,
    which returns the top ``k`` eigenpairs of ``sign * op`` as an `EigResult` with values
    multiplied back by ``sign``; ``v0`` is a warm start (a vector, a block of columns, or None)
    and ``max_matvecs`` the budget of products (None: the solver's default).
    """

    @abc.abstractmethod
    def check(self, k: int, dim: int) -> None:
        """Raise `ConfigError` unless this solver can find ``k`` pairs of a ``dim``-dim operator."""

    @abc.abstractmethod
    def solve(
        self,
        op: AbstractOperator,
        k: int,
        *,
        v0: Array | None,
        tol: float,
        max_matvecs: int | None,
        key: Array,
        sign: Array,
    ) -> EigResult:
        """The top ``k`` eigenpairs of ``sign * op`` (values multiplied back by ``sign``)."""


class Lanczos(AbstractEigenSolver):
    r"""Thick-restart Lanczos with full reorthogonalization (`eoslab.curvature.lanczos`).

    Residuals come from the projected matrix, with no extra product. Single-vector Lanczos cannot
    separate an eigenvalue of multiplicity > 1 (it returns one copy, then the next distinct value);
    use `LOBPCG` when exact multiplicities matter. Default budget: ``max(1000, 2 D)`` products.

    Attributes:
        basis_size: basis vectors before a thick restart (None: ``max(3k + 20, 40)``, at most D).
    """

    basis_size: int | None = None

    def __check_init__(self) -> None:
        if self.basis_size is not None and (
            isinstance(self.basis_size, bool)
            or not isinstance(self.basis_size, int)
            or self.basis_size < 2
        ):
            raise ConfigError("basis_size", self.basis_size, "None or an integer >= 2")

    def check(self, k: int, dim: int) -> None:
        m = self._basis(k, dim)
        if m <= k and m < dim:
            raise ConfigError("basis_size", self.basis_size, f"an integer > k (= {k}), or None")

    def _basis(self, k: int, d: int) -> int:
        return default_m_max(k, d) if self.basis_size is None else min(self.basis_size, d)

    def solve(self, op, k, *, v0, tol, max_matvecs, key, sign) -> EigResult:
        d, dtype = op.dim, op.dtype
        m_max = self._basis(k, d)
        budget = max_matvecs if max_matvecs is not None else max(1000, 2 * d)
        keep = int(min(m_max - 1, max(k + 5, 2 * k)))
        start = _initial_vector(v0, d, dtype, key)
        return _lanczos_jit(
            op,
            start,
            key,
            sign,
            jnp.asarray(tol, dtype),
            k=k,
            m_max=m_max,
            max_matvecs=int(budget),
            keep=keep,
        )


class LOBPCG(AbstractEigenSolver):
    """LOBPCG (``jax.experimental.sparse.linalg.lobpcg_standard``), then Rayleigh-Ritz with
    explicit residuals; resolves repeated eigenvalues. Needs $k < D/5$. Default budget:
    ``1000 k`` products."""

    def check(self, k: int, dim: int) -> None:
        if 5 * k >= dim:
            raise ConfigError(
                "k",
                k,
                f"k < D/5 (= {dim / 5:g}) for LOBPCG",
                "Use Lanczos() for small problems.",
            )

    def solve(self, op, k, *, v0, tol, max_matvecs, key, sign) -> EigResult:
        X0 = _block_start(v0, op.dim, k, op.dtype, key)
        budget = max_matvecs if max_matvecs is not None else 1000 * k
        iters = max(1, (budget - 2 * k) // (4 * k))
        return _lobpcg_jit(op, X0, sign, tol=float(tol), max_iters=int(iters))


class Power(AbstractEigenSolver):
    """Block power (subspace) iteration with the classic stopping rule on successive estimates:
    a baseline that finds the eigenvalues largest in *magnitude*, not a correct top-k solver.
    Default budget: ``1000 k`` products."""

    def check(self, k: int, dim: int) -> None:
        del k, dim

    def solve(self, op, k, *, v0, tol, max_matvecs, key, sign) -> EigResult:
        X0 = _block_start(v0, op.dim, k, op.dtype, key)
        budget = max_matvecs if max_matvecs is not None else 1000 * k
        iters = max(1, (budget - k) // k)
        return _power_jit(op, X0, sign, tol=float(tol), max_iters=int(iters))


def _solve(loss, w, k, v0, tol, solver, max_matvecs, key, sign) -> EigResult:
    op = as_operator(loss, w, tags=frozenset({"symmetric"}))
    d = op.dim
    k = check_k(k, d)
    solver = Lanczos() if solver is None else solver
    if not isinstance(solver, AbstractEigenSolver):
        raise ConfigError("solver", solver, "an eigensolver: Lanczos(), LOBPCG() or Power()")
    if tol is None:
        tol = default_tol(op.rounding_dtype)
    check_positive("tol", tol)
    check_tol(tol, op.rounding_dtype)
    if max_matvecs is not None and (not isinstance(max_matvecs, int) or max_matvecs < k):
        raise ConfigError("max_matvecs", max_matvecs, f"None or an integer >= k (= {k})")
    _check_v0(v0, d, k)
    solver.check(k, d)
    key = jax.random.PRNGKey(0) if key is None else key
    sign = jnp.asarray(sign, op.dtype)  # traced: top and bottom pairs share compiled code
    return solver.solve(op, k, v0=v0, tol=tol, max_matvecs=max_matvecs, key=key, sign=sign)


def top_eigenpairs(
    loss: LossLike | AbstractOperator,
    w: Float[Array, " d"] | None = None,
    k: int = 1,
    *,
    v0: Float[Array, " d"] | Float[Array, "d j"] | None = None,
    tol: float | None = None,
    solver: AbstractEigenSolver | None = None,
    max_matvecs: int | None = None,
    key: Array | None = None,
) -> EigResult:
    r"""The $k$ largest (algebraic) eigenpairs of $H = \nabla^2 L(w)$, with certificates.

    Stops when each value's ``error_bound`` $\le$ ``tol`` $\cdot|\lambda_i|$, when its residual
    reaches the rounding level of the dtype, or when ``max_matvecs`` HVPs are spent; ``converged``
    says whether every bound met ``tol``. A bound is certified in the working precision: some
    eigenvalue of $H$ lies within it (the residual plus `eoslab.curvature.rounding`'s floor
    $c\,\epsilon\,\|H\|$). That it is the $i$-th largest assumes, as every Krylov method does,
    that the Krylov space has not missed an eigenvalue above it.

    Args:
        loss: a symmetric operator ($H$ itself, e.g. a `PreconditionedOperator`; any
            `AbstractOperator` tagged ``"symmetric"``), an `Objective` or a callable ``loss(w)``.
        w: the point, shape ``(D,)``; omitted for an operator, an `Objective`'s ``w0`` if omitted.
        k: how many eigenpairs, ``1 <= k <= D``.
        v0: warm start: a vector or a block of columns (e.g. the previous eigenvectors).
        tol: relative tolerance on the certified error of each eigenvalue; at least
            `eoslab.curvature.rounding.min_tol` of the dtype (1.9e-6 for float32, 3.6e-15 for
            float64), else `ConfigError`. Default: 1e-6 (float64), 1e-5 (float32).
        solver: `Lanczos` (thick-restart, full reorthogonalization; None means ``Lanczos()``),
            `LOBPCG` (resolves repeated eigenvalues) or `Power` (block power iteration: a
            baseline that finds the largest *magnitudes*).
        max_matvecs: budget of Hessian-vector products (None: the solver's default).
        key: PRNG key for the random start and breakdown restarts.

    Note:
        Single-vector Lanczos cannot separate an eigenvalue of multiplicity > 1 (it returns one
        copy, then the next distinct value); use ``solver=LOBPCG()`` when exact multiplicities
        matter.

    >>> import jax.numpy as jnp
    >>> r = top_eigenpairs(lambda w: 0.5 * w @ jnp.diag(jnp.array([3.0, 1.0, -5.0])) @ w,
    ...                    jnp.zeros(3))
    >>> round(float(r.values[0]), 4)
    3.0
    """
    return _solve(loss, w, k, v0, tol, solver, max_matvecs, key, 1.0)


def bottom_eigenpairs(
    loss: LossLike | AbstractOperator,
    w: Float[Array, " d"] | None = None,
    k: int = 1,
    *,
    v0: Float[Array, " d"] | Float[Array, "d j"] | None = None,
    tol: float | None = None,
    solver: AbstractEigenSolver | None = None,
    max_matvecs: int | None = None,
    key: Array | None = None,
) -> EigResult:
    r"""The $k$ smallest (most negative) eigenpairs of $H$ (e.g. $\nabla^2 L(w)$), smallest first.

    Same arguments and certificates as `top_eigenpairs` (it runs on $-H$).
    """
    return _solve(loss, w, k, v0, tol, solver, max_matvecs, key, -1.0)
