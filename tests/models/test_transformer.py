"""The pre-LN causal decoder and the sequence tasks: forward pass against a numpy loop, HVPs
against the dense Hessian, third derivatives through attention and LayerNorm against finite
differences (float64), causality, and a short GD run."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import Objective, models
from eoslab.curvature import HessianOperator
from eoslab.data.sequences import sequence_arrays, sequence_task
from eoslab.errors import ConfigError
from helpers import group_mask

TINY = {"d_model": 4, "n_heads": 2, "n_layers": 1, "d_mlp": 8}


def tiny(loss, task="sort", n=5, length=2, vocab=3, seed=0, **options):
    ds = sequence_task(task, n, 2, length=length, vocab=vocab, seed=seed)
    apply, params = models.create(
        "transformer", jax.random.key(seed), ds.input_shape, ds.num_classes, **{**TINY, **options}
    )
    obj = Objective.from_model(apply, params, ds, loss, dtype="float64")
    # move off the init (LN scale 1, shift 0, ...) to a generic point
    w = obj.w0 + 0.3 * jax.random.normal(jax.random.key(seed + 1), obj.w0.shape, jnp.float64)
    return apply, params, ds, obj, w


# --------------------------------------------------------------------- the task


def test_sequence_task_layout_against_python():
    x, y = sequence_arrays("sort", 20, 4, 7, seed=3)
    assert x.shape == y.shape == (20, 7)
    for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
        a = xi[:4]
        b = sorted(a)
        assert xi == a + b[:3]
        assert yi == a[:3] + b
    x, y = sequence_arrays("reverse", 5, 3, 4, seed=0)
    for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
        assert yi == xi[:2] + xi[:3][::-1]
    x, y = sequence_arrays("copy", 5, 3, 4, seed=0)
    for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
        assert yi == xi[:2] + xi[:3]
    again = sequence_arrays("sort", 20, 4, 7, seed=3)
    assert np.array_equal(again[0], sequence_arrays("sort", 20, 4, 7, seed=3)[0])
    assert not np.array_equal(again[0], sequence_arrays("sort", 20, 4, 7, seed=4)[0])


def test_sequence_task_dataset_and_errors():
    ds = sequence_task("sort", 6, 3, length=3, vocab=5, seed=1)
    x, y = sequence_arrays("sort", 9, 3, 5, seed=1)
    assert np.array_equal(np.asarray(ds.x_train), x[:6]) and np.array_equal(ds.y_test, y[6:])
    assert ds.input_shape == (5,) and ds.num_classes == 5 and ds.y_train.dtype == jnp.int32
    with pytest.raises(ConfigError, match="task"):
        sequence_arrays("shuffle", 4, 3, 5, 0)
    with pytest.raises(ConfigError, match="length"):
        sequence_arrays("sort", 4, 1, 5, 0)
    with pytest.raises(ConfigError, match="n_train"):
        sequence_task("sort", 0)


# --------------------------------------------------------------------- the model


def test_parameter_count_and_errors():
    _, params = models.create("transformer", jax.random.key(0), (7,), 10)
    # (V+T)d + L[4d + (d+1)3d + (d+1)d + (d+1)4d + (4d+1)d] + 2d + (d+1)V, d=32, L=2
    d, per_layer = 32, 4 * 32 + 33 * 96 + 33 * 32 + 33 * 128 + 129 * 32
    assert models.num_params(params) == 17 * d + 2 * per_layer + 2 * d + 33 * 10
    with pytest.raises(ConfigError, match="n_heads"):
        models.create("transformer", jax.random.key(0), (7,), 10, n_heads=3)
    with pytest.raises(ConfigError, match="input_shape"):
        models.create("transformer", jax.random.key(0), (7, 2), 10)


def numpy_forward(params, tokens, n_heads, eps=1e-5):
    """The decoder written out position by position in numpy (float64)."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)

    def ln(q, z):
        return (z - z.mean()) / math.sqrt(z.var() + eps) * q["scale"] + q["shift"]

    def gelu(z):
        return 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))

    out = []
    for seq in tokens:
        t_len = len(seq)
        h = np.stack(
            [p["embed"]["tokens"][s] + p["embed"]["positions"][t] for t, s in enumerate(seq)]
        )
        i = 0
        while f"block{i}" in p:
            b = p[f"block{i}"]
            d = h.shape[1]
            dh = d // n_heads
            z = np.stack([ln(b["ln1"], h[t]) for t in range(t_len)])
            qkv = z @ b["attn"]["qkv"]["w"] + b["attn"]["qkv"]["b"]
            att = np.zeros((t_len, d))
            for j in range(n_heads):
                q = qkv[:, j * dh : (j + 1) * dh]
                k = qkv[:, d + j * dh : d + (j + 1) * dh]
                v = qkv[:, 2 * d + j * dh : 2 * d + (j + 1) * dh]
                for t in range(t_len):
                    s = np.array([q[t] @ k[r] / math.sqrt(dh) for r in range(t + 1)])
                    a = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
                    att[t, j * dh : (j + 1) * dh] = sum(a[r] * v[r] for r in range(t + 1))
            h = h + att @ b["attn"]["out"]["w"] + b["attn"]["out"]["b"]
            z = np.stack([ln(b["ln2"], h[t]) for t in range(t_len)])
            m = b["mlp"]
            h = h + gelu(z @ m["fc"]["w"] + m["fc"]["b"]) @ m["proj"]["w"] + m["proj"]["b"]
            i += 1
        z = np.stack([ln(p["ln_f"], h[t]) for t in range(t_len)])
        out.append(z @ p["head"]["w"] + p["head"]["b"])
    return np.stack(out)


@pytest.mark.usefixtures("x64")
def test_forward_matches_numpy_loop():
    ds = sequence_task("sort", 3, 1, length=3, vocab=5, seed=2)
    apply, params = models.create(
        "transformer", jax.random.key(1), ds.input_shape, 5, d_model=6, n_heads=3, n_layers=2
    )
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    got = apply(params, ds.x_train)
    want = numpy_forward(params, np.asarray(ds.x_train, int).tolist(), n_heads=3)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)


def test_causal():
    ds = sequence_task("sort", 4, 1, length=4, vocab=6, seed=0)
    apply, params = models.create("transformer", jax.random.key(0), ds.input_shape, 6)
    x = ds.x_train
    base = apply(params, x)
    for t0 in (2, 5):
        x2 = x.at[:, t0:].set((x[:, t0:] + 1) % 6)
        changed = apply(params, x2)
        np.testing.assert_array_equal(np.asarray(changed[:, :t0]), np.asarray(base[:, :t0]))
        assert float(jnp.min(jnp.abs(changed[:, t0] - base[:, t0]).max(axis=-1))) > 1e-6


# --------------------------------------------------------------------- derivatives


# each loss compiles the decoder's dense Hessian (~30 s of CPU): the mean squared error runs by
# default, cross-entropy (the same derivative code under a softmax) with -m slow
_SLOW_LOSS = pytest.param("cross_entropy", marks=pytest.mark.slow)


@functools.cache
def derivatives(loss):
    """The tiny problem with its compiled dense Hessian, gradient and loss along a plane (one
    compilation per loss, shared by the tests below)."""
    _, params, _, obj, w = tiny(loss)
    dense = jax.jit(jax.hessian(obj))
    grad = jax.jit(jax.grad(obj))
    plane = jax.jit(lambda s, t, u, e: obj(w + s * u + t * e))
    third = eqx.filter_jit(lambda op, u: op.grad_quadratic_form(u))
    return params, obj, w, dense, grad, plane, third


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("loss", ["mse_half", _SLOW_LOSS])
def test_hvp_against_dense_hessian_and_gradient_differences(loss):
    _, obj, w, dense_fn, grad, _, _ = derivatives(loss)
    dense = dense_fn(w)
    assert np.allclose(dense, dense.T, atol=1e-12)
    V = jax.random.normal(jax.random.key(5), (obj.dim, 3), jnp.float64)
    op = HessianOperator(obj, w)
    np.testing.assert_allclose(op.mm(V), dense @ V, rtol=1e-10, atol=1e-12)
    for j in range(3):
        v = V[:, j]
        np.testing.assert_allclose(op.mv(v), dense @ v, rtol=1e-10, atol=1e-12)
        # and the dense Hessian itself against central differences of the gradient
        h = 1e-5
        fd = (grad(w + h * v) - grad(w - h * v)) / (2 * h)
        scale = float(jnp.abs(dense @ v).max())
        np.testing.assert_allclose(fd, dense @ v, rtol=1e-6, atol=1e-7 * scale)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("loss", ["mse_half", _SLOW_LOSS])
def test_third_derivative_against_finite_differences(loss):
    r"""$\nabla_w u^\top H(w) u$ along $e$ against central differences of the dense
    $u^\top H(w \pm h e) u$, and of loss values alone (a mixed third-difference stencil), for
    $u, e$ in the attention weights, in the LayerNorm parameters, and in all of $w$."""
    params, obj, w, dense, _, plane, third = derivatives(loss)
    op = HessianOperator(obj, w)
    k1, k2 = jax.random.split(jax.random.key(11))
    attn, ln, every = ("attn",), ("ln1", "ln2", "ln_f"), ("",)
    for u_in, e_in in [(every, attn), (every, ln), (every, every), (attn, attn), (ln, ln)]:
        u = group_mask(params, u_in) * jax.random.normal(k1, w.shape, jnp.float64)
        u = u / jnp.linalg.norm(u)
        e = group_mask(params, e_in) * jax.random.normal(k2, w.shape, jnp.float64)
        e = e / jnp.linalg.norm(e)
        q, g = third(op, u)
        np.testing.assert_allclose(q, u @ dense(w) @ u, rtol=1e-10)
        want = float(g @ e)
        assert abs(want) > 1e-3, (u_in, e_in)  # the directions see a real third derivative
        h = 1e-4
        fd = float(u @ dense(w + h * e) @ u - u @ dense(w - h * e) @ u) / (2 * h)
        assert abs(fd - want) <= 1e-6 * abs(want), (u_in, e_in, fd, want)
        # from loss values only: d^3/ds^2 dt L(w + s u + t e) at 0 (measured error <= 3e-5)
        a = b = 2e-3
        f = [[float(plane(si * a, tj * b, u, e)) for si in (-1, 0, 1)] for tj in (-1, 1)]
        d3 = ((f[1][2] - 2 * f[1][1] + f[1][0]) - (f[0][2] - 2 * f[0][1] + f[0][0])) / (
            2 * b * a * a
        )
        assert abs(d3 - want) <= 5e-4 * abs(want), (u_in, e_in, d3, want)


# --------------------------------------------------------------------- training


@pytest.mark.usefixtures("x64")
def test_gradient_descent_lowers_the_loss():
    ds = sequence_task("sort", 16, 2, length=3, vocab=4, seed=0)
    apply, params = models.create(
        "transformer", jax.random.key(0), ds.input_shape, 4, d_model=8, n_heads=2, n_layers=1
    )
    obj = Objective.from_model(apply, params, ds, "cross_entropy", dtype="float64")

    @jax.jit
    def run(w):
        return jax.lax.fori_loop(0, 300, lambda _, v: v - 0.1 * jax.grad(obj)(v), w)

    before = float(obj(obj.w0))
    after = float(obj(run(obj.w0)))
    assert after < 0.1 * before, (before, after)  # measured: 1.435 -> 0.0121
