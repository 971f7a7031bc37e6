"""Fully connected networks: $f(x) = W_L \\sigma(\\cdots \\sigma(W_1 x + b_1) \\cdots) + b_L$."""

from __future__ import annotations

import dataclasses
import math

from jaxtyping import Array

from .layers import activation as _activation
from .layers import dense, dense_init, head_init, rng_from_key
from .shapes import check_widths

__all__ = ["MLP", "mlp"]


@dataclasses.dataclass(frozen=True)
class MLP:
    r"""Pure ``apply(params, x)`` of a fully connected net; ``x`` of shape ``(N, *input_shape)`` is
    flattened, then $h_{l} = \sigma(h_{l-1} W_l + b_l)$ for each hidden width and a linear head.

    Parameters are ``{"dense0": {"w", "b"}, ..., "head": {"w", "b"}}``; ``w`` has shape
    ``(fan_in, fan_out)``. Hashable, so jitted callers keep their compiled code.
    """

    num_hidden: int
    activation: str

    def __call__(self, params: dict, x: Array) -> Array:
        act = _activation(self.activation)
        h = x.reshape(x.shape[0], -1)
        for i in range(self.num_hidden):
            h = act(dense(params[f"dense{i}"], h))
        return dense(params["head"], h)


def mlp(
    key: Array,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    widths: tuple[int, ...] = (200, 200),
    activation: str = "tanh",
    bias: bool = True,
    head_init_std: float | None = None,
) -> tuple[MLP, dict]:
    r"""A fully connected net ``prod(input_shape) -> widths... -> num_classes``.

    Init is PyTorch's default, $U(\pm 1/\sqrt{n_{in}})$ (as in Cohen et al. 2021); with
    ``head_init_std`` the head is $N(0, \text{std}^2)$ with zero bias.
    Parameter count: $\sum_l (n_{l-1} + 1) n_l$ with $n_0 = \prod$ ``input_shape``.
    """
    ws = check_widths(widths)
    _activation(activation)
    d_in = math.prod(input_shape)
    dims = (d_in, *ws, num_classes)
    rng = rng_from_key(key)
    params = {}
    for i in range(len(ws)):
        params[f"dense{i}"] = dense_init(rng, dims[i], dims[i + 1], bias=bias)
    params["head"] = head_init(rng, dims[-2], num_classes, bias, head_init_std)
    return MLP(len(ws), activation), params
