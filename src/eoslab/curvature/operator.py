r"""The Hessian of an objective at a point, as a symmetric linear operator.

Every curvature solver (Lanczos, LOBPCG, power iteration, the tracker, traces, SLQ, stableness)
takes an operator. This module is the one place where a Hessian-vector product and the gradient of
a Rayleigh quotient $\nabla_w\,u^\top\nabla^2L(w)\,u = \nabla^3L(w)[u,u]$ are written.

>>> import jax.numpy as jnp
>>> from eoslab import Objective
>>> obj = Objective.from_fn(lambda w: (1 + w[0] ** 2) * w[1] ** 2, jnp.array([2.0, 0.3]))
>>> H = HessianOperator(obj, obj.w0)
>>> [round(float(x), 4) for x in H.mv(jnp.array([0.0, 1.0]))]   # column 2 of the Hessian
[2.4, 10.0]
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..errors import ConfigError
from ..objective import LossLike, Objective, as_objective
from ._checks import check_w, concrete

__all__ = [
    "HessianOperator",
    "PreconditionedOperator",
    "Operator",
    "as_operator",
]


class HessianOperator(eqx.Module):
    r"""$H = \nabla^2 L(w)$ of ``objective`` at ``w``: ``mv``, ``mm`` and third derivatives.

    Attributes:
        objective: the loss $L$ (an `eoslab.Objective`: its data are traced, never baked in).
        w: the point, shape ``(D,)``.
    """

    objective: Objective
    w: Float[Array, " d"]
    symmetric: ClassVar[bool] = True

    @property
    def dim(self) -> int:
        return int(self.w.shape[0])

    @property
    def dtype(self) -> Any:
        return self.w.dtype

    def gradient(self) -> Float[Array, " d"]:
        r"""$\nabla L(w)$."""
        return jax.grad(self.objective)(self.w)

    def step_direction(self) -> Float[Array, " d"]:
        r"""$\nabla L(w)$: gradient descent steps along $-\nabla L$, whose stability $H$ governs."""
        return self.gradient()

    def mv(self, v: Float[Array, " d"]) -> Float[Array, " d"]:
        r"""$Hv$ by forward-over-reverse (``jax.jvp`` of ``jax.grad``)."""
        return jax.jvp(jax.grad(self.objective), (self.w,), (v,))[1]

    def gradient_and_mv(self, v: Float[Array, " d"]) -> tuple[Array, Array]:
        r"""$(\nabla L(w), Hv)$ from one forward-over-reverse pass."""
        return jax.jvp(jax.grad(self.objective), (self.w,), (v,))

    def mm(self, V: Float[Array, "d k"]) -> Float[Array, "d k"]:
        r"""$HV$ for a block of columns: $\nabla L$ is linearized once and the columns vmapped."""
        _, lin = jax.linearize(jax.grad(self.objective), self.w)
        return jax.vmap(lin, in_axes=1, out_axes=1)(V)

    def quadratic_form(self, u: Float[Array, " d"]) -> Float[Array, ""]:
        r"""$u^\top H u$."""
        return jnp.vdot(u, self.mv(u))

    def grad_quadratic_form(self, u: Float[Array, " d"]) -> tuple[Array, Array]:
        r"""$(u^\top H u,\ \nabla_w\, u^\top\nabla^2L(w)\,u = \nabla^3L(w)[u,u])$ with $u$ fixed.

        For the unit top eigenvector $v_1$ this is $(\lambda_1, \nabla\lambda_1)$ where
        $\lambda_1$ is simple.
        """

        def rayleigh(x):
            return jnp.vdot(u, jax.jvp(jax.grad(self.objective), (x,), (u,))[1])

        return jax.value_and_grad(rayleigh)(self.w)

    def as_matrix(self) -> Float[Array, "d d"]:
        """The dense matrix (``jax.hessian``; small problems and tests only)."""
        return jax.hessian(self.objective)(self.w)

    def at(self, w: Float[Array, " d"]) -> HessianOperator:
        """The same objective's Hessian at another point."""
        return HessianOperator(self.objective, w)


class PreconditionedOperator(eqx.Module):
    r"""$P^{-1/2} H P^{-1/2}$ for a positive diagonal $P$: symmetric, same spectrum as $P^{-1}H$.

    An eigenvector $z$ of this operator gives $P^{-1/2}z$, an eigenvector of $P^{-1}H$.

    Attributes:
        hessian: the `HessianOperator` $H$.
        p: the diagonal of $P$, shape ``(D,)`` (a scalar broadcasts).
    """

    hessian: HessianOperator
    p: Float[Array, " d"] = eqx.field(converter=jnp.asarray)  # an array, so jit traces it
    symmetric: ClassVar[bool] = True

    @property
    def dim(self) -> int:
        return self.hessian.dim

    @property
    def dtype(self) -> Any:
        return self.hessian.dtype

    @property
    def w(self) -> Array:
        return self.hessian.w

    @property
    def objective(self) -> Objective:
        return self.hessian.objective

    def _s(self) -> Array:
        return 1.0 / jnp.sqrt(jnp.asarray(self.p, self.dtype))

    def step_direction(self) -> Float[Array, " d"]:
        r"""$P^{-1}\nabla L(w)$: the preconditioned step, whose stability this operator governs."""
        return self.hessian.gradient() / jnp.asarray(self.p, self.dtype)

    def mv(self, v: Float[Array, " d"]) -> Float[Array, " d"]:
        s = self._s()
        return s * self.hessian.mv(s * v)

    def mm(self, V: Float[Array, "d k"]) -> Float[Array, "d k"]:
        s = (self._s() * jnp.ones(self.dim, self.dtype))[:, None]
        return s * self.hessian.mm(s * V)

    def quadratic_form(self, u: Float[Array, " d"]) -> Float[Array, ""]:
        return jnp.vdot(u, self.mv(u))

    def grad_quadratic_form(self, u: Float[Array, " d"]) -> tuple[Array, Array]:
        r"""$(u^\top P^{-1/2}HP^{-1/2}u,\ \nabla_w$ of it$)$ at fixed $P$."""
        return self.hessian.grad_quadratic_form(self._s() * u)

    def as_matrix(self) -> Float[Array, "d d"]:
        s = self._s() * jnp.ones(self.dim, self.dtype)
        return s[:, None] * self.hessian.as_matrix() * s[None, :]

    def at(self, w: Float[Array, " d"]) -> PreconditionedOperator:
        """The same objective and preconditioner at another point."""
        return PreconditionedOperator(self.hessian.at(w), self.p)


Operator = HessianOperator | PreconditionedOperator


def as_operator(loss: LossLike | Operator, w: Array | None = None) -> Operator:
    """An operator from an operator, an `Objective` (at ``w``, default its ``w0``) or ``loss(w)``.

    Checks the point (and a preconditioner) before any work: `ConfigError` on bad input.
    """
    if isinstance(loss, (HessianOperator, PreconditionedOperator)):
        if w is not None:
            raise ConfigError(
                "w",
                _describe(w),
                "no point: an operator already has its point",
                "Pass the arguments after the operator by keyword (e.g. k=2).",
            )
        _check_operator(loss)
        return loss
    if w is None:
        if not isinstance(loss, Objective):
            raise ConfigError("w", None, "a point (a plain loss(w) has no w0)")
        w = loss.w0
    obj = as_objective(loss, w)
    w = check_w(w, obj)
    return HessianOperator(obj, jnp.asarray(w, obj.dtype))


def _check_operator(op: Operator) -> None:
    """Raise `ConfigError` unless the point is a finite vector of the objective's dimension and a
    preconditioner's diagonal is positive, of shape ``()`` or ``(D,)``."""
    check_w(op.w, op.objective)
    if isinstance(op, PreconditionedOperator):
        p = jnp.asarray(op.p)
        if p.shape not in ((), (op.dim,)):
            raise ConfigError("p.shape", p.shape, f"() or ({op.dim},): the diagonal of P")
        if concrete(p) and not bool(jnp.all(jnp.isfinite(p) & (p > 0))):
            raise ConfigError("p", "<has entries <= 0 or not finite>", "a positive diagonal")


def _describe(x: Any) -> Any:
    return f"<array of shape {jnp.shape(x)}>" if jnp.ndim(x) > 0 else x
