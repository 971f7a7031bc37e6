"""Third derivatives, traces, spectral densities and stableness against independent computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import ConfigError
from eoslab.curvature import (
    grad_top_eigenvalue,
    hutchinson_trace,
    spectral_density,
    stableness,
    top_eigenpairs,
)
from helpers import dense_eigh, quadratic_with_spectrum, small_mlp_loss


def lam1_dense(f, w):
    return np.linalg.eigvalsh(np.asarray(jax.hessian(f)(w)))[-1]


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("activation", ["tanh", "gelu"])
def test_grad_top_eigenvalue_matches_finite_differences(activation):
    f, w = small_mlp_loss(activation, "mse", n=20, hidden=5)
    _, vecs, _ = dense_eigh(f, w)
    g = np.asarray(grad_top_eigenvalue(f, w, vecs[:, 0]))
    rng = np.random.default_rng(0)
    eps = 1e-5
    for _ in range(3):
        u = rng.normal(size=w.size)
        u /= np.linalg.norm(u)
        fd = (lam1_dense(f, w + eps * u) - lam1_dense(f, w - eps * u)) / (2 * eps)
        assert np.dot(g, u) == pytest.approx(fd, rel=1e-5, abs=1e-8)
    glog = np.asarray(grad_top_eigenvalue(f, w, vecs[:, 0], log=True))
    np.testing.assert_allclose(glog * lam1_dense(f, w), g, rtol=1e-10)


def test_grad_top_eigenvalue_on_valley_closed_form():
    # L = (1 + x^2) y^2: on y = 0, lambda_1 = 2 (1 + x^2) along e_y, so grad lambda_1 = (4x, 0)
    f = lambda w: (1 + w[0] ** 2) * w[1] ** 2
    w = jnp.array([1.7, 0.0])
    np.testing.assert_allclose(grad_top_eigenvalue(f, w, jnp.array([0.0, 1.0])), [6.8, 0.0])


def test_hutchinson_matches_exact_trace():
    spectrum = np.concatenate([np.linspace(0, 5, 60), [-2.0] * 4])
    f, A = quadratic_with_spectrum(spectrum)
    w = jnp.zeros(spectrum.size)
    est = hutchinson_trace(f, w, 400, jax.random.PRNGKey(0))
    exact = float(np.trace(np.asarray(A)))
    assert abs(float(est.value) - exact) <= 4 * float(est.stderr)
    assert 0 < float(est.stderr) < 0.05 * abs(exact)
    assert est.matvecs == 400


@pytest.mark.usefixtures("x64")
def test_hutchpp_is_exact_on_low_rank_and_beats_hutchinson():
    # rank-5 Hessian: the sketch captures all of it, so Hutch++ is exact
    spectrum = np.concatenate([[9.0, 7.0, 5.0, 3.0, 1.0], np.zeros(55)])
    f, A = quadratic_with_spectrum(spectrum)
    w = jnp.zeros(60)
    pp = hutchinson_trace(f, w, 30, jax.random.PRNGKey(1), method="hutch++")
    assert float(pp.value) == pytest.approx(25.0, rel=1e-10)
    errs_h, errs_pp = [], []
    decay = 10.0 * 0.7 ** np.arange(60)
    g, B = quadratic_with_spectrum(decay, seed=3)
    for s in range(10):
        key = jax.random.PRNGKey(10 + s)
        errs_h.append(abs(float(hutchinson_trace(g, w, 30, key).value) - decay.sum()))
        errs_pp.append(
            abs(float(hutchinson_trace(g, w, 30, key, method="hutch++").value) - decay.sum())
        )
    assert np.mean(errs_pp) < 0.2 * np.mean(errs_h)


@pytest.mark.usefixtures("x64")
def test_slq_quadrature_is_exact_per_probe_and_moments_match():
    spectrum = np.linspace(-1, 4, 40)
    f, A = quadratic_with_spectrum(spectrum)
    A = np.asarray(A)
    w = jnp.zeros(40)
    key = jax.random.PRNGKey(0)
    dens = spectral_density(f, w, key, n_probes=3, lanczos_steps=12)
    probes = np.asarray(jax.random.rademacher(key, (3, 40), jnp.float64))
    # Gauss quadrature with m nodes is exact for polynomials of degree < 2m
    for p in (1, 2, 5, 9):
        per_probe = np.sum(np.asarray(dens.weights) * np.asarray(dens.nodes) ** p, axis=1)
        exact = [v @ np.linalg.matrix_power(A, p) @ v / (v @ v) for v in probes]
        np.testing.assert_allclose(per_probe, exact, rtol=1e-8)
    many = spectral_density(f, w, jax.random.PRNGKey(1), n_probes=300, lanczos_steps=10)
    for p in (1, 2):
        exact = np.mean(spectrum**p)
        assert float(many.moment(p)) == pytest.approx(exact, rel=0.05, abs=0.05)
    grid = np.linspace(-3, 6, 400)
    mass = np.trapezoid(np.asarray(many.density(grid, 0.2)), grid)
    assert mass == pytest.approx(1.0, rel=1e-2)


@pytest.mark.usefixtures("x64")
def test_stableness_on_quadratic_is_eta_lambda1():
    f, _ = quadratic_with_spectrum(np.concatenate([[6.0], np.linspace(0, 2, 19)]))
    w = jnp.asarray(np.random.default_rng(0).normal(size=20))
    out = stableness(f, w, 0.3, n_points=5, tol=1e-10)
    assert float(out.value) == pytest.approx(0.3 * 6.0, rel=1e-8)


@pytest.mark.usefixtures("x64")
def test_stableness_on_valley_matches_dense_segment():
    # L = (1 + x^2) y^2: the Hessian changes along the step, the sup is not at an endpoint
    f = lambda w: (1 + w[0] ** 2) * w[1] ** 2
    w = jnp.array([1.5, 0.4])
    eta = 0.2
    out = stableness(f, w, eta, n_points=11, tol=1e-12)
    g = jax.grad(f)(w)
    lams = [lam1_dense(f, w - s * g) for s in np.linspace(0, eta, 11)]
    np.testing.assert_allclose(out.sharpness, lams, rtol=1e-9)
    assert float(out.value) == pytest.approx(eta * max(lams), rel=1e-9)
    with pytest.raises(ConfigError, match="eta"):
        stableness(f, w, -1.0)


def test_trace_and_density_bad_arguments():
    f, _ = quadratic_with_spectrum(np.linspace(0, 1, 10))
    w = jnp.zeros(10)
    with pytest.raises(ConfigError, match="n_probes"):
        hutchinson_trace(f, w, 0, jax.random.PRNGKey(0))
    with pytest.raises(ConfigError, match="method"):
        hutchinson_trace(f, w, 5, jax.random.PRNGKey(0), method="girard")
    with pytest.raises(ConfigError, match="lanczos_steps"):
        spectral_density(f, w, jax.random.PRNGKey(0), lanczos_steps=0)


@pytest.mark.usefixtures("x64")
def test_top_eigenpairs_accepts_objective_and_callable_alike():
    from eoslab import Objective

    f, w = small_mlp_loss("tanh", "ce", n=10)
    obj = Objective.from_fn(f, w, dtype="float64")
    a = top_eigenpairs(obj, w, k=2, tol=1e-10)
    b = top_eigenpairs(f, w, k=2, tol=1e-10)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-9)
