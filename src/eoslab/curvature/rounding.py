r"""What a certified eigenvalue bound owes to rounding in the working precision.

A Ritz pair $(\theta, y)$ certifies that some eigenvalue $\lambda$ of $H$ has
$|\theta-\lambda| \le \lVert Hy-\theta y\rVert$ for a unit $y$. The solvers only see the residual
of the products they computed, $\hat r = \lVert \mathrm{fl}(Hy) - \theta y\rVert$ (or Lanczos's
$\beta|s_m|$, which assumes the Lanczos relation $HV = VT + f e_m^\top$ holds exactly), so the
honest bound adds what rounding can hide:

$$|\theta - \lambda| \;\le\; \hat r + c\,\epsilon\,\lVert H\rVert,$$

with $\epsilon$ the machine epsilon of the dtype (``jnp.finfo(dtype).eps``) and $\lVert H\rVert$
estimated by the largest $|\theta|$ the solver has seen (both ends of the Krylov spectrum). The
term covers the error of a Hessian-vector product in the direction of a top eigenvector (measured
$0.7$--$1.6\,\epsilon\lVert H\rVert$ on MLPs, a CNN, VGG/ResNet-sized nets and a transformer, from
$D=939$ to $199{,}210$ parameters and up to 4,000 examples), the drift of the Lanczos relation
over the products and restarts (the true residual of a converged Lanczos pair was up to
$2.7\,\epsilon\lVert H\rVert$ above $\beta|s_m|$), and the rounding of $\theta$ itself (up to
$1.6\,\epsilon\lVert H\rVert$ from $T$'s entries). $c$ = `ROUNDING` is about twice their sum;
``docs/theory.md`` has the measurements.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
from jaxtyping import Array

from ..errors import ConfigError

__all__ = ["ROUNDING", "rounding_floor", "min_tol", "default_tol", "check_tol", "clip_tol"]

#: $c$ in the rounding term $c\,\epsilon\,\lVert H\rVert$ of every certified bound.
ROUNDING = 8.0


def rounding_floor(norm: Array, dtype: Any) -> Array:
    r"""$c\,\epsilon\,\lVert H\rVert$: what rounding can hide in a residual of ``dtype``
    products."""
    return ROUNDING * float(jnp.finfo(dtype).eps) * norm


def min_tol(dtype: Any) -> float:
    r"""The smallest relative tolerance a bound in ``dtype`` can meet: $2c\,\epsilon$.

    Even for $\lambda_1$ with $\lVert H\rVert = \lambda_1$ and a residual at the rounding level,
    the bound is at least $c\,\epsilon\,\lambda_1$ plus that residual.
    """
    return float(2 * ROUNDING * float(jnp.finfo(dtype).eps))


def default_tol(dtype: Any) -> float:
    """The relative tolerance used when none is given: 1e-6, or in a coarser dtype the power of
    ten above five times `min_tol` (float32: 1e-5)."""
    return max(1e-6, 10.0 ** math.ceil(math.log10(5 * min_tol(dtype))))


def clip_tol(tol: float, dtype: Any) -> float:
    """``tol``, or `min_tol` where ``dtype`` cannot certify ``tol`` (for solves inside eoslab that
    want the best the precision allows, e.g. a warm start's vectors)."""
    return max(float(tol), min_tol(dtype))


def check_tol(tol: float, dtype: Any, name: str = "tol") -> float:
    """Refuse a relative tolerance below what ``dtype`` can certify (`ConfigError`)."""
    floor = min_tol(dtype)
    if not tol >= floor:
        raise ConfigError(
            name,
            tol,
            f">= {floor:.1e} for {jnp.dtype(dtype).name} (what its rounding lets a bound certify)",
            "Tighter bounds need float64 (e.g. a run with --dtype float64).",
        )
    return float(tol)
