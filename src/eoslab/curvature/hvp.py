"""Hessian-vector products and third derivatives, by forward-over-reverse autodiff."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..objective import LossLike, Objective, as_objective
from ._checks import check_vector, check_w

__all__ = ["hvp", "hvp_block", "grad_top_eigenvalue", "hessian_dense"]


def _hvp(obj: Objective, w: Array, v: Array) -> Array:
    return jax.jvp(jax.grad(obj), (w,), (v,))[1]


def _hvp_block(obj: Objective, w: Array, V: Array) -> Array:
    # Linearise grad once, then push every column through the linear map.
    _, lin = jax.linearize(jax.grad(obj), w)
    return jax.vmap(lin, in_axes=1, out_axes=1)(V)


@eqx.filter_jit
def _hvp_jit(obj, w, v):
    return _hvp(obj, w, v)


@eqx.filter_jit
def _hvp_block_jit(obj, w, V):
    return _hvp_block(obj, w, V)


def hvp(loss: LossLike, w: Float[Array, " d"], v: Float[Array, " d"]) -> Float[Array, " d"]:
    r"""$\nabla^2 L(w)\,v$ by forward-over-reverse (``jax.jvp`` of ``jax.grad``)."""
    obj = as_objective(loss, w)
    w = check_w(w, obj)
    v = check_vector("v", v, w)
    return _hvp_jit(obj, w, v)


def hvp_block(loss: LossLike, w: Float[Array, " d"], V: Float[Array, "d k"]) -> Float[Array, "d k"]:
    r"""$\nabla^2 L(w)\,V$ for a block of column vectors $V \in \mathbb{R}^{D\times k}$."""
    obj = as_objective(loss, w)
    w = check_w(w, obj)
    V = jnp.asarray(V, w.dtype)
    if V.ndim != 2 or V.shape[0] != w.shape[0]:
        from ..errors import ConfigError

        raise ConfigError("V.shape", V.shape, f"({w.shape[0]}, k): one column per vector")
    return _hvp_block_jit(obj, w, V)


def _grad_top_eigenvalue(obj: Objective, w: Array, v: Array, log: bool) -> tuple[Array, Array]:
    def rayleigh(x):
        return jnp.vdot(v, _hvp(obj, x, v))

    lam, g = jax.value_and_grad(rayleigh)(w)
    return lam, jnp.where(log, g / lam, g)


_grad_top_eigenvalue_jit = eqx.filter_jit(_grad_top_eigenvalue)


def grad_top_eigenvalue(
    loss: LossLike, w: Float[Array, " d"], v: Float[Array, " d"], *, log: bool = False
) -> Float[Array, " d"]:
    r"""$\nabla\lambda_1(w) = \nabla^3 L(w)[v_1, v_1]$ for the unit top eigenvector $v_1$ at $w$.

    With ``log=True``, $\nabla \log\lambda_1 = \nabla\lambda_1/\lambda_1$. Valid where $\lambda_1$
    is simple; $v$ is normalised here.
    """
    obj = as_objective(loss, w)
    w = check_w(w, obj)
    v = check_vector("v", v, w)
    v = v / jnp.linalg.norm(v)
    return _grad_top_eigenvalue_jit(obj, w, v, log)[1]


def hessian_dense(loss: LossLike, w: Float[Array, " d"]) -> Float[Array, "d d"]:
    """The dense Hessian $\\nabla^2 L(w)$ via ``jax.hessian`` (small problems and tests only)."""
    obj = as_objective(loss, w)
    w = check_w(w, obj)
    return _hessian_jit(obj, w)


@eqx.filter_jit
def _hessian_jit(obj: Any, w: Array) -> Array:
    return jax.hessian(obj)(w)
