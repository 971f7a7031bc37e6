"""Model zoo: output shapes and parameter counts against the published architectures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eoslab import models
from eoslab.errors import ConfigError
from eoslab.models.layers import _conv_im2col, avg_pool, max_pool

CIFAR = (32, 32, 3)


def shapes(name, input_shape, num_classes=10, **options):
    """(apply, params, output shape for a batch of 4); the forward pass is only traced."""
    apply, params = models.create(name, jax.random.key(0), input_shape, num_classes, **options)
    x = jax.ShapeDtypeStruct((4, *input_shape), jnp.float32)
    return apply, params, jax.eval_shape(apply, params, x).shape


def fc_count(d_in, widths, k):
    dims = [d_in, *widths, k]
    return sum((a + 1) * b for a, b in zip(dims[:-1], dims[1:], strict=True))


# Each expected count is written out by hand from the architecture.
COUNTS = [
    # Cohen et al. fc nets on CIFAR-10: 3072*200+200 + 200*200+200 + 200*10+10
    *[
        (f"fc-{a}", CIFAR, 10, {}, 614_400 + 200 + 40_000 + 200 + 2_000 + 10)
        for a in ("relu", "elu", "tanh", "hardtanh", "softplus")
    ],
    ("fc-tanh-depth1", CIFAR, 10, {}, 3072 * 200 + 200 + 200 * 10 + 10),  # 616,610
    ("fc-tanh-depth3", CIFAR, 10, {}, 616_610 + 2 * (200 * 200 + 200)),  # 696,810
    ("fc-tanh-depth4", CIFAR, 10, {}, 616_610 + 3 * (200 * 200 + 200)),  # 737,010
    # CNN on CIFAR-10: conv 3->32: 3*32*9+32 = 896; conv 32->32: 32*32*9+32 = 9,248;
    # two 2x2 pools leave 8x8x32 = 2,048 features: 2,048*10+10 = 20,490
    *[(f"cnn-{a}", CIFAR, 10, {}, 896 + 9_248 + 20_490) for a in ("relu", "elu", "tanh")],
    *[(f"cnn-avgpool-{a}", CIFAR, 10, {}, 30_634) for a in ("relu", "elu", "tanh")],
    # on 28x28x1: 1*32*9+32 = 320, 9,248, 7*7*32*10+10 = 15,690
    ("cnn-relu", (28, 28, 1), 10, {}, 320 + 9_248 + 15_690),
    # VGG-11 convs (9*c_in+1)*c_out: 1,792 + 73,856 + 295,168 + 590,080 + 1,180,160
    # + 3 * 2,359,808 = 9,220,480; head 512*10+10 = 5,130
    ("vgg11", CIFAR, 10, {}, 9_220_480 + 5_130),
    ("vgg11-av", CIFAR, 10, {}, 9_225_610),
    # full-batch BatchNorm adds scale+shift per channel: 2*(64+128+256+256+4*512) = 5,504
    ("vgg11-bn", CIFAR, 10, {}, 9_225_610 + 5_504),
    # ResNet-20 (He et al.: 0.27M): stem 432+32; stage1 3*(2*2,304+2*32) = 14,016;
    # stage2 (4,608+9,216+128) + 2*(2*9,216+128) = 51,072; stage3 (18,432+36,864+256)
    # + 2*(2*36,864+256) = 203,520; head 650
    ("resnet20", CIFAR, 10, {}, 464 + 14_016 + 51_072 + 203_520 + 650),  # 269,722
    ("resnet20", CIFAR, 10, {"norm": "layer"}, 269_722),
    ("resnet20", CIFAR, 10, {"norm": "batch"}, 269_722),
    # ResNet-32 (0.46M): 464 + 5*4,672 + (13,952+4*18,560) + (55,552+4*73,984) + 650
    ("resnet32", CIFAR, 10, {}, 464 + 23_360 + 88_192 + 351_488 + 650),  # 464,154
    # deep linear: 20 matrices 50x50, no bias
    ("deep-linear", (50,), 50, {}, 20 * 50 * 50),
    # tanh regression on 1-D inputs: 1*100+100 + 100*1+1
    ("tanh-regression", (1,), 1, {}, 301),
    # MNIST net 784-128-10: 784*128+128 + 128*10+10
    ("mnist-mlp", (28, 28), 10, {}, 100_352 + 128 + 1_280 + 10),  # 101,770
]


@pytest.mark.parametrize("name,input_shape,k,options,expected", COUNTS)
def test_parameter_count_and_output_shape(name, input_shape, k, options, expected):
    _, params, out = shapes(name, input_shape, k, **options)
    assert models.num_params(params) == expected
    assert out == (4, k)


def test_fc_depth_family_matches_formula():
    for d in (1, 2, 3, 4):
        _, params, _ = shapes(f"fc-tanh-depth{d}", (40,))
        assert models.num_params(params) == fc_count(40, [200] * d, 10)


def test_every_preset_builds_and_maps_to_num_classes():
    for name in sorted(models.MODELS):
        if name == "transformer":  # token sequences (N, T) -> logits (N, T, V)
            assert shapes(name, (5,), 7)[2] == (4, 5, 7)
            continue
        if name == "gpt2-small":  # GPT-2's vocabulary (50,257) over the data's token ids
            small = {"d_model": 8, "n_heads": 2, "n_layers": 1}
            assert shapes(name, (5,), 7, **small)[2] == (4, 5, 50257)
            assert shapes(name, (5,), 7, vocab=7, **small)[2] == (4, 5, 7)
            continue
        shape = (50,) if name == "deep-linear" else CIFAR
        _, _, out = shapes(name, shape, 7)
        assert out == (4, 7), name


def test_hand_computed_forward_with_ones():
    # identity activation, all-ones params: hidden = 3 inputs * 1 + bias 1 = 4 (2 units),
    # output = 2 * 4 + 1 = 9
    apply, params = models.create(
        "mlp", jax.random.key(0), (3,), 1, widths=(2,), activation="identity"
    )
    params = jax.tree_util.tree_map(jnp.ones_like, params)
    np.testing.assert_allclose(apply(params, jnp.ones((5, 3))), 9.0)


def test_pooling_by_hand():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    # top-left 2x2 block is 0, 1, 4, 5: max 5, mean 2.5
    assert max_pool(x)[0, :, :, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]
    assert avg_pool(x)[0, :, :, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]


@settings(max_examples=10, deadline=None)
@given(
    h=st.integers(2, 9), w=st.integers(2, 9), k=st.sampled_from([2, 3]), seed=st.integers(0, 999)
)
def test_max_pool_matches_reduce_window(h, w, k, seed):
    # The reshape form against lax.reduce_window: values, gradients and HVPs (random inputs
    # have a unique maximum per window, where both are differentiable and agree).
    from jax import lax

    x = jnp.asarray(np.random.default_rng(seed).normal(size=(2, h, w, 3)))
    ref = lambda z: lax.reduce_window(z, -jnp.inf, lax.max, (1, k, k, 1), (1, k, k, 1), "VALID")
    ours = lambda z: max_pool(z, k)
    loss = lambda pool: lambda z: jnp.sum(jnp.tanh(pool(z)) ** 3)
    hv = lambda pool: jax.jvp(jax.grad(loss(pool)), (x,), (x,))[1]
    # one compiled program per example (cheaper than op-by-op dispatch of each new shape)
    both = jax.jit(lambda: [(f(x), jax.grad(loss(f))(x), hv(f)) for f in (ours, ref)])
    (y, g, h2), (y_ref, g_ref, h2_ref) = both()
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(g, g_ref, atol=1e-12)
    np.testing.assert_allclose(h2, h2_ref, atol=1e-12)


def test_small_models_run_forward():
    key = jax.random.key(1)
    x = jax.random.normal(key, (3, 8, 8, 1))
    for name in ("cnn-elu", "cnn-avgpool-tanh"):  # MLPs run in test_from_model
        apply, params = models.create(name, key, (8, 8, 1), 10)
        y = jax.jit(apply)(params, x)
        assert y.shape == (3, 10) and bool(jnp.all(jnp.isfinite(y)))


def test_vgg11_av_head_init():
    _, params = models.create(
        "vgg11-av",
        jax.random.key(0),
        CIFAR,
        10,
        config=(8, "P", 8, "P", 16, "P", 16, "P", 512, "P"),
    )
    w, b = np.asarray(params["head"]["w"]), np.asarray(params["head"]["b"])
    assert w.shape == (512, 10)
    assert np.all(b == 0.0)
    assert abs(w.std() - 0.01) < 0.001  # N(0, 0.01^2) over 5,120 entries


@pytest.mark.parametrize("norm,per_example", [("group", True), ("layer", True), ("batch", False)])
def test_resnet_norm_is_per_example_except_full_batch(norm, per_example):
    # ResNet-8 (one block per stage) keeps this fast; the norm code is the same for any depth
    apply, params = models.create("resnet20", jax.random.key(0), (8, 8, 3), 10, norm=norm, depth=8)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 8, 8, 3)), jnp.float32)
    f = jax.jit(apply)
    alone = f(params, x[:1])
    together = f(params, x)[:1]
    assert alone.shape == (1, 10)
    assert bool(jnp.allclose(alone, together, atol=1e-5)) == per_example


def test_apply_is_hashable_and_init_is_a_function_of_the_key():
    a1, p1 = models.create("fc-tanh", jax.random.key(0), (40,), 10)
    a2, p2 = models.create("fc-tanh", jax.random.key(1), (40,), 10)
    _, p3 = models.create("fc-tanh", jax.random.key(0), (40,), 10)
    _, p4 = models.create("fc-tanh", jax.random.PRNGKey(0), (40,), 10)  # raw uint32 key
    assert a1 == a2 and hash(a1) == hash(a2)
    assert np.array_equal(p1["head"]["w"], p3["head"]["w"])
    assert not np.array_equal(p1["head"]["w"], p2["head"]["w"])
    assert p4["head"]["w"].dtype == jnp.float32
    # PyTorch default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan_in 40 for the first layer
    w = np.asarray(p1["dense0"]["w"])
    assert np.abs(w).max() <= 1 / np.sqrt(40) and np.abs(w).max() > 0.9 / np.sqrt(40)


def test_bad_names_and_options_raise_config_error():
    key = jax.random.key(0)
    with pytest.raises(ConfigError, match="model='resnet-20'.*'resnet20'"):
        models.create("resnet-20", key, CIFAR, 10)
    with pytest.raises(ConfigError, match="dropout"):
        models.create("vgg11", key, CIFAR, 10, dropout=0.5)
    with pytest.raises(ConfigError, match="depth"):
        models.create("resnet20", key, CIFAR, 10, depth=21)
    with pytest.raises(ConfigError, match="activation"):
        models.create("mlp", key, (4,), 2, activation="swish")
    with pytest.raises(ConfigError, match="input_shape"):
        models.create("cnn-relu", key, (40,), 10)
    with pytest.raises(ConfigError, match="key"):
        jax.jit(lambda k: models.create("fc-tanh", k, (4,), 2)[1])(key)
    with pytest.raises(ConfigError, match="num_classes"):
        models.create("fc-tanh", key, (4,), 0)
    assert {"fc-tanh", "vgg11-av", "resnet32", "deep-linear", "mnist-mlp"} <= set(
        sorted(models.MODELS)
    )


@pytest.mark.usefixtures("x64")
@settings(max_examples=15, deadline=None)
@given(
    k=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 2]),
    h=st.integers(3, 9),
    wd=st.integers(3, 9),
    c_in=st.integers(1, 4),
    c_out=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_cpu_im2col_conv_equals_xla_convolution(k, stride, h, wd, c_in, c_out, seed):
    # The CPU path (im2col + matmul) against XLA's convolution: values, gradients and HVPs.
    from jax import lax

    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(2, h, wd, c_in)))
    w = jnp.asarray(rng.normal(size=(k, k, c_in, c_out)))
    ref = lambda x, w: lax.conv_general_dilated(
        x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    ours = lambda x, w: _conv_im2col(x, w, stride)
    loss = lambda f: lambda w: jnp.sum(jnp.tanh(f(x, w)) ** 2)
    v = jnp.asarray(rng.normal(size=w.shape))
    hvp = lambda f: jax.jvp(jax.grad(loss(f)), (w,), (v,))[1]
    # one compiled program per example (cheaper than op-by-op dispatch of each new shape)
    both = jax.jit(lambda: [(f(x, w), jax.grad(loss(f))(w), hvp(f)) for f in (ours, ref)])
    (y, g, hv), (y_ref, g_ref, hv_ref) = both()
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g, g_ref, atol=1e-11)
    np.testing.assert_allclose(hv, hv_ref, atol=1e-10)
