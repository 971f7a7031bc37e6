"""Deep linear networks: $f(x) = W_L \\cdots W_1 x$."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from jaxtyping import Array

from ..errors import ConfigError
from ..precision import matmul
from .layers import normal, rng_from_key

__all__ = ["DeepLinear", "deep_linear"]


@dataclasses.dataclass(frozen=True)
class DeepLinear:
    r"""Pure ``apply(params, x)`` of $x \mapsto x W_1 W_2 \cdots W_L$ (+ biases if present).

    Parameters are ``{"layer00": {"w"}, ..., "layerLL": {"w"}}`` (zero-padded indices keep the
    flattening order equal to the layer order)."""

    num_layers: int

    def __call__(self, params: dict, x: Array) -> Array:
        h = x.reshape(x.shape[0], -1)
        for i in range(self.num_layers):
            p = params[f"layer{i:02d}"]
            h = matmul(h, p["w"])
            if "b" in p:
                h = h + p["b"]
        return h


def deep_linear(
    key: Array,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    layers: int = 20,
    width: int = 50,
    bias: bool = False,
) -> tuple[DeepLinear, dict]:
    r"""``layers`` weight matrices ``d_in -> width -> ... -> width -> num_classes``.

    Init: LeCun normal, $W_l \sim N(0, 1/n_{l-1})$, so $\mathbb{E}\|f(x)\|^2$ stays of the order
    of $\|x\|^2$ across depth. Parameter count (no bias): $d_{in} w + (L-2) w^2 + w\,k$.
    """
    if not isinstance(layers, int) or layers < 1:
        raise ConfigError("layers", layers, "an int >= 1")
    if not isinstance(width, int) or width < 1:
        raise ConfigError("width", width, "an int >= 1")
    d_in = math.prod(input_shape)
    dims = [d_in] + [width] * (layers - 1) + [num_classes]
    rng = rng_from_key(key)
    params = {}
    for i in range(layers):
        p = {"w": normal(rng, (dims[i], dims[i + 1]), 1.0 / math.sqrt(dims[i]))}
        if bias:
            p["b"] = jnp.zeros((dims[i + 1],), jnp.float32)
        params[f"layer{i:02d}"] = p
    return DeepLinear(layers), params
