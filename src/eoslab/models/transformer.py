r"""A small pre-LayerNorm causal decoder (GPT-style) on token sequences.

For tokens $x_1..x_T$ with embeddings $E$ and learned positions $P$:

$$h^{(0)}_t = E_{x_t} + P_t,\qquad
  a^{(l)} = h^{(l-1)} + \mathrm{MHA}_l(\mathrm{LN}_{l,1}(h^{(l-1)})),\qquad
  h^{(l)} = a^{(l)} + \mathrm{gelu}(\mathrm{LN}_{l,2}(a^{(l)}) W_{1,l} + b_{1,l}) W_{2,l}
  + b_{2,l},$$

and the logits are $f_t = \mathrm{LN}_f(h^{(L)}_t) W_{\text{head}} + b_{\text{head}}$.
$\mathrm{LN}(z) = (z - \mu(z)) / \sqrt{\sigma^2(z) + \epsilon}\cdot\gamma + \beta$ over the model
dimension; multi-head attention is causal: head $j$ at position $t$ attends to positions
$s \le t$ with weights $\mathrm{softmax}_s(q_t^{j} \cdot k_s^{j} / \sqrt{d_h})$.

Everything is written with JAX primitives (no fused kernels or hand-written backward passes), so
derivatives of every order are JAX's own; third derivatives through attention and LayerNorm are
checked against finite differences in ``tests/models/test_transformer.py``.

Inputs are token ids of shape ``(N, T)`` (any numeric dtype: `eoslab.Objective.from_model` casts
inputs to the float dtype of the run, the ids are cast back to ``int32`` here). Outputs are logits
of shape ``(N, T, V)``; the losses of `eoslab.losses` take integer labels ``(N, T)`` and average
over examples and positions.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array

from ..errors import ConfigError
from ..precision import einsum
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

__all__ = [
    "Transformer",
    "block",
    "block_init",
    "causal_attention",
    "layer_norm",
    "place_blocks",
    "run_blocks",
    "transformer",
]


def layer_norm(p: dict[str, Array], x: Array, eps: float = 1e-5) -> Array:
    r"""$(x - \mu)/\sqrt{\sigma^2 + \epsilon}\cdot\gamma + \beta$, statistics over the last axis.

    ``p`` holds ``"scale"`` ($\gamma$) and ``"shift"`` ($\beta$)."""
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return (x - mu) * lax.rsqrt(var + eps) * p["scale"] + p["shift"]


def block(
    p: dict, h: Array, n_heads: int, act_name: str, ln_eps: float, causal: bool = True
) -> Array:
    r"""One pre-LN block: $a = h + \mathrm{MHA}(\mathrm{LN}_1(h))$, then
    $a + \mathrm{act}(\mathrm{LN}_2(a) W_1 + b_1) W_2 + b_2$ (``p``: ``ln1``, ``attn``, ``ln2``,
    ``mlp``)."""
    act = _activation(act_name)
    h = h + causal_attention(p["attn"], layer_norm(p["ln1"], h, ln_eps), n_heads, causal)
    z = act(dense(p["mlp"]["fc"], layer_norm(p["ln2"], h, ln_eps)))
    return h + dense(p["mlp"]["proj"], z)


def block_init(rng: np.random.Generator, d: int, m: int) -> dict:
    r"""One block's parameters: LayerNorms $\gamma=1, \beta=0$, linear layers PyTorch's
    $U(\pm 1/\sqrt{n_{in}})$ (``qkv`` $d \to 3d$, ``out`` $d \to d$, ``fc`` $d \to m$,
    ``proj`` $m \to d$)."""
    return {
        "ln1": norm_init(d),
        "attn": {"qkv": dense_init(rng, d, 3 * d), "out": dense_init(rng, d, d)},
        "ln2": norm_init(d),
        "mlp": {"fc": dense_init(rng, d, m), "proj": dense_init(rng, m, d)},
    }


def place_blocks(params: dict, blocks: list[dict], scan: bool) -> None:
    """Put ``blocks`` into ``params``: as ``"block0"``, ``"block1"``, ... or, with ``scan``,
    stacked along a leading layer axis as ``"blocks"`` (the same values, another flat order)."""
    if scan:
        params["blocks"] = jax.tree.map(lambda *a: np.stack(a), *blocks)
    else:
        params.update({f"block{i}": b for i, b in enumerate(blocks)})


def run_blocks(step, params: dict, h: Array, n_layers: int, scan: bool) -> Array:
    r"""$h \leftarrow$ ``step(p_l, h)`` for $l = 1..L$: a Python loop over ``"block{l}"``, or one
    `jax.lax.scan` over the stacked ``"blocks"`` (``scan``), which XLA compiles once for all
    $L$ layers: compile time and the compiled program no longer grow with depth."""
    if scan:
        return lax.scan(lambda c, p: (step(p, c), None), h, params["blocks"])[0]
    for i in range(n_layers):
        h = step(params[f"block{i}"], h)
    return h


def causal_attention(p: dict, x: Array, n_heads: int, causal: bool = True) -> Array:
    r"""Causal multi-head self-attention of ``x`` ``(N, T, d)``.

    $[Q, K, V] = x W_{qkv} + b_{qkv}$ split into ``n_heads`` heads of width $d_h = d/H$;
    $A^j = \mathrm{softmax}(Q^j K^{j\top}/\sqrt{d_h} + M)$ with $M_{ts} = -\infty$ for $s > t$;
    output $[A^1V^1, \ldots, A^HV^H] W_o + b_o$. With ``causal=False`` there is no mask $M$
    (every position attends to every position: a ViT encoder)."""
    n, t, d = x.shape
    dh = d // n_heads
    qkv = dense(p["qkv"], x).reshape(n, t, 3, n_heads, dh)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (N, T, H, dh)
    scores = einsum("nthe,nshe->nhts", q, k) / math.sqrt(dh)
    if causal:
        mask = jnp.tril(jnp.ones((t, t), dtype=bool))
        # A finite mask value: exp(mask - max) is exactly 0, and no inf enters any derivative.
        scores = jnp.where(mask, scores, jnp.asarray(-1e30, scores.dtype))
    weights = jax.nn.softmax(scores, axis=-1)
    out = einsum("nhts,nshe->nthe", weights, v).reshape(n, t, d)
    return dense(p["out"], out)


@dataclasses.dataclass(frozen=True)
class Transformer:
    r"""Pure ``apply(params, x)``: token ids ``(N, T)`` with $T \le$ ``max_len`` to logits
    ``(N, T, V)``.

    Parameters: ``{"embed": {"tokens" (V, d), "positions" (max_len, d)}, "block0": {"ln1",
    "attn": {"qkv", "out"}, "ln2", "mlp": {"fc", "proj"}}, ..., "ln_f", "head" (d, V)}``; with
    ``tied`` there is no ``"head"``: the logits are $\mathrm{LN}_f(h) E^\top$ (GPT-2).
    ``remat`` names the rematerialization policy of each block (`eoslab.models.layers.remat`);
    with ``scan`` the blocks are stacked as ``"blocks"`` and run by one `jax.lax.scan`.
    Hashable, so jitted callers keep their compiled code."""

    n_layers: int
    n_heads: int
    activation: str
    ln_eps: float
    tied: bool = False
    remat: str = "none"
    scan: bool = False

    def __call__(self, params: dict, x: Array) -> Array:
        tokens = x.astype(jnp.int32)
        t = tokens.shape[-1]
        emb = params["embed"]
        h = emb["tokens"][tokens] + emb["positions"][:t]
        step = remat(
            functools.partial(
                block, n_heads=self.n_heads, act_name=self.activation, ln_eps=self.ln_eps
            ),
            self.remat,
        )
        h = run_blocks(step, params, h, self.n_layers, self.scan)
        z = layer_norm(params["ln_f"], h, self.ln_eps)
        if self.tied:
            return z @ emb["tokens"].T.astype(z.dtype)
        return dense(params["head"], z)


def _positive_int(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(field, value, "an int >= 1")
    return value


def transformer(
    key: Array,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    d_model: int = 32,
    n_heads: int = 2,
    n_layers: int = 2,
    d_mlp: int | None = None,
    activation: str = "gelu",
    ln_eps: float = 1e-5,
    embed_std: float = 1.0,
    head_init_std: float | None = None,
    max_len: int | None = None,
    vocab: int | None = None,
    tie_embeddings: bool = False,
    remat: str = "none",
    scan_layers: bool = False,
) -> tuple[Transformer, dict]:
    r"""A pre-LN causal decoder for sequences of length ``input_shape = (T,)`` over a vocabulary
    of ``num_classes`` tokens (the readout predicts a token at every position).

    Init: token embeddings and positions $N(0, \text{embed\_std}^2)$ (PyTorch's ``nn.Embedding``
    default for 1.0), linear layers PyTorch's $U(\pm 1/\sqrt{n_{in}})$, LayerNorm $\gamma=1$,
    $\beta=0$; with ``head_init_std`` the head is $N(0, \text{std}^2)$ with zero bias.
    ``d_mlp`` defaults to $4d$. Parameter count, with $d$ = ``d_model``, $m$ = ``d_mlp``:
    $(V + T)d + L\,[2\cdot 2d + (d+1)3d + (d+1)d + (d+1)m + (m+1)d] + 2d + (d+1)V$, where
    $T$ is ``max_len`` (default: the input length) and $V$ is ``vocab`` (default
    ``num_classes``; a larger vocabulary than the data use, e.g. GPT-2's over byte tokens).
    ``tie_embeddings`` reads the logits off the token embeddings (GPT-2: no head, the last term
    drops): GPT-2 small is $V = 50257$, $T = 1024$, $d = 768$, $L = 12$, 12 heads, 124,439,808
    parameters. ``remat``: ``"none"``, ``"blocks"`` or ``"dots"`` (`eoslab.models.layers.remat`).
    ``scan_layers``: the blocks stacked and run by one `jax.lax.scan` (the same function and
    initial values; compiles in a time independent of depth: GPT-2 small's presets use it).

    Raises:
        ConfigError: ``input_shape`` not ``(T,)``, a size < 1, ``d_model`` not divisible by
            ``n_heads``, an unknown activation, or ``ln_eps``/``embed_std`` not positive.
    """
    shape = tuple(input_shape)
    if len(shape) != 1:
        raise ConfigError("input_shape", input_shape, "(T,): token sequences of length T")
    seq_len = _positive_int("input_shape[0]", shape[0])
    max_len = seq_len if max_len is None else _positive_int("max_len", max_len)
    if max_len < seq_len:
        raise ConfigError("max_len", max_len, f"an int >= the sequence length {seq_len}")
    if remat not in REMAT_POLICIES:
        raise ConfigError("remat", remat, "one of " + ", ".join(map(repr, REMAT_POLICIES)))
    vocab_data = _positive_int("num_classes", num_classes)
    vocab = vocab_data if vocab is None else _positive_int("vocab", vocab)
    if vocab < vocab_data:
        raise ConfigError("vocab", vocab, f"an int >= the data's {vocab_data} token ids")
    d = _positive_int("d_model", d_model)
    heads = _positive_int("n_heads", n_heads)
    layers = _positive_int("n_layers", n_layers)
    if d % heads:
        raise ConfigError("n_heads", n_heads, f"a divisor of d_model={d}")
    m = 4 * d if d_mlp is None else _positive_int("d_mlp", d_mlp)
    _activation(activation)
    if not ln_eps > 0:
        raise ConfigError("ln_eps", ln_eps, "a float > 0")
    if not embed_std > 0:
        raise ConfigError("embed_std", embed_std, "a float > 0")
    rng = rng_from_key(key)
    params: dict = {
        "embed": {
            "tokens": normal(rng, (vocab, d), embed_std),
            "positions": normal(rng, (max_len, d), embed_std),
        }
    }
    place_blocks(params, [block_init(rng, d, m) for _ in range(layers)], bool(scan_layers))
    params["ln_f"] = norm_init(d)
    if not tie_embeddings:
        params["head"] = head_init(rng, d, vocab, True, head_init_std)
    arch = Transformer(
        layers, heads, activation, float(ln_eps), bool(tie_embeddings), remat, bool(scan_layers)
    )
    return arch, params
