r"""The Gauss-Newton matrix $G = J^\top H_\ell J$ of a model's loss, as an operator.

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

>>> import jax, jax.numpy as jnp
>>> from eoslab import Objective
>>> x, y = jnp.eye(2), jnp.array([[1.0, 0.0], [0.0, 1.0]])
>>> apply = lambda p, x: x @ p["w"]
>>> obj = Objective.from_model(apply, {"w": jnp.zeros((2, 2))}, (x, y), "mse_half")
>>> G = GaussNewtonOperator(obj, obj.w0)
>>> [round(float(v), 3) for v in G.mv(jnp.ones(4))]      # linear model: G = H = I/2
[0.5, 0.5, 0.5, 0.5]
"""

# (no `from __future__ import annotations`: equinox reads the annotations unquoted)
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..errors import ConfigError
from ..objective import ModelLoss, Objective
from ._checks import check_w
from .operator import AbstractOperator, Linearization

__all__ = ["GaussNewtonOperator"]


def _parts(objective: Objective) -> tuple[Callable[[Array], Array], Callable[[Array], Array]]:
    """$f: w \\mapsto$ outputs and $\\ell$: outputs $\\mapsto$ loss, from a model objective."""
    fn, data = objective.fn, objective.data

    def outputs(w: Array) -> Array:
        return fn.apply(eqx.combine(fn.unravel(w), data["frozen"]), data["x"])

    def loss(z: Array) -> Array:
        return fn.loss(z, data["y"])

    return outputs, loss


class GaussNewtonOperator(AbstractOperator):
    r"""$G = J^\top \nabla^2\ell(f(w))\,J$ of a model objective at ``w`` (module docstring).

    Attributes:
        objective: an objective of `eoslab.Objective.from_model` (its ``fn`` a
            `eoslab.objective.ModelLoss`; a mini-batch of one, too).
        w: the point, shape ``(D,)``.

    Tagged ``symmetric`` and ``positive_semidefinite`` (for a loss convex in the outputs, every
    loss of `eoslab.losses`): `eoslab.curvature.top_eigenpairs` and the trackers certify its
    eigenpairs as they do the Hessian's.
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
