r"""Operators: the curvature of an objective at a point, as a linear operator with tags.

Every curvature solver (Lanczos, LOBPCG, power iteration, the trackers, traces, SLQ, stableness)
takes an `AbstractOperator`. This module is the one place where a Hessian-vector product and the
gradient of a Rayleigh quotient $\nabla_w\,u^\top\nabla^2L(w)\,u = \nabla^3L(w)[u,u]$ are
written: `HessianOperator.linearize` (and the third derivative beside it); every other product
(`mv`, `mm`, a preconditioned one, the every-step tracker's) applies that linearization.

>>> import jax.numpy as jnp
>>> from eoslab import Objective
>>> obj = Objective.from_fn(lambda w: (1 + w[0] ** 2) * w[1] ** 2, jnp.array([2.0, 0.3]))
>>> H = HessianOperator(obj, obj.w0)
>>> [round(float(x), 4) for x in H.mv(jnp.array([0.0, 1.0]))]   # column 2 of the Hessian
[2.4, 10.0]
"""

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..errors import ConfigError
from ..objective import LossLike, ModelLoss, Objective, as_objective
from ..precision import rounding_dtype
from ._checks import check_w, concrete

__all__ = [
    "AbstractOperator",
    "GaussNewtonOperator",
    "HessianOperator",
    "PreconditionedOperator",
    "TAGS",
    "as_operator",
]

#: The tags an operator may declare: ``"symmetric"`` ($A^\top = A$: real eigenvalues, what the
#: eigensolvers need) and ``"positive_semidefinite"`` (e.g. a Gauss-Newton matrix).
TAGS = frozenset({"symmetric", "positive_semidefinite"})

Linearization = tuple[Array, Array, Callable[[Array], Array]]
"""``(value, gradient, matmat)``: $L(w)$, $\\nabla L(w)$ and $X \\mapsto AX$ from one pass."""


class AbstractOperator(eqx.Module):
    r"""A linear operator $A$ on $\mathbb{R}^D$ tied to a point $w$: the curvature there.

    A subclass (final: nothing below it overrides what it implements) declares

    - ``w``: the point, shape ``(D,)`` (a field or a property);
    - ``tags``: a ``ClassVar`` frozenset drawn from `TAGS`; the eigensolvers refuse an operator
      without ``"symmetric"``;

    and implements

    - ``linearize() -> (value, gradient, matmat)``: the loss and its gradient at $w$ and
      ``matmat(X) = A X`` for a block ``X`` of shape ``(D, k)``, all from one linearization, so a
      step that needs the gradient gets the products for the price of their tangents;
    - ``as_matrix()``: the dense $A$ (small problems and tests);
    - ``at(w)``: the same operator at another point;
    - ``grad_quadratic_form(u)``: $(u^\top A u,\ \nabla_w\,u^\top A(w)\,u)$, $u$ fixed;
    - ``step_direction()``: the direction gradient descent steps along (against), whose
      stability $A$ governs;
    - ``check()``: raise `ConfigError` unless the operator is well formed (run before any work).

    The base class gives ``dim``, ``dtype``, ``mm`` and ``mv`` (both from ``linearize``: one
    block, one linearization) and ``quadratic_form``.
    """

    # (no `from __future__ import annotations` here: equinox reads these annotations unquoted)
    w: eqx.AbstractVar[Float[Array, " d"]]
    tags: eqx.AbstractClassVar[frozenset[str]]

    @property
    def dim(self) -> int:
        """$D$."""
        return int(self.w.shape[0])

    @property
    def dtype(self) -> Any:
        return self.w.dtype

    @property
    def rounding_dtype(self) -> Any:
        r"""The precision whose rounding the products carry: the coarser of the point's dtype and
        the objective's ``matmul_dtype`` (bfloat16 for a mixed-precision model), the
        $\epsilon$ of every certified bound (`eoslab.curvature.rounding`)."""
        obj = getattr(self, "objective", None)
        return rounding_dtype(self.dtype, getattr(obj, "matmul_dtype", None))

    @abc.abstractmethod
    def linearize(self) -> Linearization:
        r"""$(L(w), \nabla L(w), X \mapsto AX)$ from one linearization at $w$."""

    @abc.abstractmethod
    def as_matrix(self) -> Float[Array, "d d"]:
        """The dense matrix (small problems and tests only)."""

    @abc.abstractmethod
    def at(self, w: Float[Array, " d"]) -> "AbstractOperator":
        """The same operator at another point."""

    @abc.abstractmethod
    def grad_quadratic_form(self, u: Float[Array, " d"]) -> tuple[Array, Array]:
        r"""$(u^\top A u,\ \nabla_w\, u^\top A(w)\, u)$ with $u$ fixed."""

    @abc.abstractmethod
    def step_direction(self) -> Float[Array, " d"]:
        """The direction a gradient step moves against, whose stability this operator governs."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise `ConfigError` unless the operator is well formed (before any work)."""

    def mm(self, V: Float[Array, "d k"], chunk: int | None = None) -> Float[Array, "d k"]:
        r"""$AV$ for a block of columns, from one linearization.

        ``chunk``: apply the columns ``chunk`` at a time (`jax.lax.map` over the block, still one
        linearization): the same products, with the tangents of ``chunk`` columns held at once
        instead of $k$ (less peak memory, a little more time on a GPU)."""
        if chunk is not None and (
            isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1
        ):
            raise ConfigError("chunk", chunk, "an integer >= 1 (columns applied at once) or None")
        matmat = self.linearize()[2]
        if chunk is None or chunk >= V.shape[1]:
            return matmat(V)
        return jax.lax.map(lambda x: matmat(x[:, None])[:, 0], V.T, batch_size=chunk).T

    def mv(self, v: Float[Array, " d"]) -> Float[Array, " d"]:
        r"""$Av$."""
        return self.mm(v[:, None])[:, 0]

    def quadratic_form(self, u: Float[Array, " d"]) -> Float[Array, ""]:
        r"""$u^\top A u$."""
        return jnp.vdot(u, self.mv(u))


class HessianOperator(AbstractOperator):
    r"""$H = \nabla^2 L(w)$ of ``objective`` at ``w``: products and third derivatives.

    Attributes:
        objective: the loss $L$ (an `eoslab.Objective`: its data are traced, never baked in).
        w: the point, shape ``(D,)``.
    """

    objective: Objective
    w: Float[Array, " d"]
    tags: ClassVar[frozenset[str]] = frozenset({"symmetric"})

    def linearize(self) -> Linearization:
        r"""$(L(w), \nabla L(w), X \mapsto HX)$: ``jax.linearize`` of ``jax.value_and_grad``
        (forward over reverse); the columns of a block are vmapped."""
        (value, grad), jvp = jax.linearize(jax.value_and_grad(self.objective), self.w)

        def matmat(X: Array) -> Array:
            if X.shape[1] == 1:  # vmap's batched matmuls cost ~15% more than one product on CPU
                return jvp(X[:, 0])[1][:, None]
            return jax.vmap(lambda x: jvp(x)[1], in_axes=1, out_axes=1)(X)

        return value, grad, matmat

    def grad_quadratic_form(self, u: Float[Array, " d"]) -> tuple[Array, Array]:
        r"""$(u^\top H u,\ \nabla_w\, u^\top\nabla^2L(w)\,u = \nabla^3L(w)[u,u])$ with $u$ fixed.

        For the unit top eigenvector $v_1$ this is $(\lambda_1, \nabla\lambda_1)$ where
        $\lambda_1$ is simple.
        """

        def rayleigh(x):
            return jnp.vdot(u, jax.jvp(jax.grad(self.objective), (x,), (u,))[1])

        return jax.value_and_grad(rayleigh)(self.w)

    def step_direction(self) -> Float[Array, " d"]:
        r"""$\nabla L(w)$: gradient descent steps along $-\nabla L$, whose stability $H$ governs."""
        return jax.grad(self.objective)(self.w)

    def as_matrix(self) -> Float[Array, "d d"]:
        """The dense matrix (``jax.hessian``; small problems and tests only)."""
        return jax.hessian(self.objective)(self.w)

    def at(self, w: Float[Array, " d"]) -> "HessianOperator":
        """The same objective's Hessian at another point."""
        return HessianOperator(self.objective, w)

    def check(self) -> None:
        """The point must be a finite vector of the objective's dimension."""
        check_w(self.w, self.objective)


class PreconditionedOperator(AbstractOperator):
    r"""$P^{-1/2} H P^{-1/2}$ for a positive diagonal $P$: symmetric, same spectrum as $P^{-1}H$.

    An eigenvector $z$ of this operator gives $P^{-1/2}z$, an eigenvector of $P^{-1}H$.

    Attributes:
        hessian: the `HessianOperator` $H$.
        p: the diagonal of $P$, shape ``(D,)`` (a scalar broadcasts).
    """

    hessian: HessianOperator
    p: Float[Array, " d"] = eqx.field(converter=jnp.asarray)  # an array, so jit traces it
    tags: ClassVar[frozenset[str]] = frozenset({"symmetric"})

    @property
    def w(self) -> Array:
        return self.hessian.w

    @property
    def objective(self) -> Objective:
        return self.hessian.objective

    def _s(self) -> Array:
        return 1.0 / jnp.sqrt(jnp.asarray(self.p, self.dtype))

    def linearize(self) -> Linearization:
        r"""$(L(w), \nabla L(w), X \mapsto P^{-1/2}HP^{-1/2}X)$ from $H$'s linearization."""
        value, grad, hmm = self.hessian.linearize()
        s = (self._s() * jnp.ones(self.dim, self.dtype))[:, None]
        return value, grad, lambda X: s * hmm(s * X)

    def grad_quadratic_form(self, u: Float[Array, " d"]) -> tuple[Array, Array]:
        r"""$(u^\top P^{-1/2}HP^{-1/2}u,\ \nabla_w$ of it$)$ at fixed $P$."""
        return self.hessian.grad_quadratic_form(self._s() * u)

    def step_direction(self) -> Float[Array, " d"]:
        r"""$P^{-1}\nabla L(w)$: the preconditioned step, whose stability this operator governs."""
        return self.hessian.step_direction() / jnp.asarray(self.p, self.dtype)

    def as_matrix(self) -> Float[Array, "d d"]:
        s = self._s() * jnp.ones(self.dim, self.dtype)
        return s[:, None] * self.hessian.as_matrix() * s[None, :]

    def at(self, w: Float[Array, " d"]) -> "PreconditionedOperator":
        """The same objective and preconditioner at another point."""
        return PreconditionedOperator(self.hessian.at(w), self.p)

    def check(self) -> None:
        """$H$'s point, and a positive diagonal of shape ``()`` or ``(D,)``."""
        self.hessian.check()
        p = jnp.asarray(self.p)
        if p.shape not in ((), (self.dim,)):
            raise ConfigError("p.shape", p.shape, f"() or ({self.dim},): the diagonal of P")
        if concrete(p) and not bool(jnp.all(jnp.isfinite(p) & (p > 0))):
            raise ConfigError("p", "<has entries <= 0 or not finite>", "a positive diagonal")


def as_operator(
    loss: LossLike | AbstractOperator,
    w: Array | None = None,
    *,
    tags: frozenset[str] = frozenset(),
) -> AbstractOperator:
    """An operator from an operator, an `Objective` (at ``w``, default its ``w0``) or ``loss(w)``.

    Checks the point (and an operator's own `check`) before any work, and that the operator
    carries ``tags`` (e.g. ``{"symmetric"}`` for an eigensolver): `ConfigError` on bad input.
    """
    if isinstance(loss, AbstractOperator):
        if w is not None:
            raise ConfigError(
                "w",
                _describe(w),
                "no point: an operator already has its point",
                "Pass the arguments after the operator by keyword (e.g. k=2).",
            )
        loss.check()
        _check_tags(loss, tags)
        return loss
    if w is None:
        if not isinstance(loss, Objective):
            raise ConfigError("w", None, "a point (a plain loss(w) has no w0)")
        w = loss.w0
    obj = as_objective(loss, w)
    w = check_w(w, obj)
    return HessianOperator(obj, jnp.asarray(w, obj.dtype))


def _check_tags(op: AbstractOperator, tags: frozenset[str]) -> None:
    declared = frozenset(op.tags)
    if not declared <= TAGS:
        unknown = sorted(declared - TAGS)
        raise ConfigError(f"{type(op).__name__}.tags", unknown, f"tags from {sorted(TAGS)}")
    missing = frozenset(tags) - declared
    if missing:
        raise ConfigError(
            "operator",
            f"{type(op).__name__} (tags {sorted(declared)})",
            f"an operator tagged {sorted(tags)}",
            "The eigensolvers assume a symmetric operator (real eigenvalues, orthogonal "
            "eigenvectors).",
        )


def _describe(x: Any) -> Any:
    return f"<array of shape {jnp.shape(x)}>" if jnp.ndim(x) > 0 else x


# ----------------------------------------------------------------- Gauss-Newton


def _parts(objective: Objective) -> tuple[Callable[[Array], Array], Callable[[Array], Array]]:
    """$f: w \\mapsto$ outputs and $\\ell$: outputs $\\mapsto$ loss, from a model objective."""
    fn, data = objective.fn, objective.data

    def outputs(w: Array) -> Array:
        return fn.apply(eqx.combine(fn.unravel(w), data["frozen"]), data["x"])

    def loss(z: Array) -> Array:
        return fn.loss(z, data["y"])

    return outputs, loss


class GaussNewtonOperator(AbstractOperator):
    r"""$G = J^\top \nabla^2\ell(f(w))\,J$ of a model objective at ``w``.

    For an objective of `eoslab.Objective.from_model`, $L(w) = \ell(f(w))$ with $f(w)$ the model's
    outputs on the training inputs (all of them, flattened: $\mathbb{R}^{M}$, $M = N k$) and $\ell$
    the loss of the outputs against the labels,

    $$\nabla^2 L(w) = J^\top \nabla^2\ell(f)\,J + \sum_m \partial_m\ell(f)\,\nabla^2 f_m(w),$$

    $J = \partial f/\partial w$. The first term is the Gauss-Newton matrix $G$: positive
    semidefinite when $\ell$ is convex in the outputs (MSE, cross-entropy), and equal to the Hessian
    where the residual term vanishes, e.g. MSE at an interpolating minimum ($\partial\ell = 0$) or a
    model linear in $w$ ($\nabla^2 f = 0$). A product $Gv$ is a forward-mode product $Jv$ (one
    linearization of $f$), the loss's output Hessian along it (cheap: $\ell$ acts on the outputs
    alone) and a reverse-mode product $J^\top(\cdot)$: about the cost of one Hessian-vector product.

    Attributes:
        objective: an objective of `eoslab.Objective.from_model` (its ``fn`` a
            `eoslab.objective.ModelLoss`; a mini-batch of one, too).
        w: the point, shape ``(D,)``.

    Tagged ``symmetric`` and ``positive_semidefinite`` (for a loss convex in the outputs, every
    loss of `eoslab.losses`): `eoslab.curvature.top_eigenpairs` and the trackers certify its
    eigenpairs as they do the Hessian's.

    >>> import jax, jax.numpy as jnp
    >>> from eoslab import Objective
    >>> x, y = jnp.eye(2), jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> apply = lambda p, x: x @ p["w"]
    >>> obj = Objective.from_model(apply, {"w": jnp.zeros((2, 2))}, (x, y), "mse_half")
    >>> G = GaussNewtonOperator(obj, obj.w0)
    >>> [round(float(v), 3) for v in G.mv(jnp.ones(4))]      # linear model: G = H = I/2
    [0.5, 0.5, 0.5, 0.5]
    """

    objective: Objective
    w: Float[Array, " d"]
    tags: ClassVar[frozenset[str]] = frozenset({"symmetric", "positive_semidefinite"})

    def linearize(self) -> Linearization:
        r"""$(L(w), \nabla L(w), X\mapsto GX)$: one linearization of $f$ (its transpose gives
        $J^\top$) and one of $\nabla\ell$ at the outputs; columns of a block are vmapped."""
        f, ell = _parts(self.objective)
        z, jvp = jax.linearize(f, self.w)
        vjp = jax.linear_transpose(jvp, self.w)
        (value, gz), hz = jax.linearize(jax.value_and_grad(ell), z)
        grad = vjp(gz)[0]

        def one(v: Array) -> Array:
            return vjp(hz(jvp(v))[1])[0]

        def matmat(X: Array) -> Array:
            if X.shape[1] == 1:
                return one(X[:, 0])[:, None]
            return jax.vmap(one, in_axes=1, out_axes=1)(X)

        return value, grad, matmat

    def grad_quadratic_form(self, u: Float[Array, " d"]) -> tuple[Array, Array]:
        r"""$(u^\top G u,\ \nabla_w\,u^\top G(w)\,u)$ with $u$ fixed:
        $u^\top G u = (Ju)^\top\nabla^2\ell(f)(Ju)$, differentiated through $f$ and $J$."""
        f, ell = _parts(self.objective)

        def form(x: Array) -> Array:
            z, ju = jax.jvp(f, (x,), (u,))
            return jnp.vdot(ju, jax.jvp(jax.grad(ell), (z,), (ju,))[1])

        return jax.value_and_grad(form)(self.w)

    def step_direction(self) -> Float[Array, " d"]:
        r"""$\nabla L(w)$: gradient descent steps along $-\nabla L$ (G stands in for its $H$)."""
        return jax.grad(self.objective)(self.w)

    def as_matrix(self) -> Float[Array, "d d"]:
        r"""The dense $J^\top\nabla^2\ell\,J$ (``jacfwd`` and ``hessian``; small problems only)."""
        f, ell = _parts(self.objective)
        z = f(self.w)
        J = jax.jacfwd(f)(self.w).reshape(z.size, self.dim)
        Hl = jax.hessian(ell)(z).reshape(z.size, z.size)
        return J.T @ Hl @ J

    def at(self, w: Float[Array, " d"]) -> "GaussNewtonOperator":
        """The same objective's Gauss-Newton matrix at another point."""
        return GaussNewtonOperator(self.objective, w)

    def check(self) -> None:
        """A model objective (``Objective.from_model``) and a finite point of its dimension."""
        fn = self.objective.fn if isinstance(self.objective, Objective) else None
        if not isinstance(fn, ModelLoss):
            raise ConfigError(
                "objective",
                type(fn).__name__ if fn is not None else type(self.objective).__name__,
                "an objective of Objective.from_model (a model's loss of its outputs)",
                "Gauss-Newton needs the model's outputs; for a sqrt objective pass .base().",
            )
        check_w(self.w, self.objective)
