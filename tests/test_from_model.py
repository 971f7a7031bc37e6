"""Objective.from_model: gradients match finite differences, curvature works, frozen groups stay."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import Objective, curvature, data, losses, models
from eoslab.errors import ConfigError


def random_images(shape, n, k, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(n, *shape))), jnp.asarray(rng.integers(0, k, n)))


# (model, dataset or fabricated (x, y), loss, options); data kept small so every case is fast
CASES = [
    ("fc-tanh", ("mnist1d", 32), losses.mse_half, {}),
    ("cnn-tanh", ("digits", 12), losses.mse_sum, {}),
    ("tanh-regression", ("chebyshev-3-20", None), losses.mse_half, {}),
    ("deep-linear", ("linear-50-50", None), losses.mse_half, {"layers": 4}),
    ("mnist-mlp", ("mnist-5k", 10), losses.sqrt(losses.mse_half), {}),
    ("resnet20", "images", losses.cross_entropy, {"depth": 8, "norm": "layer"}),
    ("vgg11-av", "images", losses.mse_half, {"config": (4, "P", 8, "P")}),
]


def build(model, source, loss, options, dtype="float64"):
    if source == "images":
        ds = random_images((4, 4, 3), 3, 10)
        shape, k = (4, 4, 3), 10
    else:
        ds = data.load(source[0], n=source[1])
        shape, k = ds.input_shape, ds.num_classes
    apply, params = models.create(model, jax.random.key(0), shape, k, **options)
    return Objective.from_model(apply, params, ds, loss, dtype=dtype), params


@pytest.mark.parametrize("model,source,loss,options", CASES, ids=[c[0] for c in CASES])
def test_gradient_matches_central_difference(x64, model, source, loss, options):
    obj, params = build(model, source, loss, options)
    assert obj.dim == models.num_params(params) and obj.w0.dtype == jnp.float64
    w = obj.w0
    v = jax.random.normal(jax.random.key(1), w.shape, w.dtype)
    v = v / jnp.linalg.norm(v)
    h = 1e-4

    @jax.jit  # one compilation for both sides of the check
    def check(o, w, v):
        fd = (o(w + h * v) - o(w - h * v)) / (2 * h)  # error O(h^2 * third derivative)
        return jnp.vdot(jax.grad(o)(w), v), fd

    directional, fd = check(obj, w, v)
    assert float(directional) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize(
    "model,source,loss,options", [CASES[0], CASES[2]], ids=["fc-tanh", "tanh-regression"]
)
def test_sharpness_by_the_curvature_engine(x64, model, source, loss, options):
    obj, _ = build(model, source, loss, options)
    res = curvature.top_eigenpairs(obj, obj.w0, k=1)
    lam = float(res.values[0])
    assert np.isfinite(lam) and lam > 0 and bool(res.converged)
    assert float(res.error_bound[0]) <= 1e-5 * lam
    if obj.dim <= 400:  # small enough for a dense Hessian (tanh-regression: 301 parameters)
        dense = np.linalg.eigvalsh(np.asarray(jax.jit(jax.hessian(lambda w: obj(w)))(obj.w0)))
        assert lam == pytest.approx(dense[-1], rel=1e-6)


def test_frozen_head_gets_no_update_and_is_not_in_w(x64):
    cfg = (4, "P", 8, "P", 16, "P")  # a narrow VGG-11-AV: 8x8 inputs pool down to 1x1x16
    apply, params = models.create("vgg11-av", jax.random.key(0), (8, 8, 3), 10, config=cfg)
    ds = random_images((8, 8, 3), 3, 10)
    obj = Objective.from_model(
        apply, params, ds, losses.mse_half, frozen=("head",), dtype="float64"
    )
    head = 16 * 10 + 10  # the 16 -> 10 head: weights + biases
    assert obj.dim == models.num_params(params) - head
    w1 = jax.jit(lambda o, w: w - 0.5 * jax.grad(o)(w))(obj, obj.w0)  # one GD step on w
    before, after = obj.unravel(obj.w0), obj.unravel(w1)
    np.testing.assert_array_equal(after["head"]["w"], np.asarray(params["head"]["w"]))
    np.testing.assert_array_equal(after["head"]["b"], 0.0)
    assert not np.allclose(after["conv00"]["w"], before["conv00"]["w"])
    # the frozen objective is the full one restricted to the non-head coordinates
    full = Objective.from_model(apply, params, ds, losses.mse_half, dtype="float64")
    assert full.dim == obj.dim + head
    value = jax.jit(lambda o: o(o.w0))
    assert float(value(full)) == pytest.approx(float(value(obj)), rel=1e-12)
    # freezing by path: only the head weights
    part = Objective.from_model(apply, params, ds, losses.mse_half, frozen="head/w")
    assert part.dim == obj.dim + 10 and part.w0.dtype == jnp.float32


def test_data_are_traced_so_new_data_reuse_compiled_code():
    apply, p0 = models.create("fc-tanh", jax.random.key(0), (40,), 10, widths=(8,))
    _, p1 = models.create("fc-tanh", jax.random.key(1), (40,), 10, widths=(8,))
    a = Objective.from_model(apply, p0, data.load("mnist1d", n=20), losses.mse_half)
    b = Objective.from_model(apply, p1, data.load("mnist1d", n=20, subset="balanced"), "mse_half")
    assert a.fn == b.fn and hash(a.fn) == hash(b.fn)
    step = jax.jit(lambda o, w: w - 0.1 * jax.grad(o)(w))
    step(a, a.w0)
    step(b, b.w0)
    assert step._cache_size() == 1
    assert float(a(a.w0)) != float(b(b.w0))


def test_bad_arguments():
    apply, params = models.create("fc-tanh", jax.random.key(0), (40,), 10, widths=(8,))
    ds = data.load("mnist1d", n=10)
    with pytest.raises(ConfigError, match="frozen='classifier'.*'dense0', 'head'"):
        Objective.from_model(apply, params, ds, losses.mse_half, frozen=("classifier",))
    with pytest.raises(ConfigError, match="frozen"):
        Objective.from_model(apply, params, ds, losses.mse_half, frozen=("dense0", "head"))
    with pytest.raises(ConfigError, match="dataset"):
        Objective.from_model(apply, params, object(), losses.mse_half)
    with pytest.raises(ConfigError, match="loss='mse'"):
        Objective.from_model(apply, params, ds, "mse")
