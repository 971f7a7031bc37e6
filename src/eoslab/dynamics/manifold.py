r"""The tangent space of the manifold of minimizers $\Gamma$: $T_x\Gamma = \ker\nabla^2 L(x)$."""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..curvature import top_eigenpairs
from ..curvature._checks import check_w
from ..curvature.operator import HessianOperator
from ..curvature.rounding import clip_tol
from ..errors import ConfigError, check_choice, check_positive
from ..objective import LossLike, as_objective

__all__ = ["TangentProjector", "tangent_projector", "DENSE_MAX_DIM"]

DENSE_MAX_DIM = 2000


class TangentProjector(eqx.Module):
    r"""$P^\perp_{x,\Gamma} = I - U U^\top$, the projection onto $\ker\nabla^2L(x)$.

    $U$ ($D\times M$) holds the unit eigenvectors whose eigenvalues exceed
    ``rank_tol`` $\cdot\lambda_1$: the normal space, whose dimension $M$ is the Hessian's rank.
    """

    normal: Float[Array, "d m"]
    eigenvalues: Float[Array, " m"]

    @property
    def rank(self) -> int:
        return int(self.normal.shape[1])

    def __call__(self, v: Float[Array, " d"]) -> Float[Array, " d"]:
        return v - self.normal @ (self.normal.T @ v)

    def matrix(self) -> Float[Array, "d d"]:
        d = self.normal.shape[0]
        return jnp.eye(d, dtype=self.normal.dtype) - self.normal @ self.normal.T


@eqx.filter_jit
def _dense_eigh(obj, x):
    return jnp.linalg.eigh(HessianOperator(obj, x).as_matrix())


def tangent_projector(
    loss: LossLike,
    x: Float[Array, " d"],
    *,
    rank_tol: float = 1e-6,
    method: Literal["auto", "dense", "matfree"] = "auto",
    max_rank: int = 200,
) -> TangentProjector:
    r"""Projector onto the tangent space $T_x\Gamma=\ker\nabla^2L(x)$ at a point $x$ of $\Gamma$.

    The rank $M$ counts eigenvalues $\lambda_i > $ ``rank_tol`` $\cdot \lambda_1$ (the normal
    space); on $\Gamma$ the others are zero up to how far $x$ is from $\Gamma$, so ``rank_tol``
    should sit well above that distance times $\|\nabla^3 L\|/\lambda_1$. ``method="dense"``
    diagonalises the dense Hessian (the default up to $D=2000$); ``"matfree"`` grows a Lanczos
    solve until an eigenvalue falls below the threshold (at most ``max_rank`` of them).
    """
    obj = as_objective(loss, x)
    x = check_w(x, obj)
    check_positive("rank_tol", rank_tol)
    check_choice("method", method, ("auto", "dense", "matfree"))
    d = x.shape[0]
    if method == "auto":
        method = "dense" if d <= DENSE_MAX_DIM else "matfree"
    if method == "dense":
        evals, evecs = _dense_eigh(obj, x)
        lam1 = float(evals[-1])
        if lam1 <= 0:
            raise ConfigError(
                "x",
                "<a point whose Hessian has no positive eigenvalue>",
                "a point on a manifold of minimizers (lambda_1 > 0)",
            )
        keep = evals > rank_tol * lam1
        idx = jnp.nonzero(keep)[0][::-1]
        return TangentProjector(normal=evecs[:, idx], eigenvalues=evals[idx])
    k = 2
    while True:
        k = min(k, d)
        res = top_eigenpairs(obj, x, k=k, tol=clip_tol(1e-8, x.dtype))
        lam1 = float(res.values[0])
        below = jnp.nonzero(res.values <= rank_tol * lam1)[0]
        if below.size or k == d:
            m = int(below[0]) if below.size else k
            return TangentProjector(normal=res.vectors[:, :m], eigenvalues=res.values[:m])
        if k >= max_rank:
            raise ConfigError(
                "max_rank",
                max_rank,
                f"a larger bound: the Hessian has more than {k} eigenvalues above "
                f"rank_tol * lambda_1",
            )
        k = min(2 * k, max_rank)
