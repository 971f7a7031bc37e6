"""Pure building blocks shared by the model families: initializers, dense, conv, pooling, norms.

Images are NHWC: a batch has shape ``(N, H, W, C)``. Every layer is a plain function of a dict of
arrays, so models are pure ``apply(params, x)`` functions and their parameters are plain pytrees.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from ..errors import ConfigError
from ..precision import conv as conv_product
from ..precision import matmul

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "tanh": jnp.tanh,
    "hardtanh": lambda x: jnp.clip(x, -1.0, 1.0),
    "softplus": jax.nn.softplus,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "identity": lambda x: x,
}


#: Rematerialization policies for a model's blocks (`remat`): ``"none"`` keeps every
#: intermediate for the backward pass; ``"blocks"`` keeps only each block's input and recomputes
#: the rest (`jax.checkpoint`, nothing saveable); ``"dots"`` also keeps the matrix products'
#: outputs that have no batch dimension (``dots_with_no_batch_dims_saveable``).
REMAT_POLICIES = ("none", "blocks", "dots")


def remat(fn: Callable, policy: str) -> Callable:
    """``fn`` under the rematerialization ``policy`` (one of `REMAT_POLICIES`): the same values
    and derivatives of every order, with less memory held between the forward and the backward
    pass (at the cost of recomputing the block's forward)."""
    if policy == "none":
        return fn
    if policy == "blocks":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)
    if policy == "dots":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    raise ConfigError("remat", policy, "one of " + ", ".join(map(repr, REMAT_POLICIES)))


def activation(name: str) -> Callable[[Array], Array]:
    """The activation function called ``name`` (one of `ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ConfigError("activation", name, "one of " + ", ".join(map(repr, ACTIVATIONS)))
    return ACTIVATIONS[name]


def rng_from_key(key: Array) -> np.random.Generator:
    """numpy PCG64 generator seeded by the bits of a JAX PRNG key (typed or raw ``uint32``).

    Initial parameters are drawn with numpy: a deterministic function of the key that costs no
    XLA compilation (drawing a VGG-11 takes a fraction of a second on a CPU)."""
    try:
        data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        bits = np.asarray(data, np.uint32).ravel()
    except (jax.errors.TracerArrayConversionError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(
            "key",
            type(key).__name__,
            "a concrete JAX PRNG key (models are initialized with numpy, outside jit/vmap)",
        ) from exc
    return np.random.default_rng([int(v) for v in bits])


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], bound: float) -> Array:
    return jnp.asarray(rng.uniform(-bound, bound, size=shape), jnp.float32)


def normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> Array:
    """$N(0, \text{std}^2)$ entries, float32."""
    return jnp.asarray(rng.normal(0.0, std, size=shape), jnp.float32)


def dense_init(
    rng: np.random.Generator, fan_in: int, fan_out: int, *, bias: bool = True
) -> dict[str, Array]:
    r"""PyTorch's default ``nn.Linear`` init: $W, b \sim U(-1/\sqrt{n_{in}}, 1/\sqrt{n_{in}})$."""
    bound = 1.0 / math.sqrt(fan_in)
    p = {"w": _uniform(rng, (fan_in, fan_out), bound)}
    if bias:
        p["b"] = _uniform(rng, (fan_out,), bound)
    return p


def head_init(
    rng: np.random.Generator, fan_in: int, num_classes: int, bias: bool, std: float | None
) -> dict[str, Array]:
    r"""The linear head: `dense_init` if ``std`` is None, else $W \sim N(0, \text{std}^2)$ and
    a zero bias."""
    if std is None:
        return dense_init(rng, fan_in, num_classes, bias=bias)
    p = {"w": normal(rng, (fan_in, num_classes), std)}
    if bias:
        p["b"] = jnp.zeros((num_classes,), jnp.float32)
    return p


def dense(p: dict[str, Array], x: Array) -> Array:
    """$x W + b$ for ``x`` of shape ``(N, n_in)``."""
    y = matmul(x, p["w"])
    return y + p["b"] if "b" in p else y


def conv_init(
    rng: np.random.Generator,
    c_in: int,
    c_out: int,
    k: int = 3,
    *,
    bias: bool = True,
    he_normal: bool = False,
) -> dict[str, Array]:
    r"""Conv kernel ``(k, k, c_in, c_out)``: PyTorch default $U(\pm 1/\sqrt{k^2 c_{in}})$, or He
    normal $N(0, 2/(k^2 c_{in}))$ (as in the CIFAR ResNets) when ``he_normal``."""
    fan_in = k * k * c_in
    if he_normal:
        w = normal(rng, (k, k, c_in, c_out), math.sqrt(2.0 / fan_in))
    else:
        w = _uniform(rng, (k, k, c_in, c_out), 1.0 / math.sqrt(fan_in))
    p = {"w": w}
    if bias:
        p["b"] = _uniform(rng, (c_out,), 1.0 / math.sqrt(fan_in))
    return p


def conv(p: dict[str, Array], x: Array, stride: int = 1) -> Array:
    r"""2-D convolution with 'SAME' padding (padding 1 for 3x3) on NHWC input, HWIO kernel.

    On CPU it runs as im2col: the $k^2$ shifted (strided) slices of the padded input side by side,
    times the kernel reshaped to $(k^2 c_{in}, c_{out})$. The result is the same convolution; its
    derivatives are matrix products, which XLA:CPU runs fast inside ``scan``/``while`` bodies,
    where its own convolution gradients run ~10x slower (jax-ml/jax#12868). Elsewhere it is
    ``lax.conv_general_dilated``.
    """
    w = p["w"].astype(x.dtype)
    if jax.default_backend() == "cpu":
        y = _conv_im2col(x, w, stride)
    else:
        y = conv_product(x, w, stride)
    return y + p["b"] if "b" in p else y


def _conv_im2col(x: Array, w: Array, stride: int) -> Array:
    kh, kw, c_in, c_out = w.shape
    n, h, wd, c = x.shape
    (plo, phi), (qlo, qhi) = lax.padtype_to_pads((h, wd), (kh, kw), (stride, stride), "SAME")
    xp = jnp.pad(x, ((0, 0), (plo, phi), (qlo, qhi), (0, 0)))
    ho = (h + plo + phi - kh) // stride + 1
    wo = (wd + qlo + qhi - kw) // stride + 1
    cols = [
        lax.slice(
            xp,
            (0, a, b, 0),
            (n, a + (ho - 1) * stride + 1, b + (wo - 1) * stride + 1, c),
            (1, stride, stride, 1),
        )
        for a in range(kh)
        for b in range(kw)
    ]
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    return matmul(patches, w.reshape(kh * kw * c_in, c_out))


def max_pool(x: Array, k: int = 2) -> Array:
    r"""$k\times k$ max pooling with stride $k$ (NHWC); a trailing remainder is dropped ('VALID').

    Written as a max over a reshaped axis: its derivatives are masks, ~8x faster on CPU than
    ``reduce_window``'s select-and-scatter (they agree wherever the maximum is unique).
    """
    n, h, w, c = x.shape
    x = x[:, : h // k * k, : w // k * k]
    return x.reshape(n, h // k, k, w // k, k, c).max(axis=(2, 4))


def avg_pool(x: Array, k: int = 2) -> Array:
    """$k\\times k$ average pooling with stride $k$ (NHWC)."""
    s = lax.reduce_window(x, 0.0, lax.add, (1, k, k, 1), (1, k, k, 1), "VALID")
    return s / (k * k)


POOLS: dict[str, Callable[[Array], Array]] = {"max": max_pool, "avg": avg_pool}


def norm_init(c: int) -> dict[str, Array]:
    """Per-channel affine parameters of a normalization layer: scale 1, shift 0."""
    return {"scale": jnp.ones((c,), jnp.float32), "shift": jnp.zeros((c,), jnp.float32)}


def group_norm(p: dict[str, Array], x: Array, groups: int, eps: float = 1e-5) -> Array:
    r"""GroupNorm: $(x-\mu_g)/\sqrt{\sigma_g^2+\epsilon}\cdot\gamma+\beta$, statistics per example
    over $(H, W)$ and the channels of each group. ``groups=1`` is LayerNorm over $(H, W, C)$.

    Per-example statistics make the loss a sum over examples with smooth derivatives of every
    order (unlike mini-batch BatchNorm)."""
    n, h, w, c = x.shape
    g = math.gcd(groups, c)
    xg = x.reshape(n, h, w, g, c // g)
    mu = jnp.mean(xg, axis=(1, 2, 4), keepdims=True)
    var = jnp.mean((xg - mu) ** 2, axis=(1, 2, 4), keepdims=True)
    xg = (xg - mu) * lax.rsqrt(var + eps)
    return xg.reshape(n, h, w, c) * p["scale"] + p["shift"]


def batch_norm_full(p: dict[str, Array], x: Array, eps: float = 1e-5) -> Array:
    r"""BatchNorm in full-batch mode: statistics over the whole batch passed to ``apply`` (no
    running averages). With the full training set as the batch this is a deterministic, smooth
    function of the parameters; it couples examples, so micro-batching changes the function."""
    mu = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean((x - mu) ** 2, axis=(0, 1, 2))
    return (x - mu) * lax.rsqrt(var + eps) * p["scale"] + p["shift"]


def num_params(params) -> int:
    """Total number of scalars in a parameter pytree."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))
