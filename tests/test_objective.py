import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import ConfigError, Objective


@pytest.mark.usefixtures("x64")
def test_from_fn_defaults_to_float32_and_float64_on_request():
    obj = Objective.from_fn(lambda w: jnp.sum(w**2), np.ones(3))
    assert obj.w0.dtype == jnp.float32
    obj64 = Objective.from_fn(lambda w: jnp.sum(w**2), np.ones(3), dtype="float64")
    assert obj64.w0.dtype == jnp.float64
    assert float(obj64(obj64.w0)) == 3.0


@pytest.mark.usefixtures("x64")
def test_from_pytree_flattens_and_unravels():
    params = {"a": jnp.ones((2, 3)), "b": jnp.arange(4.0)}
    fn = lambda p: jnp.sum(p["a"] ** 2) + jnp.sum(p["b"])
    obj = Objective.from_pytree(fn, params, dtype="float64")
    assert obj.dim == 10
    back = obj.unravel(obj.w0)
    np.testing.assert_array_equal(back["b"], np.arange(4.0))
    assert float(obj(obj.w0)) == 6.0 + 6.0
    np.testing.assert_allclose(
        jax.grad(obj)(obj.w0), jax.flatten_util.ravel_pytree(jax.grad(fn)(params))[0]
    )


@pytest.mark.usefixtures("x64")
def test_sqrt_value_gradient_and_finite_at_minimum():
    obj = Objective.from_fn(
        lambda w: (1 + w[0] ** 2) * w[1] ** 2 + 0.5,
        jnp.array([2.0, 0.3]),
        loss_min=0.5,
        dtype="float64",
    )
    s = obj.sqrt()
    w = jnp.array([2.0, 0.3])
    L = (1 + 4.0) * 0.09
    assert float(s(w)) == pytest.approx(np.sqrt(L))
    # gradient of sqrt(L - Lmin) = grad L / (2 sqrt(L - Lmin)), against a central difference
    eps = 1e-6
    fd = [(s(w + eps * e) - s(w - eps * e)) / (2 * eps) for e in jnp.eye(2)]
    np.testing.assert_allclose(jax.grad(s)(w), fd, rtol=1e-6)
    wmin = jnp.array([2.0, 0.0])
    assert float(s(wmin)) == 0.0
    g = jax.grad(s)(wmin)
    H = jax.hessian(s)(wmin)
    assert np.all(np.isfinite(g)) and np.all(g == 0.0)
    assert np.all(np.isfinite(H))
    assert s.base().transform == "none" and float(s.base()(w)) == pytest.approx(L + 0.5)
    assert s.base().loss_min == 0.5
    with pytest.raises(ConfigError, match="transform"):
        s.sqrt()


@pytest.mark.parametrize(
    "fn, w0, field",
    [
        (lambda w: w, np.ones(3), "fn"),  # non-scalar loss
        (lambda w: jnp.sum(w), np.array([1.0, np.nan]), "w0"),
        (lambda w: jnp.sum(w), np.array([1, 2]), "w0.dtype"),
        (lambda w: jnp.sum(w), np.ones((2, 2)), "w0.shape"),
    ],
)
def test_bad_input_names_the_field(fn, w0, field):
    with pytest.raises(ConfigError) as info:
        Objective.from_fn(fn, w0)
    assert info.value.field == field


def test_bad_dtype_is_refused():
    with pytest.raises(ConfigError, match="dtype"):
        Objective.from_fn(lambda w: jnp.sum(w), np.ones(2), dtype="float16")


@pytest.mark.usefixtures("x64")
def test_from_pytree_takes_an_equinox_module():
    import equinox as eqx
    import jax

    from eoslab.curvature import top_eigenpairs

    key = jax.random.PRNGKey(0)
    mlp = eqx.nn.MLP(3, 1, 8, 2, activation=jnp.tanh, key=key)  # holds a function leaf
    x = jax.random.normal(key, (20, 3), jnp.float64)
    y = jnp.sin(x[:, :1])

    def loss(m):
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    obj = Objective.from_pytree(loss, mlp, dtype="float64")
    params = eqx.filter(mlp, eqx.is_inexact_array)
    assert obj.dim == sum(a.size for a in jax.tree_util.tree_leaves(params))
    as64 = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, mlp
    )
    assert float(obj(obj.w0)) == pytest.approx(float(loss(as64)), rel=1e-12)
    assert obj.unravel(obj.w0).activation is jnp.tanh
    H = np.asarray(jax.hessian(obj)(obj.w0))
    lam = float(top_eigenpairs(obj, k=1, tol=1e-10).values[0])
    assert lam == pytest.approx(float(np.linalg.eigvalsh(H)[-1]), rel=1e-8)
