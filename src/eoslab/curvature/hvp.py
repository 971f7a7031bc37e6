r"""Hessian-vector products, dense Hessians and $\nabla\lambda_1$: compiled calls of the operator.

Each function takes an `Operator`, or a loss (callable or `Objective`) and a point ``w`` (an
`Objective` alone means its ``w0``). With an operator the point is omitted: ``hvp(op, v)``.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..errors import ConfigError
from ..objective import LossLike
from ._checks import check_vector
from .operator import HessianOperator, Operator, PreconditionedOperator, as_operator

__all__ = ["hvp", "hvp_block", "grad_top_eigenvalue", "hessian_dense"]


def _operator_and_arg(loss, w, arg) -> tuple[Operator, Array | None]:
    # With an operator the point is implicit, so a second positional argument is the vector.
    if isinstance(loss, (HessianOperator, PreconditionedOperator)) and arg is None:
        w, arg = None, w
    return as_operator(loss, w), arg


@eqx.filter_jit
def _mv(op: Operator, v: Array) -> Array:
    return op.mv(v)


@eqx.filter_jit
def _mm(op: Operator, V: Array) -> Array:
    return op.mm(V)


@eqx.filter_jit
def _dense(op: Operator) -> Array:
    return op.as_matrix()


@eqx.filter_jit
def _grad_rayleigh(op: Operator, v: Array, log: bool) -> Array:
    lam, g = op.grad_quadratic_form(v)
    return g / lam if log else g


def hvp(
    loss: LossLike | Operator,
    w: Float[Array, " d"] | None = None,
    v: Float[Array, " d"] | None = None,
) -> Float[Array, " d"]:
    r"""$Hv$, $H = \nabla^2 L(w)$ or an operator: ``hvp(loss, w, v)`` or ``hvp(op, v)``."""
    op, v = _operator_and_arg(loss, w, v)
    if v is None:
        raise ConfigError("v", None, f"a vector of shape ({op.dim},)")
    return _mv(op, check_vector("v", v, op.w))


def hvp_block(
    loss: LossLike | Operator,
    w: Float[Array, " d"] | None = None,
    V: Float[Array, "d k"] | None = None,
) -> Float[Array, "d k"]:
    r"""$HV$ for a block of columns $V \in \mathbb{R}^{D\times k}$ (one linearization, vmapped)."""
    op, V = _operator_and_arg(loss, w, V)
    V = jnp.asarray(V, op.dtype) if V is not None else None
    if V is None or V.ndim != 2 or V.shape[0] != op.dim:
        shape = None if V is None else V.shape
        raise ConfigError("V.shape", shape, f"({op.dim}, k): one column per vector")
    return _mm(op, V)


def grad_top_eigenvalue(
    loss: LossLike | Operator,
    w: Float[Array, " d"] | None = None,
    v: Float[Array, " d"] | None = None,
    *,
    log: bool = False,
) -> Float[Array, " d"]:
    r"""$\nabla\lambda_1(w) = \nabla^3 L(w)[v_1, v_1]$ for the unit top eigenvector $v_1$ at $w$.

    Called as ``grad_top_eigenvalue(loss, w, v)`` or ``grad_top_eigenvalue(op, v)`` (then the
    gradient of the operator's $\lambda_1$ in $w$, a preconditioner held fixed). With
    ``log=True``, $\nabla \log\lambda_1 = \nabla\lambda_1/\lambda_1$. Valid where $\lambda_1$ is
    simple; $v$ is normalised here.
    """
    op, v = _operator_and_arg(loss, w, v)
    if v is None:
        raise ConfigError("v", None, f"the top eigenvector, shape ({op.dim},)")
    v = check_vector("v", v, op.w)
    return _grad_rayleigh(op, v / jnp.linalg.norm(v), bool(log))


def hessian_dense(
    loss: LossLike | Operator, w: Float[Array, " d"] | None = None
) -> Float[Array, "d d"]:
    """The dense matrix: $\\nabla^2 L(w)$ by ``jax.hessian`` (small problems and tests only)."""
    return _dense(as_operator(loss, w))
