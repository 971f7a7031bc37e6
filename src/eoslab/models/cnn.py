"""Small CNNs of Cohen et al. (2021): [conv3x3 -> activation -> 2x2 pool] x L -> linear."""

from __future__ import annotations

import dataclasses

from jaxtyping import Array

from ..errors import ConfigError
from .layers import POOLS, conv, conv_init, dense, dense_init, rng_from_key
from .layers import activation as _activation
from .shapes import check_widths, image_shape

__all__ = ["CNN", "cnn"]


@dataclasses.dataclass(frozen=True)
class CNN:
    r"""Pure ``apply(params, x)``: $h_l = \mathrm{pool}(\sigma(\mathrm{conv}_l(h_{l-1})))$, then a
    linear head on the flattened features. ``x``: ``(N, H, W[, C])``; output ``(N, k)``.

    Parameters: ``{"conv0": {"w", "b"}, ..., "head": {"w", "b"}}``."""

    image_shape: tuple[int, int, int]
    num_conv: int
    activation: str
    pool: str

    def __call__(self, params: dict, x: Array) -> Array:
        act = _activation(self.activation)
        pool = POOLS[self.pool]
        h = x.reshape((x.shape[0], *self.image_shape))
        for i in range(self.num_conv):
            h = pool(act(conv(params[f"conv{i}"], h)))
        return dense(params["head"], h.reshape(h.shape[0], -1))


def cnn(
    key: Array,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    widths: tuple[int, ...] = (32, 32),
    activation: str = "relu",
    pool: str = "max",
    bias: bool = True,
) -> tuple[CNN, dict]:
    r"""CNN with 3x3 'same' convolutions of the given widths, each followed by the activation and
    a 2x2 pool (``"max"`` or ``"avg"``), then one linear layer.

    Parameter count: $\sum_l (9 c_{l-1} + 1) c_l + (c_L \lfloor H/2^L \rfloor \lfloor W/2^L
    \rfloor + 1) k$.
    """
    ws = check_widths(widths)
    _activation(activation)
    if pool not in POOLS:
        raise ConfigError("pool", pool, "one of " + ", ".join(map(repr, POOLS)))
    h, w, c = image_shape(input_shape)
    rng = rng_from_key(key)
    params = {}
    for i, width in enumerate(ws):
        params[f"conv{i}"] = conv_init(rng, c, width, 3, bias=bias)
        c = width
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ConfigError("input_shape", input_shape, f"images of at least {2 ** len(ws)} pixels")
    params["head"] = dense_init(rng, c * h * w, num_classes, bias=bias)
    return CNN(image_shape(input_shape), len(ws), activation, pool), params
