"""VGG networks for 32x32 inputs: 3x3 convolutions and 2x2 pools, then a single linear head."""

from __future__ import annotations

import dataclasses

from jaxtyping import Array

from ..errors import ConfigError
from .layers import (
    POOLS,
    REMAT_POLICIES,
    batch_norm_full,
    conv,
    conv_init,
    dense,
    head_init,
    norm_init,
    remat,
    rng_from_key,
)
from .layers import activation as _activation
from .shapes import image_shape

__all__ = ["VGG", "VGG11", "vgg"]

#: VGG-11 (configuration "A" of Simonyan & Zisserman): channels, ``"P"`` = 2x2 pool.
VGG11: tuple = (64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P")


@dataclasses.dataclass(frozen=True)
class VGG:
    r"""Pure ``apply(params, x)`` of a VGG: for each entry of ``config``, either
    $h \leftarrow \sigma(\mathrm{norm}(\mathrm{conv}(h)))$ or a 2x2 pool; then flatten and a
    linear head. No dropout. Parameters: ``{"conv00": ..., "head": {"w", "b"}}``."""

    image_shape: tuple[int, int, int]
    config: tuple
    activation: str
    pool: str
    norm: str
    remat: str = "none"

    def __call__(self, params: dict, x: Array) -> Array:
        pool = POOLS[self.pool]
        h = x.reshape((x.shape[0], *self.image_shape))
        layer = remat(self._layer, self.remat)
        i = 0
        for item in self.config:
            if item == "P":
                h = pool(h)
                continue
            h = layer(params[f"conv{i:02d}"], params.get(f"norm{i:02d}"), h)
            i += 1
        return dense(params["head"], h.reshape(h.shape[0], -1))

    def _layer(self, pc: dict, pn: dict | None, h: Array) -> Array:
        h = conv(pc, h)
        if self.norm == "batch":
            h = batch_norm_full(pn, h)
        return _activation(self.activation)(h)


def vgg(
    key: Array,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    config: tuple = VGG11,
    activation: str = "relu",
    pool: str = "max",
    norm: str = "none",
    head_init_std: float | None = None,
    width: int | None = None,
    remat: str = "none",
) -> tuple[VGG, dict]:
    r"""A VGG (default VGG-11, CIFAR style: one 512 -> k linear head, no dropout).

    ``norm="batch"`` is BatchNorm in full-batch mode (statistics of the batch given to ``apply``,
    no running averages: use it with the full training set as one batch). Convolutions use
    PyTorch's default init; the head too unless ``head_init_std`` ($N(0,\text{std}^2)$, zero bias).
    ``width``: the first conv layer's channels, the others scaled alike (VGG-11 is 64: 64, 128,
    256, 512; ``width=4`` gives 4, 8, 16, 32, a tiny VGG for tests).
    ``remat``: the rematerialization policy of each conv layer (`eoslab.models.layers.remat`).

    Parameter count (VGG-11, 32x32x3, k=10, no norm): $\sum_l (9 c_{l-1}+1) c_l + 513 k$
    $= 9\,225\,610$.
    """
    _activation(activation)
    if remat not in REMAT_POLICIES:
        raise ConfigError("remat", remat, "one of " + ", ".join(map(repr, REMAT_POLICIES)))
    if pool not in POOLS:
        raise ConfigError("pool", pool, "one of " + ", ".join(map(repr, POOLS)))
    if norm not in ("none", "batch"):
        raise ConfigError("norm", norm, "'none' or 'batch' (full-batch BatchNorm)")
    if not config or not all(c == "P" or (isinstance(c, int) and c > 0) for c in config):
        raise ConfigError("config", config, "a sequence of positive ints and 'P' (pool)")
    if width is not None:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError("width", width, "an int >= 1")
        first = next(c for c in config if c != "P")
        config = tuple(c if c == "P" else max(1, c * width // first) for c in config)
    h, w, c = image_shape(input_shape)
    rng = rng_from_key(key)
    params = {}
    i = 0
    for item in config:
        if item == "P":
            h, w = h // 2, w // 2
            continue
        params[f"conv{i:02d}"] = conv_init(rng, c, item, 3)
        if norm == "batch":
            params[f"norm{i:02d}"] = norm_init(item)
        c = item
        i += 1
    if h < 1 or w < 1:
        raise ConfigError("input_shape", input_shape, "images large enough for every pool")
    params["head"] = head_init(rng, c * h * w, num_classes, True, head_init_std)
    arch = VGG(image_shape(input_shape), tuple(config), activation, pool, norm, remat)
    return arch, params
