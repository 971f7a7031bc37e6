"""The GPU-sized model families (issue 28) at tiny sizes: GPT-2's tied decoder, the ViT, and
rematerialization. Parameter counts against the published configurations' formulas; the tied
decoder's HVP against its dense Hessian and its third derivatives through attention and
LayerNorm against finite differences (float64), as tests/models/test_transformer.py does for the
untied one; the ViT against a numpy patch loop; remat against no remat (same values and
derivatives)."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from eoslab import Objective, models
from eoslab.curvature import HessianOperator
from eoslab.data.sequences import sequence_task
from eoslab.data.specs import Dataset
from eoslab.errors import ConfigError
from helpers import group_mask


def test_published_parameter_counts():
    # GPT-2 small (Radford et al. 2019; HF gpt2: 124,439,808): tied head, 1,024 positions
    d, v, t, layers = 768, 50257, 1024, 12
    block = 2 * 2 * d + (d + 1) * 3 * d + (d + 1) * d + (d + 1) * 4 * d + (4 * d + 1) * d
    want = v * d + t * d + layers * block + 2 * d
    assert want == 124_439_808
    _, params = models.create("gpt2-small", jax.random.key(0), (256,), 256)
    assert models.num_params(params) == want
    assert "head" not in params
    # ViT-Tiny/4 on 32x32x3, 10 classes
    d, m, k = 192, 768, 10
    block = 4 * d + (d + 1) * 3 * d + (d + 1) * d + (d + 1) * m + (m + 1) * d
    _, params = models.create("vit-tiny", jax.random.key(0), (32, 32, 3), k)
    assert (
        models.num_params(params) == (4 * 4 * 3 + 1) * d + 64 * d + 12 * block + 2 * d + (d + 1) * k
    )
    # VGG-11 at width 4: channels 4, 8, 16, 16, 32 x 4; 32 -> 1 after five pools
    chans = [3, 4, 8, 16, 16, 32, 32, 32, 32]
    convs = sum((9 * a + 1) * b for a, b in zip(chans[:-1], chans[1:], strict=True))
    _, params = models.create("vgg11", jax.random.key(0), (32, 32, 3), 10, width=4)
    assert models.num_params(params) == convs + 33 * 10


def test_option_errors():
    key = jax.random.key(0)
    with pytest.raises(ConfigError, match="vocab"):
        models.create("gpt2-small", key, (8,), 256, vocab=100, d_model=8, n_heads=2)
    with pytest.raises(ConfigError, match="max_len"):
        models.create("transformer", key, (8,), 10, max_len=4)
    with pytest.raises(ConfigError, match="patch"):
        models.create("vit-tiny", key, (32, 32, 3), 10, patch=5)
    with pytest.raises(ConfigError, match="remat"):
        models.create("resnet20", key, (32, 32, 3), 10, remat="all")
    with pytest.raises(ConfigError, match="width"):
        models.create("vgg11", key, (32, 32, 3), 10, width=0)


# ------------------------------------------------------------------ GPT-2's tied decoder
TINY_GPT = {"d_model": 4, "n_heads": 2, "n_layers": 1, "d_mlp": 8, "vocab": 5, "max_len": 6}


def tiny_gpt(loss="mse_half"):
    ds = sequence_task("sort", 5, 2, length=2, vocab=3, seed=0)
    apply, params = models.create(
        "gpt2-small", jax.random.key(0), ds.input_shape, ds.num_classes, **TINY_GPT
    )
    obj = Objective.from_model(apply, params, ds, loss, dtype="float64")
    w = obj.w0 + 0.3 * jax.random.normal(jax.random.key(1), obj.w0.shape, jnp.float64)
    return apply, params, ds, obj, w


def unstack(params):
    """Stacked ``"blocks"`` (leading layer axis, the scanned layout) as ``"block0"``, ... ."""
    if "blocks" not in params:
        return params
    out = {k: v for k, v in params.items() if k != "blocks"}
    n = jax.tree_util.tree_leaves(params["blocks"])[0].shape[0]
    for i in range(n):
        out[f"block{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], params["blocks"])
    return out


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("remat", ["none", "blocks"])
def test_scanned_blocks_are_the_looped_blocks(remat):
    """The stacked layout under one lax.scan (gpt2-small's default) gives the loop's logits,
    gradient and Hessian products to rounding, with the same initial values."""
    _, params, ds, _, _ = tiny_gpt()
    opts = {**TINY_GPT, "n_layers": 2, "remat": remat}
    scan_apply, scan_p = models.create("gpt2-small", jax.random.key(0), ds.input_shape, 3, **opts)
    loop_apply, loop_p = models.create(
        "gpt2-small", jax.random.key(0), ds.input_shape, 3, **opts, scan_layers=False
    )
    assert "blocks" in scan_p and "block1" in loop_p and "blocks" not in loop_p
    jax.tree_util.tree_map(np.testing.assert_array_equal, unstack(scan_p), loop_p)
    x = ds.x_train

    w_s, unravel_s = ravel_pytree(
        jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), scan_p)
    )
    _, unravel_l = ravel_pytree(
        jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), loop_p)
    )
    w_s = w_s + 0.3 * jax.random.normal(jax.random.key(2), w_s.shape, jnp.float64)
    v_s = jax.random.normal(jax.random.key(3), w_s.shape, jnp.float64)

    def to_loop(w):
        return ravel_pytree(unstack(unravel_s(w)))[0]

    def f_scan(w):
        return jnp.sum(jnp.sin(scan_apply(unravel_s(w), x)))

    def f_loop(w):
        return jnp.sum(jnp.sin(loop_apply(unravel_l(w), x)))

    w_l, v_l = to_loop(w_s), to_loop(v_s)
    np.testing.assert_allclose(f_scan(w_s), f_loop(w_l), rtol=1e-12)
    np.testing.assert_allclose(
        to_loop(jax.grad(f_scan)(w_s)), jax.grad(f_loop)(w_l), rtol=1e-10, atol=1e-12
    )
    hv_s = jax.jvp(jax.grad(f_scan), (w_s,), (v_s,))[1]
    hv_l = jax.jvp(jax.grad(f_loop), (w_l,), (v_l,))[1]
    np.testing.assert_allclose(to_loop(hv_s), hv_l, rtol=1e-9, atol=1e-11)


@pytest.mark.usefixtures("x64")
def test_tied_logits_are_the_token_embeddings():
    """Tied logits = LN_f(h) E^T: the same as an untied decoder whose head is E^T, zero bias."""
    apply, params, ds, _, _ = tiny_gpt()
    p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    untied_apply, _ = models.create(
        "transformer", jax.random.key(0), ds.input_shape, 5, **{**TINY_GPT, "vocab": None}
    )
    untied = {
        **unstack(p64),
        "head": {"w": p64["embed"]["tokens"].T, "b": jnp.zeros(5, jnp.float64)},
    }
    np.testing.assert_allclose(
        apply(p64, ds.x_train), untied_apply(untied, ds.x_train), rtol=1e-12, atol=1e-12
    )
    assert apply(p64, ds.x_train).shape == (5, 3, 5)


@functools.cache
def gpt_derivatives():
    params, obj, w = (lambda a: (a[1], a[3], a[4]))(tiny_gpt())
    return (
        params,
        obj,
        w,
        jax.jit(jax.hessian(obj)),
        jax.jit(jax.grad(obj)),
        eqx.filter_jit(lambda op, u: op.grad_quadratic_form(u)),
    )


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
@pytest.mark.usefixtures("x64")
def test_tied_decoder_hvp_against_dense_hessian_and_gradient_differences():
    _, obj, w, dense_fn, grad, _ = gpt_derivatives()
    dense = dense_fn(w)
    V = jax.random.normal(jax.random.key(5), (obj.dim, 3), jnp.float64)
    op = HessianOperator(obj, w)
    np.testing.assert_allclose(op.mm(V), dense @ V, rtol=1e-10, atol=1e-12)
    h = 1e-5
    for j in range(3):
        v = V[:, j]
        fd = (grad(w + h * v) - grad(w - h * v)) / (2 * h)
        scale = float(jnp.abs(dense @ v).max())
        np.testing.assert_allclose(fd, dense @ v, rtol=1e-6, atol=1e-7 * scale)


@pytest.mark.usefixtures("x64")
def test_tied_decoder_third_derivative_through_attention_and_layernorm():
    r"""$\nabla_w u^\top H u$ along $e$ against central differences of the dense
    $u^\top H(w \pm h e) u$ for $u, e$ in the attention weights, the LayerNorms, the tied
    embedding (it enters twice: input and logits) and all of $w$."""
    params, obj, w, dense, _, third = gpt_derivatives()
    op = HessianOperator(obj, w)
    k1, k2 = jax.random.split(jax.random.key(11))
    attn, ln, emb, every = ("attn",), ("ln1", "ln2", "ln_f"), ("tokens",), ("",)
    for u_in, e_in in [(every, attn), (every, ln), (emb, emb), (attn, attn), (ln, ln)]:
        u = group_mask(params, u_in) * jax.random.normal(k1, w.shape, jnp.float64)
        u = u / jnp.linalg.norm(u)
        e = group_mask(params, e_in) * jax.random.normal(k2, w.shape, jnp.float64)
        e = e / jnp.linalg.norm(e)
        q, g = third(op, u)
        np.testing.assert_allclose(q, u @ dense(w) @ u, rtol=1e-10)
        want = float(g @ e)
        assert abs(want) > 1e-4, (u_in, e_in)
        h = 1e-4
        fd = float(u @ dense(w + h * e) @ u - u @ dense(w - h * e) @ u) / (2 * h)
        assert abs(fd - want) <= 1e-6 * abs(want), (u_in, e_in, fd, want)


# ------------------------------------------------------------------ ViT
def numpy_vit(params, images, patch, n_heads, eps):
    """The ViT written out patch by patch in numpy (float64), bidirectional attention."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), unstack(params))

    def ln(q, z):
        return (z - z.mean()) / math.sqrt(z.var() + eps) * q["scale"] + q["shift"]

    def gelu(z):
        return 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))

    out = []
    for img in np.asarray(images, np.float64):
        h_img, w_img, _ = img.shape
        tokens = [
            img[i : i + patch, j : j + patch, :].ravel()
            for i in range(0, h_img, patch)
            for j in range(0, w_img, patch)
        ]
        h = np.stack([t @ p["patch"]["w"] + p["patch"]["b"] for t in tokens]) + p["positions"]
        n_tok, d = h.shape
        dh = d // n_heads
        i = 0
        while f"block{i}" in p:
            b = p[f"block{i}"]
            z = np.stack([ln(b["ln1"], r) for r in h])
            qkv = z @ b["attn"]["qkv"]["w"] + b["attn"]["qkv"]["b"]
            att = np.zeros((n_tok, d))
            for j in range(n_heads):
                q = qkv[:, j * dh : (j + 1) * dh]
                k = qkv[:, d + j * dh : d + (j + 1) * dh]
                v = qkv[:, 2 * d + j * dh : 2 * d + (j + 1) * dh]
                for t in range(n_tok):
                    s = np.array([q[t] @ k[r] / math.sqrt(dh) for r in range(n_tok)])
                    a = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
                    att[t, j * dh : (j + 1) * dh] = a @ v
            h = h + att @ b["attn"]["out"]["w"] + b["attn"]["out"]["b"]
            z = np.stack([ln(b["ln2"], r) for r in h])
            m = b["mlp"]
            h = h + gelu(z @ m["fc"]["w"] + m["fc"]["b"]) @ m["proj"]["w"] + m["proj"]["b"]
            i += 1
        pooled = np.stack([ln(p["ln_f"], r) for r in h]).mean(axis=0)
        out.append(pooled @ p["head"]["w"] + p["head"]["b"])
    return np.stack(out)


@pytest.mark.usefixtures("x64")
def test_vit_forward_matches_numpy_patch_loop_and_is_not_causal():
    opts = {"patch": 2, "d_model": 6, "n_heads": 3, "n_layers": 2}
    apply, params = models.create("vit-tiny", jax.random.key(3), (4, 4, 2), 3, **opts)
    p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    x = jax.random.normal(jax.random.key(4), (3, 4, 4, 2), jnp.float64)
    want = numpy_vit(p64, x, 2, 3, 1e-6)
    np.testing.assert_allclose(np.asarray(apply(p64, x)), want, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ rematerialization
def _images(n, shape, k, seed=0):
    x = jax.random.normal(jax.random.key(seed), (n, *shape), jnp.float64)
    y = jax.random.randint(jax.random.key(seed + 1), (n,), 0, k)
    return Dataset("img", x, y, x, y, k, shape)


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    "name, shape, opts, policy",
    [
        ("transformer", None, {"d_model": 4, "n_heads": 2, "n_layers": 2}, "blocks"),
        ("vit-tiny", (4, 4, 1), {"patch": 2, "d_model": 4, "n_heads": 2, "n_layers": 2}, "dots"),
        pytest.param(
            "resnet20", (8, 8, 1), {"depth": 8, "groups": 2}, "blocks", marks=pytest.mark.slow
        ),
        pytest.param(
            "vgg11", (32, 32, 1), {"width": 1}, "dots", marks=pytest.mark.slow
        ),  # ~1 min: five conv stages
    ],
)
def test_remat_changes_memory_not_numbers(name, shape, opts, policy):
    """Loss, gradient and a Hessian block with ``remat`` equal those without (1e-12, float64):
    rematerialization recomputes the same forward."""
    if shape is None:
        ds = sequence_task("sort", 4, 1, length=2, vocab=3, seed=0)
    else:
        ds = _images(4, shape, 3)
    objs = []
    for r in ("none", policy):
        apply, params = models.create(
            name, jax.random.key(0), ds.input_shape, ds.num_classes, remat=r, **opts
        )
        objs.append(Objective.from_model(apply, params, ds, "cross_entropy", dtype="float64"))
    w = objs[0].w0 + 0.1 * jax.random.normal(jax.random.key(2), objs[0].w0.shape, jnp.float64)
    V = jax.random.normal(jax.random.key(3), (objs[0].dim, 2), jnp.float64)
    got = [
        eqx.filter_jit(lambda o, w, V: (o(w), jax.grad(o)(w), HessianOperator(o, w).mm(V)))(o, w, V)
        for o in objs
    ]
    for a, b in zip(got[0], got[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
