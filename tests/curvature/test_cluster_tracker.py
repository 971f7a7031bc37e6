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
def test_the_block_grows_and_shrinks_with_the_eigenvalues_above_the_cutoff():
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(D, D)))
    tr = ClusterTracker(max_k=8, frac=FRAC, tol=1e-6, max_rounds=6)
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
