"""CIFAR ResNets (He et al. 2016, Sec. 4.2): 6n+2 layers, widths 16/32/64, option-A shortcuts."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..errors import ConfigError
from .layers import (
    REMAT_POLICIES,
    batch_norm_full,
    conv,
    conv_init,
    dense,
    dense_init,
    group_norm,
    norm_init,
    remat,
    rng_from_key,
)
from .shapes import image_shape

__all__ = ["ResNet", "resnet"]

NORMS = ("group", "layer", "batch")


@dataclasses.dataclass(frozen=True)
class ResNet:
    r"""Pure ``apply(params, x)`` of a CIFAR ResNet-(6n+2): stem conv, three stages of ``n``
    basic blocks $h + \mathrm{N}(\mathrm{conv}(\mathrm{relu}(\mathrm{N}(\mathrm{conv}(h)))))$ then
    relu, global average pool, linear head. Shortcuts are parameter-free (option A: stride-2
    subsampling and zero-padded channels)."""

    image_shape: tuple[int, int, int]
    blocks_per_stage: int
    norm: str
    groups: int
    remat: str = "none"

    def _norm(self, p: dict, h: Array) -> Array:
        if self.norm == "batch":
            return batch_norm_full(p, h)
        return group_norm(p, h, 1 if self.norm == "layer" else self.groups)

    def __call__(self, params: dict, x: Array) -> Array:
        h = x.reshape((x.shape[0], *self.image_shape))
        h = jax.nn.relu(self._norm(params["stem"]["norm"], conv(params["stem"]["conv"], h)))
        plain, strided = remat(self._block1, self.remat), remat(self._block2, self.remat)
        for s in range(3):
            for b in range(self.blocks_per_stage):
                p = params[f"stage{s + 1}"][f"block{b}"]
                h = strided(p, h) if (s > 0 and b == 0) else plain(p, h)
        h = jnp.mean(h, axis=(1, 2))
        return dense(params["head"], h)

    def _block1(self, p: dict, h: Array) -> Array:
        return self._block(p, h, 1)

    def _block2(self, p: dict, h: Array) -> Array:
        return self._block(p, h, 2)

    def _block(self, p: dict, h: Array, stride: int) -> Array:
        y = jax.nn.relu(self._norm(p["norm1"], conv(p["conv1"], h, stride)))
        y = self._norm(p["norm2"], conv(p["conv2"], y))
        sc = h
        if stride == 2:
            sc = h[:, ::2, ::2, :]
            extra = y.shape[-1] - sc.shape[-1]
            sc = jnp.pad(sc, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return jax.nn.relu(y + sc)


def resnet(
    key: Array,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    depth: int = 20,
    norm: str = "group",
    groups: int = 8,
    remat: str = "none",
) -> tuple[ResNet, dict]:
    r"""ResNet-``depth`` for CIFAR (``depth = 6n + 2``: 20, 32, 44, 56, 110).

    ``norm``: ``"group"`` (GroupNorm, ``groups`` groups), ``"layer"`` (LayerNorm over H, W, C) or
    ``"batch"`` (full-batch BatchNorm: statistics of the whole batch given to ``apply``). Group and
    layer norm act per example, so the loss has exact third derivatives and splits over examples.
    ``remat``: the rematerialization policy of each block (`eoslab.models.layers.remat`).
    Each norm has a per-channel scale and shift, so the parameter count equals the BatchNorm
    ResNet's: 269,722 for ResNet-20 and 464,154 for ResNet-32 (k=10). Convs: He normal, no bias.
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ConfigError("depth", depth, "6n + 2 with n >= 1 (20, 32, 44, 56, 110)")
    if norm not in NORMS:
        raise ConfigError("norm", norm, "one of " + ", ".join(map(repr, NORMS)))
    if not isinstance(groups, int) or groups < 1:
        raise ConfigError("groups", groups, "an int >= 1")
    if remat not in REMAT_POLICIES:
        raise ConfigError("remat", remat, "one of " + ", ".join(map(repr, REMAT_POLICIES)))
    n = (depth - 2) // 6
    hw = image_shape(input_shape)
    rng = rng_from_key(key)
    params: dict = {
        "stem": {
            "conv": conv_init(rng, hw[2], 16, 3, bias=False, he_normal=True),
            "norm": norm_init(16),
        }
    }
    c_in = 16
    for s, c in enumerate((16, 32, 64)):
        stage = {}
        for b in range(n):
            stage[f"block{b}"] = {
                "conv1": conv_init(rng, c_in, c, 3, bias=False, he_normal=True),
                "norm1": norm_init(c),
                "conv2": conv_init(rng, c, c, 3, bias=False, he_normal=True),
                "norm2": norm_init(c),
            }
            c_in = c
        params[f"stage{s + 1}"] = stage
    params["head"] = dense_init(rng, 64, num_classes)
    return ResNet(hw, n, norm, groups, remat), params
