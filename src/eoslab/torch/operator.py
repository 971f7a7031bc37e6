r"""`TorchHessianOperator`: $\nabla^2L(w)$ of a PyTorch model, as an eoslab operator.

Its products are computed by PyTorch (`eoslab.torch.model.TorchModel`) and enter JAX through
``jax.pure_callback``, so every eoslab solver (`top_eigenpairs`, `EigenTracker`, its certified
bounds, `hutchinson_trace`, `spectral_density`) runs on it unchanged, inside its own jitted loop:
a block ``mm(V)`` is one callback, one vmapped batch of ``jvp``-of-``grad`` products in torch.

`adam_preconditioner` reads $P = \sqrt{\hat\nu} + \epsilon$ from a ``torch.optim.Adam`` /
``AdamW``'s state, for ``PreconditionedOperator(op, p)``: the preconditioned sharpness
$\lambda_1(P^{-1}H)$ of Cohen et al. (2022), as `eoslab.dynamics.rules.Adam` defines it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

import torch

from ..curvature.operator import AbstractOperator, Linearization
from ..errors import ConfigError
from .model import TorchModel, to_jax

__all__ = ["TorchHessianOperator", "adam_preconditioner", "adam_threshold"]


def _host(t: torch.Tensor) -> np.ndarray:
    """A torch result handed back to JAX from a callback (no copy on the CPU); 64-bit floats as
    pairs of uint32 words (see `_callback`)."""
    a = t.detach().cpu().numpy() if t.device.type != "cpu" else t.detach().numpy()
    if a.dtype.itemsize != 8:
        return a
    return np.ascontiguousarray(a).reshape(-1).view(np.uint32).reshape(*a.shape, 2)


def _wide(dtype: Any) -> bool:
    return np.dtype(dtype).itemsize == 8


def _callback(fn: Any, shapes: Any, *args: Array) -> Any:
    """``jax.pure_callback(fn, shapes, *args)`` that keeps float64 arguments and results.

    JAX canonicalizes a callback's arguments and results in the thread that runs it, where a
    scoped ``jax.enable_x64`` does not hold (float64 arrived as float32), so 64-bit arrays cross
    as uint32 word pairs, bit-cast on both sides (no rounding, no copy on the host side).
    """
    flat, tree = jax.tree_util.tree_flatten(shapes)
    wire = [jax.ShapeDtypeStruct((*s.shape, 2), jnp.uint32) if _wide(s.dtype) else s for s in flat]
    wide_in = [_wide(a.dtype) for a in args]
    sent = [
        jax.lax.bitcast_convert_type(a, jnp.uint32) if w else a
        for a, w in zip(args, wide_in, strict=True)
    ]

    def host(*received):
        xs = [
            np.asarray(x).view(np.float64)[..., 0] if w else x
            for x, w in zip(received, wide_in, strict=True)
        ]
        return tuple(_host(t) for t in fn(*xs))

    out = jax.pure_callback(host, tuple(wire), *sent, vmap_method="sequential")
    out = [
        jax.lax.bitcast_convert_type(o, s.dtype) if _wide(s.dtype) else o
        for o, s in zip(out, flat, strict=True)
    ]
    return jax.tree_util.tree_unflatten(tree, out)


class TorchHessianOperator(AbstractOperator):
    r"""$H = \nabla^2 L(w)$ of a `TorchModel` at the flat point $w$ (a JAX array).

    Build it with `TorchHessianOperator.of(module, loss_fn, data)` (at the module's current
    parameters) or ``TorchHessianOperator(model, w)``. The dtype is the module's: a float64
    module needs JAX's x64 mode (``with jax.enable_x64(True):``).

    Attributes:
        model: the `TorchModel` (static: a compiled solve is reused for the same model object).
        w: the point, shape ``(D,)``, in the module's dtype.
    """

    model: TorchModel = eqx.field(static=True)
    w: Float[Array, " d"]
    tags: ClassVar[frozenset[str]] = frozenset({"symmetric"})

    @classmethod
    def of(cls, module: Any, loss_fn: Any, data: Any, **kwargs: Any) -> TorchHessianOperator:
        """The Hessian at the module's current parameters (``kwargs``: `TorchModel`'s)."""
        model = TorchModel(module, loss_fn, data, **kwargs)
        return cls(model, to_jax(model.flat()))

    def _sds(self, shape: tuple[int, ...]) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, self.w.dtype)

    def _value_grad(self) -> tuple[Array, Array]:
        m = self.model

        shapes = (self._sds(()), self._sds((self.dim,)))
        return _callback(m.value_and_grad, shapes, self.w)

    def linearize(self) -> Linearization:
        r"""$(L(w), \nabla L(w), X \mapsto HX)$: one callback for the value and gradient, one per
        block of products."""
        value, g = self._value_grad()
        return value, g, self.mm

    def mm(self, V: Float[Array, "d k"], chunk: int | None = None) -> Float[Array, "d k"]:
        r"""$HV$ for a block ``(D, k)``: one callback per ``chunk`` columns (all ``k`` by default),
        the products of a callback vmapped in torch."""
        m = self.model
        k = V.shape[1]
        step = k if chunk is None else chunk
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ConfigError("chunk", chunk, "an integer >= 1 (columns applied at once) or None")
        parts = [
            _callback(lambda w, X: (m.hvp(w, X),), (self._sds(X.shape),), self.w, X)[0]
            for X in (V[:, i : i + step] for i in range(0, k, step))
        ]
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)

    def grad_quadratic_form(self, u: Float[Array, " d"]) -> tuple[Array, Array]:
        r"""$(u^\top H u,\ \nabla_w\,u^\top\nabla^2L(w)\,u)$ with $u$ fixed (torch's third
        derivative)."""
        m = self.model

        shapes = (self._sds(()), self._sds((self.dim,)))
        return _callback(m.grad_quadratic_form, shapes, self.w, u)

    def step_direction(self) -> Float[Array, " d"]:
        r"""$\nabla L(w)$."""
        return self._value_grad()[1]

    def as_matrix(self) -> Float[Array, "d d"]:
        """The dense Hessian (``torch.func.hessian``; small models and tests only)."""
        m = self.model
        return _callback(lambda w: (m.hessian(w),), (self._sds((self.dim, self.dim)),), self.w)[0]

    def at(self, w: Float[Array, " d"]) -> TorchHessianOperator:
        """The same model's Hessian at another point."""
        return TorchHessianOperator(self.model, w)

    def check(self) -> None:
        """A finite point of shape ``(D,)`` in the module's dtype."""
        d = self.model.dim
        if tuple(self.w.shape) != (d,):
            raise ConfigError("w.shape", tuple(self.w.shape), f"({d},): the module's parameters")
        want = self.model.numpy_dtype
        if np.dtype(self.w.dtype) != want:
            raise ConfigError(
                "w.dtype",
                str(self.w.dtype),
                f"{want} (the module's dtype)",
                "A float64 module needs JAX's x64 mode: `with jax.enable_x64(True):`.",
            )
        if not bool(jnp.all(jnp.isfinite(self.w))):
            raise ConfigError("w", "<contains NaN or inf>", "finite parameters")


def _adam_group(optimizer: torch.optim.Optimizer, model: TorchModel) -> dict[int, dict]:
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        raise ConfigError("optimizer", type(optimizer).__name__, "torch.optim.Adam or AdamW")
    groups = {}
    for g in optimizer.param_groups:
        if g.get("amsgrad"):
            raise ConfigError("amsgrad", True, "False (the preconditioner is Adam's)")
        for p in g["params"]:
            groups[id(p)] = g
    return groups


def adam_preconditioner(optimizer: torch.optim.Optimizer, model: TorchModel) -> Array:
    r"""$P = \sqrt{\hat\nu} + \epsilon$, $\hat\nu = \nu_t/(1-\beta_2^t)$, from an Adam/AdamW
    state: the diagonal of the preconditioner of the optimizer's next step, flattened like
    ``model``'s $w$ (a JAX array for ``PreconditionedOperator(op, p)``).

    Torch's step is $w \leftarrow w - \eta\,\hat m/(\sqrt{\hat\nu}+\epsilon)$, so its stability
    is governed by $\lambda_1(P^{-1}H)$ against $(2+2\beta_1)/((1-\beta_1)\eta)$
    (`adam_threshold`). Parameters the optimizer has not stepped yet are refused.
    """
    groups = _adam_group(optimizer, model)
    params = dict(model.module.named_parameters())
    out = []
    for name in model.names:
        p = params[name]
        if id(p) not in groups:
            raise ConfigError(f"optimizer: parameter {name}", "<not optimized>", "every parameter")
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state:
            raise ConfigError(
                f"optimizer state of {name}", "<empty>", "an optimizer that has taken a step"
            )
        beta2 = groups[id(p)]["betas"][1]
        eps = groups[id(p)]["eps"]
        t = float(state["step"])
        nu_hat = state["exp_avg_sq"].detach() / (1.0 - beta2**t)
        out.append((nu_hat.sqrt() + eps).reshape(-1))
    return to_jax(torch.cat(out).to(model.dtype))


def adam_threshold(optimizer: torch.optim.Optimizer) -> float:
    r"""$(2+2\beta_1)/((1-\beta_1)\eta)$: the stability threshold of Adam's preconditioned
    sharpness (one parameter group, or groups sharing lr and $\beta_1$)."""
    pairs = {(g["lr"], g["betas"][0]) for g in optimizer.param_groups}
    if len(pairs) != 1:
        raise ConfigError("optimizer.param_groups", sorted(pairs), "one (lr, beta1) for all groups")
    lr, b1 = pairs.pop()
    return float((2 + 2 * b1) / ((1 - b1) * lr))
