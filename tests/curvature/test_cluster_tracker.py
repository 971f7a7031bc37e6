"""The certified cluster at every step (`ClusterTracker`, ``Probes(cluster_above=...)``): its block
against closed-form eigenvalues that cross the cutoff, and against dense Hessians along GD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import Objective
from eoslab.curvature.step_tracker import ClusterTracker
from eoslab.dynamics.optimizer import Optimizer
from eoslab.dynamics.rules import GD
from eoslab.errors import ConfigError
from eoslab.runner import Probes, run
from helpers import small_mlp_loss

D = 60
TOP = np.array([16.0, 15.0, 14.0, 13.0, 12.0, 11.0])
BULK = np.linspace(0.1, 6.0, D - TOP.size)[::-1]
THRESHOLD, FRAC = 16.0, 0.75  # cutoff 12


def spectrum(t: int) -> np.ndarray:
    """H_t's eigenvalues: the top six scaled by 1 + 0.3 sin(0.05 t), so they cross the cutoff
    12 one by one, down (steps ~40-80) and up again (~105-140); the bulk stays below 6."""
    return np.concatenate([TOP * (1 + 0.3 * np.sin(0.05 * t)), BULK])


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("chunk", [1, 3])
def test_the_block_grows_and_shrinks_with_the_eigenvalues_above_the_cutoff(chunk):
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(D, D)))
    tr = ClusterTracker(max_k=8, frac=FRAC, tol=1e-6, max_rounds=6, chunk=chunk)
    top = np.linalg.eigh(Q @ np.diag(spectrum(0)) @ Q.T)[1][:, ::-1][:, :2]
    st = tr.warm(jnp.asarray(top), jax.random.key(0), 20.0, size=1)
    step = jax.jit(lambda H, st: tr.update(lambda X: H @ X, st, THRESHOLD))
    sizes = []
    for t in range(150):
        lam = spectrum(t)
        st, eig = step(jnp.asarray(Q @ np.diag(lam) @ Q.T), st)
        n, want = int(eig.size), np.sort(lam)[::-1]
        vals, bounds = np.asarray(eig.values), np.asarray(eig.error_bound)
        # each certified value within its bound of the eigenvalue of its rank
        assert np.all(np.abs(vals[:n] - want[:n]) <= bounds[:n] * (1 + 1e-9) + 1e-12), t
        assert np.all(np.isnan(vals[n:]))
        expected = max(1, int(np.sum(lam >= FRAC * THRESHOLD)))
        if t > 0 and np.min(np.abs(lam - FRAC * THRESHOLD)) > 0.02 * FRAC * THRESHOLD:
            assert n == expected, (t, n, expected)
            assert bool(eig.converged)
            assert float(eig.next_value) < FRAC * THRESHOLD
        sizes.append(n)
    sizes = np.asarray(sizes)
    assert sizes.max() == 6 and sizes.min() == 1  # it grew to all six, shrank to one, grew again
    assert np.any(np.diff(sizes[120:]) > 0)


@pytest.mark.usefixtures("x64")
def test_every_step_cluster_is_within_its_bounds_of_the_dense_eigenvalues():
    """GD at lr 0.5 on a small tanh MLP: every step's block (eigenvalues above 0.5 x 2/lr = 2)
    against eigvalsh of jax.hessian at the same point, and the block's size against the count."""
    loss, w0 = small_mlp_loss(n=24, hidden=6)
    obj = Objective.from_fn(loss, w0, dtype="float64")
    probes = Probes(every_step=True, tol=1e-4, alignment=False, cluster_above=0.5, cluster_max_k=6)
    r = run(Optimizer(GD(0.5)), obj, 30, probe_every=30, probes=probes, keep_points=True)
    m = r.metrics
    hessian = jax.jit(jax.hessian(loss))
    sizes, converged = set(), 0
    for w, eigs, errs, n in zip(m["w"], m["eigs"], m["eigs_error"], m["cluster_size"], strict=True):
        dense = np.sort(np.linalg.eigvalsh(np.asarray(hessian(jnp.asarray(w)))))[::-1]
        n = int(n)
        vals, bounds = np.asarray(eigs)[:n], np.asarray(errs)[:n]
        assert np.all(np.abs(vals - dense[:n]) <= bounds * (1 + 1e-9) + 1e-12)
        converged += bool(np.all(bounds <= 1e-4 * np.abs(dense[:n])))
        gap = np.min(np.abs(dense - 2.0))
        if gap > 0.05:
            assert n == int(np.sum(dense >= 2.0))
        sizes.add(n)
    assert len(sizes) > 1  # the block changed size along the run
    assert converged >= 0.9 * len(m)  # the others report the bound the rounds reached
    assert m["sharpness"].to_numpy() == pytest.approx(np.stack(m["eigs"])[:, 0])


def test_cluster_config_is_checked_before_any_work():
    with pytest.raises(ConfigError, match="cluster_above"):
        Probes(every_step=True, cluster_above=1.5)
    with pytest.raises(ConfigError, match="grow_above"):
        Probes(cluster_above=0.75, grow_above=10.0)
    with pytest.raises(ConfigError, match="frac"):
        ClusterTracker(frac=0.0)
    with pytest.raises(ConfigError, match="max_k"):
        ClusterTracker(max_k=0)


@pytest.mark.usefixtures("x64")
def test_the_gap_bound_holds_for_random_blocks_when_nothing_above_the_cutoff_is_outside():
    """The quadratic gap bound against dense eigenvalues: random symmetric matrices with a
    cluster of four above the cutoff (the fifth eigenvalue at or below it, up to touching it),
    the block's vectors the true ones perturbed by up to 0.3 rad. One round (max_rounds=1) so
    the residual bound is the alternative; each value within its bound of the eigenvalue of its
    rank, and the gap bound the smaller one on most draws."""
    rng = np.random.default_rng(1)
    n, cutoff = 40, 9.0
    tr = ClusterTracker(max_k=6, frac=1.0, tol=1e-9, max_rounds=1)
    upd = jax.jit(lambda H, st: tr.update(lambda X: H @ X, st, cutoff))
    tighter = 0
    for trial in range(60):
        top = 10.0 + rng.uniform(0, 1.5, 4)
        below = cutoff - rng.choice([0.0, 0.01, 0.3, 2.0]) - rng.uniform(0, 8, n - 4)
        lam = np.sort(np.concatenate([top, below]))[::-1]
        Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
        H = Q @ np.diag(lam) @ Q.T
        noise = rng.choice([1e-4, 1e-2, 0.1, 0.3])
        V = Q[:, :7] + noise * rng.normal(size=(n, 7)) / np.sqrt(n)
        st = tr.warm(jnp.asarray(V), jax.random.key(trial), float(np.abs(lam).max()), 4)
        _, eig = upd(jnp.asarray(H), st)
        s = int(eig.size)
        vals, bounds = np.asarray(eig.values)[:s], np.asarray(eig.error_bound)[:s]
        assert s == 4, trial
        assert np.all(np.abs(vals - lam[:s]) <= bounds), (trial, vals - lam[:s], bounds)
        # the residual bound of each value, from the dense matrix: Ritz vectors of the block
        Qb = np.linalg.qr(V[:, :5])[0]
        th, S = np.linalg.eigh(Qb.T @ H @ Qb)
        U = Qb @ S[:, ::-1][:, :4]
        resid = np.linalg.norm(H @ U - U * th[::-1][:4], axis=0)
        tighter += bool(np.all(bounds < 0.5 * resid))
    assert tighter >= 20


@pytest.mark.usefixtures("x64")
def test_the_gap_bound_along_gd_on_a_small_mlp_against_dense_hessians():
    """GD on a small tanh MLP in a clustered regime (the block: the top eigenvalues above a
    cutoff set between the 3rd and 4th at w_0, a fraction of 2/lr): every step's block values,
    float64, against eigvalsh of jax.hessian. Where no eigenvalue above the cutoff lies outside
    the block (the gap bound's hypothesis, checked on the dense spectrum) every value is within
    its bound; one round a step (max_rounds=1), so that the bounds are the first round's."""
    loss, w0 = small_mlp_loss(n=40, hidden=12, dout=4, seed=3)
    hessian = jax.jit(jax.hessian(loss))
    lam0 = np.sort(np.linalg.eigvalsh(np.asarray(hessian(w0))))[::-1]
    lr = 1.9 / lam0[0]
    frac = 0.5 * (lam0[2] + lam0[3]) * lr / 2
    tr = ClusterTracker(max_k=8, frac=float(frac), tol=1e-6, max_rounds=1)
    H0 = np.asarray(hessian(w0))
    vec = np.linalg.eigh(H0)[1][:, ::-1]
    st = tr.warm(jnp.asarray(vec[:, :9]), jax.random.key(0), float(np.abs(lam0).max()), 3)
    grad = jax.jit(jax.grad(loss))
    residual = ClusterTracker(max_k=8, frac=float(frac), tol=1e-6, max_rounds=1, gap=False)
    upd = jax.jit(lambda H, st: tr.update(lambda X: H @ X, st, 2.0 / lr))
    upd_residual = jax.jit(lambda H, st: residual.update(lambda X: H @ X, st, 2.0 / lr))
    w, checked, quadratic, sizes = w0, 0, 0, set()
    for _ in range(40):
        H = np.asarray(hessian(w))
        dense = np.sort(np.linalg.eigvalsh(H))[::-1]
        _, lin = upd_residual(jnp.asarray(H), st)  # the same subspace, residual bounds only
        st, eig = upd(jnp.asarray(H), st)
        s = int(eig.size)
        sizes.add(s)
        vals, bounds = np.asarray(eig.values)[:s], np.asarray(eig.error_bound)[:s]
        if dense[s] <= frac * 2.0 / lr:
            assert np.all(np.abs(vals - dense[:s]) <= bounds), (vals - dense[:s], bounds)
            checked += 1
            quadratic += bool(np.all(bounds < 0.5 * np.asarray(lin.error_bound)[:s]))
        w = w - lr * grad(w)
    assert checked >= 30 and max(sizes) >= 3 and len(sizes) > 1  # a block of 3 that shrank
    assert quadratic >= 10  # the gap bound, not the residual bound, certified those steps


def test_a_checkpoint_without_the_prediction_history_resumes_with_an_empty_one():
    from types import SimpleNamespace

    from eoslab.runner.probes import StepCluster

    tr = ClusterTracker(max_k=2)
    st = tr.init(10, jnp.float32, jax.random.key(0))
    st = st._replace(past=st.past + 1.0, count=jnp.asarray(3, jnp.int32))
    probe = StepCluster(tr)
    at = SimpleNamespace(objective=SimpleNamespace(dtype=jnp.float32))
    arrays = probe.arrays(st)
    back = probe.load(arrays, at)
    assert int(back.count) == 3 and np.all(np.asarray(back.past) == 1.0)
    older = probe.load({k: arrays[k] for k in ("vectors", "size", "norm")}, at)
    assert int(older.count) == 0 and older.past.shape == (4, 3, 10)
    assert np.all(np.asarray(older.past) == 0.0)
    np.testing.assert_array_equal(np.asarray(older.vectors), np.asarray(st.vectors))
    with pytest.raises(ConfigError, match="resume"):
        probe.load({"vectors": arrays["vectors"]}, at)
