"""The sharpness proxies against closed forms: critical sharpness on hidden quadratics (and a
quartic, against numpy's polynomial roots), directional sharpness and the trace per parameter
against dense matrices, per-layer sharpness against the dense Hessian's diagonal blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eoslab import ConfigError, Objective, models
from eoslab.curvature import (
    BlockOperator,
    HessianOperator,
    critical_sharpness,
    directional_sharpness,
    layer_sharpness,
    parameter_groups,
    top_eigenpairs,
    trace_per_parameter,
)

pytestmark = pytest.mark.usefixtures("x64")


def quad(w, data):
    A, b = data
    return 0.5 * w @ A @ w + b @ w


def hidden_quadratic(seed: int, dim: int, low: float, high: float):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    A = Q @ np.diag(rng.uniform(low, high, dim)) @ Q.T
    b = rng.normal(size=dim)
    w = rng.normal(size=dim)
    obj = Objective.from_data_fn(quad, (jnp.asarray(A), jnp.asarray(b)), w, dtype="float64")
    return obj, A, A @ w + b


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    dim=st.integers(2, 8),
    scale=st.floats(1e-2, 1e3),
    factor=st.floats(1e-4, 1e4),
)
def test_critical_sharpness_is_gAg_over_gg_on_a_hidden_quadratic(seed, dim, scale, factor):
    with jax.enable_x64(True):
        obj, A, g = hidden_quadratic(seed, dim, 0.01 * scale, scale)
        want = g @ A @ g / (g @ g)
        res = critical_sharpness(obj, obj.w0, eta0=factor / scale)  # eta_c is ~1/scale
        assert abs(float(res.value) / want - 1) <= 1e-6
        assert int(res.evals) <= 10
        np.testing.assert_allclose(res.step, 2 * (g @ g) / (g @ A @ g), rtol=1e-6)
        # on a quadratic it is the directional sharpness along the gradient
        np.testing.assert_allclose(directional_sharpness(obj, obj.w0), want, rtol=1e-12)


def test_along_any_descent_direction_and_an_ascent_one():
    obj, A, g = hidden_quadratic(7, 5, 0.5, 20.0)
    d = -g + np.random.default_rng(8).normal(size=5) * 0.3 * np.linalg.norm(g)
    assert g @ d < 0
    res = critical_sharpness(obj, obj.w0, jnp.asarray(d), eta0=0.01)
    np.testing.assert_allclose(res.value, -(d @ A @ d) / (g @ d), rtol=1e-6)
    up = critical_sharpness(obj, obj.w0, jnp.asarray(g))
    assert np.isinf(float(up.value)) and int(up.evals) <= 10
    # negative curvature along -g: the loss never rises, no eta_c, value 0
    neg, Aneg, gneg = hidden_quadratic(9, 4, -5.0, -1.0)
    flat = critical_sharpness(neg, neg.w0)
    assert float(flat.value) == 0.0 and np.isinf(float(flat.step))


def test_a_quartic_against_the_roots_of_its_polynomial():
    # L(w) = sum(w^4)/4 + sum(w^2)/2 along -g: phi(eta) a quartic in eta, eta_c its first root
    f = lambda w: jnp.sum(w**4) / 4 + jnp.sum(w**2) / 2  # noqa: E731
    w = jnp.asarray([1.3, -0.4, 0.8])
    g = np.asarray(w**3 + w)
    wn = np.asarray(w)
    # phi(eta) = sum((w - eta g)^4)/4 + sum((w - eta g)^2)/2 - L(w), as a polynomial in eta
    coeffs = np.zeros(5)
    for wi, gi in zip(wn, g, strict=True):
        coeffs += np.polynomial.polynomial.polypow([wi, -gi], 4) / 4
        coeffs[:3] += np.polynomial.polynomial.polypow([wi, -gi], 2) / 2
    coeffs[0] = 0.0
    roots = np.polynomial.polynomial.polyroots(coeffs)
    eta_c = min(r.real for r in roots if abs(r.imag) < 1e-12 and r.real > 1e-12)
    res = critical_sharpness(f, w, eta0=0.05)
    np.testing.assert_allclose(res.step, eta_c, rtol=1e-6)
    np.testing.assert_allclose(res.value, 2 / eta_c, rtol=1e-6)
    assert int(res.evals) <= 10


def test_directional_sharpness_blocks_and_trace_per_parameter():
    obj, A, g = hidden_quadratic(3, 6, 0.1, 10.0)
    U = np.random.default_rng(4).normal(size=(6, 3))
    want = np.einsum("ij,ik,kj->j", U, A, U) / np.sum(U * U, axis=0)
    np.testing.assert_allclose(directional_sharpness(obj, obj.w0, jnp.asarray(U)), want, rtol=1e-12)
    op = HessianOperator(obj, obj.w0)
    np.testing.assert_allclose(
        directional_sharpness(op, u=jnp.asarray(U[:, 0])), want[0], rtol=1e-12
    )
    mean, se = trace_per_parameter(obj, obj.w0, n_probes=3000, key=jax.random.key(1))
    assert abs(float(mean) - np.trace(A) / 6) <= 5 * float(se) + 1e-12
    with pytest.raises(ConfigError):
        directional_sharpness(obj, obj.w0, jnp.ones(5))
    with pytest.raises(ConfigError):
        critical_sharpness(obj, obj.w0, jnp.ones(5))
    with pytest.raises(ConfigError):
        critical_sharpness(obj, obj.w0, max_evals=1)


def test_layer_sharpness_is_the_top_eigenvalue_of_each_diagonal_block():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), rng.integers(0, 2, size=12)
    apply, params = models.create(
        "mlp", jax.random.key(0), (3,), 2, widths=(4, 3), activation="tanh"
    )
    obj = Objective.from_model(apply, params, (x, y), "cross_entropy", dtype="float64")
    groups = parameter_groups(obj)
    assert sorted(groups) == sorted(params)  # named after the model's parameter groups
    total = sum(groups.values())
    assert np.all(total == 1)  # a partition of the coordinates
    H = np.asarray(jax.hessian(obj)(obj.w0))
    res = layer_sharpness(obj, obj.w0, tol=1e-10)
    for name, mask in groups.items():
        idx = np.flatnonzero(mask)
        want = np.linalg.eigvalsh(H[np.ix_(idx, idx)])[-1]
        np.testing.assert_allclose(res[name].values[0], want, rtol=1e-8)
        assert abs(float(res[name].values[0]) - want) <= float(res[name].error_bound[0])
    frozen = Objective.from_model(apply, params, (x, y), "cross_entropy", frozen="head")
    assert "head" not in parameter_groups(frozen)
    with pytest.raises(ConfigError):
        top_eigenpairs(BlockOperator(HessianOperator(obj, obj.w0), jnp.zeros(obj.dim)))
