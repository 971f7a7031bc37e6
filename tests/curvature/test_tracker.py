"""EigenTracker along trajectories: warm starts, alignment, growing k, honest bounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import ConfigError, Objective
from eoslab.curvature import EigenTracker, align_vectors, top_eigenpairs
from helpers import small_mlp_loss


def gd_trajectory(f, w, lr, steps):
    g = jax.jit(jax.grad(f))
    out = [w]
    for _ in range(steps):
        w = w - lr * g(w)
        out.append(w)
    return out


def test_warm_tracking_is_cheaper_than_cold_and_certified():
    f, w0 = small_mlp_loss("tanh", "mse", n=40, hidden=8, seed=3)
    traj = gd_trajectory(f, w0, 0.05, 30)
    tr = EigenTracker(f, k=1, tol=1e-3)
    hessian = jax.jit(jax.hessian(f))  # one compilation for the 31 points
    warm, cold = [], []
    for t, w in enumerate(traj):
        r = tr.update(w)
        c = top_eigenpairs(f, w, k=1, tol=1e-3, key=jax.random.PRNGKey(t))
        warm.append(int(r.matvecs))
        cold.append(int(c.matvecs))
        true = np.linalg.eigvalsh(np.asarray(hessian(w)))[-1]
        # the certificate covers the true error and meets the tolerance
        assert abs(float(r.values[0]) - true) <= float(r.error_bound[0]) + 1e-12
        assert abs(float(r.values[0]) - true) <= 1e-3 * true
    assert np.median(warm[1:]) < np.median(cold[1:])
    assert np.median(warm[1:]) <= 5
    assert tr.total_matvecs == sum(warm)


@pytest.mark.usefixtures("x64")
def test_signs_and_subspaces_stay_aligned():
    f, w0 = small_mlp_loss("gelu", "mse", n=30, seed=2)
    traj = gd_trajectory(f, w0, 0.02, 10)
    tr = EigenTracker(f, k=3, tol=1e-8)
    prev = None
    for w in traj:
        V = np.asarray(tr.update(w).vectors)
        if prev is not None:
            assert np.all(np.sum(V * prev, axis=0) > 0.9)
        prev = V


@pytest.mark.usefixtures("x64")
def test_align_vectors_rotates_within_a_cluster():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    old = Q[:, :2]
    c, s = np.cos(0.7), np.sin(0.7)
    new = old @ np.array([[c, -s], [s, c]]) * np.array([1.0, -1.0])
    out = np.asarray(align_vectors(jnp.asarray(new), jnp.asarray(old), jnp.array([1.0, 1.0]), 1e-3))
    np.testing.assert_allclose(out, old, atol=1e-12)
    # distinct eigenvalues: only signs change
    out = np.asarray(
        align_vectors(jnp.asarray(-old), jnp.asarray(old), jnp.array([2.0, 1.0]), 1e-3)
    )
    np.testing.assert_allclose(out, old, atol=1e-12)


@pytest.mark.usefixtures("x64")
def test_k_grows_when_the_next_eigenvalue_crosses_the_threshold():
    # H(t) = diag(10, 5 + t, spread): lambda_2 rises past 7.5 as t grows
    base = np.concatenate([[10.0, 5.0], np.linspace(0, 2, 28)])

    def f(w):
        t = w[-1]
        x = w[:-1]
        d = jnp.asarray(base).at[1].add(t)
        return 0.5 * jnp.sum(d * x**2)

    tr = EigenTracker(f, k=1, tol=1e-8, grow_above=7.5, max_k=3)
    x = jnp.zeros(30)
    for t in [0.0, 1.0, 2.0, 3.0]:
        res = tr.update(jnp.append(x, t))
    assert tr.k == 2
    np.testing.assert_allclose(res.values, [10.0, 8.0], rtol=1e-8)


def test_tracker_rejects_bad_arguments():
    f = lambda w: jnp.sum(w**2)
    with pytest.raises(ConfigError, match="k="):
        EigenTracker(f, k=0)
    with pytest.raises(ConfigError, match="tol"):
        EigenTracker(f, tol=0.0)
    with pytest.raises(ConfigError, match="max_k"):
        EigenTracker(f, k=3, max_k=2)


@pytest.mark.usefixtures("x64")
def test_extrapolated_start_follows_a_rotating_eigenvector():
    # H(t) = Q R(t) diag(s) R(t)^T Q^T with the top eigenvector turning at a constant rate in the
    # plane of q1 and q3: the start 2 v_t - v_{t-1} is second-order accurate, the plain one first.
    d, rate = 60, 0.01
    s = np.concatenate([[1.0, 0.97], np.linspace(0.0, 0.6, d - 2)])
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(d, d)))

    def hessian(t):
        c, sn = np.cos(rate * t), np.sin(rate * t)
        R = np.eye(d)
        R[[0, 0, 2, 2], [0, 2, 0, 2]] = [c, -sn, sn, c]
        U = Q @ R
        return jnp.asarray(U @ np.diag(s) @ U.T)

    quad = lambda w, A: 0.5 * w @ A @ w  # one function: every update reuses one compilation

    def run(extrapolate):
        tr = EigenTracker(
            Objective.from_data_fn(quad, hessian(0), jnp.zeros(d), dtype="float64"), k=1, tol=1e-6
        )
        spent = []
        for t in range(12):
            tr.loss = Objective.from_data_fn(quad, hessian(t), jnp.zeros(d), dtype="float64")
            if not extrapolate:
                tr.previous = None
            r = tr.update(jnp.zeros(d))
            np.testing.assert_allclose(r.values[0], 1.0, rtol=1e-6)
            spent.append(int(r.matvecs))
        return sum(spent[2:])

    assert run(extrapolate=True) < run(extrapolate=False)
