r"""$\nabla\lambda_1$: the gradient of an operator's top eigenvalue in the point $w$."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..errors import ConfigError
from ..objective import LossLike
from ._checks import check_vector
from .operator import AbstractOperator, as_operator

__all__ = ["grad_top_eigenvalue"]


@eqx.filter_jit
def _grad_rayleigh(op: AbstractOperator, v: Array, log: bool) -> Array:
    lam, g = op.grad_quadratic_form(v)
    return g / lam if log else g


def grad_top_eigenvalue(
    loss: LossLike | AbstractOperator,
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
    # With an operator the point is implicit, so a second positional argument is the vector.
    if isinstance(loss, AbstractOperator) and v is None:
        w, v = None, w
    op = as_operator(loss, w, tags=frozenset({"symmetric"}))
    if v is None:
        raise ConfigError("v", None, f"the top eigenvector, shape ({op.dim},)")
    v = check_vector("v", v, op.w)
    return _grad_rayleigh(op, v / jnp.linalg.norm(v), bool(log))
