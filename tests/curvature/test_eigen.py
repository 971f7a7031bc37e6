"""top_eigenpairs / bottom_eigenpairs against dense eigendecompositions and known spectra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eoslab import ConfigError, Objective
from eoslab.curvature import LOBPCG, Lanczos, Power, as_operator, bottom_eigenpairs, top_eigenpairs
from helpers import dense_eigh, quadratic_with_spectrum, small_mlp_loss


def check_result(res, true_vals, A, rtol):
    vals = np.asarray(res.values)
    np.testing.assert_allclose(vals, true_vals, rtol=rtol, atol=rtol * abs(true_vals[0]))
    V = np.asarray(res.vectors)
    np.testing.assert_allclose(np.linalg.norm(V, axis=0), 1.0, rtol=1e-10)
    true_res = np.linalg.norm(A @ V - V * vals, axis=0)
    # reported residuals are the true ||Hv - lambda v|| (up to rounding)
    np.testing.assert_allclose(res.residuals, true_res, atol=1e-8 * abs(true_vals[0]))
    # the certified bound covers the actual error
    err = np.abs(vals - true_vals)
    assert np.all(err <= np.asarray(res.error_bound) + 1e-12 * abs(true_vals[0]))


def _quadratic_form(w, A):
    """1/2 w^T A w with A as traced data: objectives that differ only in A share compiled code."""
    return 0.5 * w @ A @ w


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    # every activation with both losses, every k twice (each case compiles its own solver)
    ("activation", "loss", "k"),
    [
        ("tanh", "mse", 1),
        ("gelu", "ce", 1),
        ("relu", "mse", 3),
        ("tanh", "ce", 3),
        ("gelu", "mse", 5),
        ("relu", "ce", 5),
    ],
)
def test_mlp_hessian_matches_dense(activation, loss, k):
    f, w = small_mlp_loss(activation, loss, seed=k)
    vals, _, H = dense_eigh(f, w)
    res = top_eigenpairs(f, w, k=k, tol=1e-10)
    assert bool(res.converged)
    check_result(res, vals[:k], H, 1e-7)


@pytest.mark.usefixtures("x64")
def test_hvp_and_block_match_dense_hessian():
    f, w = small_mlp_loss("gelu", "ce")
    _, _, H = dense_eigh(f, w)
    rng = np.random.default_rng(1)
    V = rng.normal(size=(w.size, 4))
    op = as_operator(f, w)
    np.testing.assert_allclose(op.mv(jnp.asarray(V[:, 0])), H @ V[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(op.mm(jnp.asarray(V)), H @ V, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    "spectrum",
    [
        # clustered top eigenvalues
        np.concatenate([[10.0, 9.99, 9.98, 9.97], np.linspace(-1, 3, 56)]),
        # a large negative eigenvalue must not be mistaken for the top (largest algebraic)
        np.concatenate([[4.0, 3.5], np.linspace(-0.5, 1.0, 57), [-100.0]]),
        # k larger than the number of positive eigenvalues (a zero, then negatives)
        np.concatenate([[2.0, 1.0, 0.0], -np.linspace(0.1, 5, 57)]),
    ],
    ids=["clustered", "large-negative", "few-positive"],
)
@pytest.mark.parametrize("k", [1, 2, 5])
def test_known_spectra(spectrum, k):
    _, A = quadratic_with_spectrum(spectrum, seed=k)  # A traced: one compiled solver per k
    f = Objective.from_data_fn(_quadratic_form, A, np.zeros(spectrum.size), dtype="float64")
    w = jnp.zeros(spectrum.size)
    res = top_eigenpairs(f, w, k=k, tol=1e-10)
    true = np.sort(spectrum)[::-1][:k]
    np.testing.assert_allclose(res.values, true, atol=1e-8 * np.abs(spectrum).max())
    assert np.all(np.abs(np.asarray(res.values) - true) <= np.asarray(res.error_bound) + 1e-9)


@pytest.mark.usefixtures("x64")
def test_bottom_eigenpairs_find_most_negative():
    spectrum = np.concatenate([[5.0, 4.0], np.linspace(-1, 1, 30), [-7.0, -9.0]])
    f, A = quadratic_with_spectrum(spectrum)
    res = bottom_eigenpairs(f, jnp.zeros(spectrum.size), k=2, tol=1e-10)
    np.testing.assert_allclose(res.values, [-9.0, -7.0], atol=1e-8)
    V = np.asarray(res.vectors)
    true_res = np.linalg.norm(np.asarray(A) @ V - V * np.asarray(res.values), axis=0)
    np.testing.assert_allclose(true_res, res.residuals, atol=1e-9)
    assert np.all(true_res < 1e-3)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("solver", [LOBPCG(), Power()])
def test_block_methods_on_separated_spectrum(solver):
    spectrum = np.concatenate([[10.0, 6.0], np.linspace(0, 2, 48)])
    f, A = quadratic_with_spectrum(spectrum)
    res = top_eigenpairs(f, jnp.zeros(50), k=2, solver=solver, tol=1e-8)
    np.testing.assert_allclose(res.values, [10.0, 6.0], rtol=1e-6)
    V = np.asarray(res.vectors)
    true_res = np.linalg.norm(np.asarray(A) @ V - V * np.asarray(res.values), axis=0)
    np.testing.assert_allclose(res.residuals, true_res, atol=1e-12)
    # `converged` is judged on the certificate, not on the method's own stopping rule
    ok = np.asarray(res.error_bound) <= 1e-8 * np.abs(np.asarray(res.values))
    assert bool(res.converged) == bool(np.all(ok))
    assert int(res.matvecs) > 0


@pytest.mark.usefixtures("x64")
def test_repeated_eigenvalue_lanczos_gives_one_copy_lobpcg_both():
    # the documented limit of single-vector Krylov methods, and the documented remedy
    spectrum = np.concatenate([[5.0, 5.0, 3.0], np.linspace(0, 1, 37)])
    f, _ = quadratic_with_spectrum(spectrum)
    lz = top_eigenpairs(f, jnp.zeros(40), k=2, tol=1e-9)
    np.testing.assert_allclose(lz.values, [5.0, 3.0], rtol=1e-7)
    res = top_eigenpairs(f, jnp.zeros(40), k=2, solver=LOBPCG(), tol=1e-9)
    np.testing.assert_allclose(res.values, [5.0, 5.0], rtol=1e-7)


def _unused():
    spectrum = np.concatenate([[5.0, 5.0], np.linspace(0, 1, 38)])
    f, _ = quadratic_with_spectrum(spectrum)
    res = top_eigenpairs(f, jnp.zeros(40), k=2, solver=LOBPCG(), tol=1e-9)
    np.testing.assert_allclose(res.values, [5.0, 5.0], rtol=1e-7)


@pytest.mark.usefixtures("x64")
def test_power_baseline_is_largest_magnitude():
    # documents the classic failure that Lanczos avoids: |-100| beats 4
    spectrum = np.concatenate([[4.0], np.linspace(0, 1, 28), [-100.0]])
    f, _ = quadratic_with_spectrum(spectrum)
    res = top_eigenpairs(f, jnp.zeros(30), k=1, solver=Power(), tol=1e-10)
    assert float(res.values[0]) == pytest.approx(-100.0, rel=1e-6)
    assert float(top_eigenpairs(f, jnp.zeros(30), k=1).values[0]) == pytest.approx(4.0)


@pytest.mark.usefixtures("x64")
def test_warm_start_from_block_and_budget():
    spectrum = np.concatenate([[10.0, 8.0, 7.0], np.linspace(0, 3, 97)])
    f, _ = quadratic_with_spectrum(spectrum)
    w = jnp.zeros(100)
    cold = top_eigenpairs(f, w, k=3, tol=1e-8)
    warm = top_eigenpairs(f, w, k=3, tol=1e-8, v0=cold.vectors)
    assert int(warm.matvecs) < int(cold.matvecs)
    np.testing.assert_allclose(warm.values, [10.0, 8.0, 7.0], rtol=1e-8)
    capped = top_eigenpairs(f, w, k=1, tol=1e-14, max_matvecs=3)
    assert int(capped.matvecs) == 3 and not bool(capped.converged)


def _rotated_pair_start(A, angle, noise, seed=0):
    """The top two eigenvectors of A rotated by ``angle`` inside their plane, plus noise."""
    vals, vecs = np.linalg.eigh(np.asarray(A))
    q1, q2 = vecs[:, -1], vecs[:, -2]
    c, s = np.cos(angle), np.sin(angle)
    rng = np.random.default_rng(seed)
    block = np.stack([c * q1 + s * q2, -s * q1 + c * q2], axis=1)
    return block + noise * rng.normal(size=block.shape) / np.sqrt(A.shape[0])


def test_block_start_resolves_a_close_pair_at_once():
    # lambda_1, lambda_2 4% apart (as along the benchmark's GD trajectory): a start block holding
    # both (rotated) vectors resolves them in a few products; their sum as one vector cannot.
    spectrum = np.concatenate([[1.0, 0.96], np.linspace(-0.1, 0.5, 198)])
    f, A = quadratic_with_spectrum(spectrum, seed=3)
    w = jnp.zeros(200)
    block = _rotated_pair_start(A, angle=0.7, noise=1e-3)
    res = top_eigenpairs(f, w, k=1, tol=1e-3, v0=block)
    assert bool(res.converged)
    check_result(res, [1.0], np.asarray(A), 1e-3)
    summed = top_eigenpairs(f, w, k=1, tol=1e-3, v0=block.sum(axis=1))
    assert int(res.matvecs) <= 3 < int(summed.matvecs)


@pytest.mark.usefixtures("x64")
def test_block_start_with_dependent_columns_and_restarts():
    # Two equal columns (one is replaced at random) and a slow spectrum that forces thick restarts
    # while the block's pending rows are carried along.
    spectrum = np.concatenate([[10.0, 9.9, 9.8], np.linspace(0.0, 9.6, 197)])
    f, A = quadratic_with_spectrum(spectrum, seed=4)
    w = jnp.zeros(200)
    rng = np.random.default_rng(0)
    block = rng.normal(size=(200, 4))
    block[:, 1] = block[:, 0]
    res = top_eigenpairs(f, w, k=3, tol=1e-9, v0=block)
    assert bool(res.converged) and int(res.matvecs) > 40  # more than one basis of m_max = 40
    check_result(res, [10.0, 9.9, 9.8], np.asarray(A), 1e-8)


def test_float32_objective_reaches_float32_accuracy():
    f, w = small_mlp_loss("tanh", "mse")
    vals, _, _ = dense_eigh(f, w)
    obj = Objective.from_fn(f, w)  # float32 by default
    res = top_eigenpairs(obj, obj.w0, k=2, tol=1e-4)
    assert res.values.dtype == jnp.float32
    np.testing.assert_allclose(res.values, vals[:2], rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"k": 0}, "k"),
        ({"k": 31}, "k"),
        ({"k": 1.5}, "k"),
        ({"solver": "arpack"}, "solver"),
        ({"solver": Lanczos(basis_size=3), "k": 3}, "basis_size"),
        ({"solver": LOBPCG(), "k": 6}, "k"),
        ({"tol": -1.0}, "tol"),
        ({"v0": np.ones(7)}, "v0.shape"),
        ({"v0": np.zeros(30)}, "v0"),
        ({"max_matvecs": 0}, "max_matvecs"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, field):
    f, _ = quadratic_with_spectrum(np.linspace(1, 2, 30))
    with pytest.raises(ConfigError) as info:
        top_eigenpairs(f, jnp.zeros(30), **kwargs)
    assert info.value.field == field
    assert "expected" in str(info.value)


def test_bad_points_raise_clear_errors():
    f, _ = quadratic_with_spectrum(np.linspace(1, 2, 30))
    with pytest.raises(ConfigError, match="finite"):
        top_eigenpairs(f, jnp.full(30, jnp.nan))
    with pytest.raises(ConfigError, match="w.shape"):
        top_eigenpairs(Objective.from_fn(f, np.zeros(30)), jnp.zeros(29))


@pytest.mark.usefixtures("x64")
@settings(max_examples=12, deadline=None)
@given(
    # distinct eigenvalues (single-vector Lanczos returns one copy of a repeated one, see above)
    st.lists(st.integers(-1000, 1000), min_size=16, max_size=16, unique=True),
    st.sampled_from([1, 3]),
    st.integers(0, 10_000),
)
def test_random_spectra_property(ints, k, seed):
    eigs = np.asarray(ints) / 100.0
    _, A = quadratic_with_spectrum(eigs, seed=seed)
    # A as traced data: every example reuses the solver compiled for its k
    f = Objective.from_data_fn(_quadratic_form, A, np.zeros(eigs.size), dtype="float64")
    res = top_eigenpairs(f, jnp.zeros(eigs.size), k=k, tol=1e-10, key=jax.random.PRNGKey(seed))
    true = np.sort(eigs)[::-1][:k]
    scale = max(np.abs(eigs).max(), 1e-3)
    np.testing.assert_allclose(res.values, true, atol=1e-7 * scale)
