r"""A Vision Transformer (Dosovitskiy et al. 2021) for small images: the pre-LN blocks of
`eoslab.models.transformer` without the causal mask, on patches.

An image ``(H, W, C)`` is cut into $P\times P$ patches, each flattened and mapped linearly to
$d$, plus a learned position per patch:
$h^{(0)}_p = \mathrm{vec}(x_p) W_{\text{patch}} + b_{\text{patch}} + P_p$. Then $L$ blocks
(`eoslab.models.transformer.block`, bidirectional attention), a final LayerNorm, the mean over
patches and a linear head: $f = \frac{1}{n_p}\sum_p \mathrm{LN}_f(h^{(L)}_p)\,W_{\text{head}} +
b_{\text{head}}$ (mean pooling instead of a class token, as the central flows paper's ViT).
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
from jaxtyping import Array

from ..errors import ConfigError
from .layers import (
    REMAT_POLICIES,
    dense,
    dense_init,
    head_init,
    norm_init,
    normal,
    remat,
    rng_from_key,
)
from .layers import activation as _activation
from .shapes import image_shape
from .transformer import block, block_init, layer_norm, place_blocks, run_blocks

__all__ = ["ViT", "vit"]


@dataclasses.dataclass(frozen=True)
class ViT:
    """Pure ``apply(params, x)``: images ``(N, H, W, C)`` (or flat ``(N, H*W*C)``) to logits
    ``(N, k)``. Parameters: ``{"patch", "positions" (n_p, d), "block0", ..., "ln_f", "head"}``."""

    image_shape: tuple[int, int, int]
    patch: int
    n_layers: int
    n_heads: int
    activation: str
    ln_eps: float
    remat: str = "none"
    scan: bool = False

    def __call__(self, params: dict, x: Array) -> Array:
        h_img, w_img, c = self.image_shape
        p = self.patch
        n = x.shape[0]
        z = x.reshape(n, h_img // p, p, w_img // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        z = z.reshape(n, (h_img // p) * (w_img // p), p * p * c)
        h = dense(params["patch"], z) + params["positions"]
        step = remat(
            functools.partial(
                block,
                n_heads=self.n_heads,
                act_name=self.activation,
                ln_eps=self.ln_eps,
                causal=False,
            ),
            self.remat,
        )
        h = run_blocks(step, params, h, self.n_layers, self.scan)
        pooled = jnp.mean(layer_norm(params["ln_f"], h, self.ln_eps), axis=1)
        return dense(params["head"], pooled)


def vit(
    key: Array,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    patch: int = 4,
    d_model: int = 192,
    n_heads: int = 3,
    n_layers: int = 12,
    d_mlp: int | None = None,
    activation: str = "gelu",
    ln_eps: float = 1e-6,
    head_init_std: float | None = None,
    remat: str = "none",
    scan_layers: bool = False,
) -> tuple[ViT, dict]:
    r"""A ViT on ``input_shape = (H, W, C)`` images cut into ``patch`` x ``patch`` patches
    (default ViT-Tiny/4: $d = 192$, 12 layers, 3 heads, MLP $4d$, 5,362,378 parameters on CIFAR-10).

    Init: linear layers PyTorch's $U(\pm 1/\sqrt{n_{in}})$, positions $N(0, 0.02^2)$, LayerNorm
    $\gamma=1, \beta=0$. Parameter count, $n_p = HW/P^2$ patches, $m$ = ``d_mlp``:
    $(P^2C+1)d + n_p d + L\,[4d + (d+1)3d + (d+1)d + (d+1)m + (m+1)d] + 2d + (d+1)k$.

    Raises:
        ConfigError: ``patch`` not dividing H and W, ``d_model`` not divisible by ``n_heads``,
            a size < 1, an unknown activation or remat policy.
    """
    h, w, c = image_shape(input_shape)
    for field, value in (("patch", patch), ("d_model", d_model), ("n_heads", n_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(field, value, "an int >= 1")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ConfigError("n_layers", n_layers, "an int >= 1")
    if h % patch or w % patch:
        raise ConfigError("patch", patch, f"a divisor of the image's height {h} and width {w}")
    if d_model % n_heads:
        raise ConfigError("n_heads", n_heads, f"a divisor of d_model={d_model}")
    m = 4 * d_model if d_mlp is None else d_mlp
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError("d_mlp", d_mlp, "an int >= 1")
    _activation(activation)
    if remat not in REMAT_POLICIES:
        raise ConfigError("remat", remat, "one of " + ", ".join(map(repr, REMAT_POLICIES)))
    if not ln_eps > 0:
        raise ConfigError("ln_eps", ln_eps, "a float > 0")
    d = d_model
    rng = rng_from_key(key)
    n_patches = (h // patch) * (w // patch)
    params: dict = {
        "patch": dense_init(rng, patch * patch * c, d),
        "positions": normal(rng, (n_patches, d), 0.02),
    }
    place_blocks(params, [block_init(rng, d, m) for _ in range(n_layers)], bool(scan_layers))
    params["ln_f"] = norm_init(d)
    params["head"] = head_init(rng, d, num_classes, True, head_init_std)
    arch = ViT(
        (h, w, c), patch, n_layers, n_heads, activation, float(ln_eps), remat, bool(scan_layers)
    )
    return arch, params
