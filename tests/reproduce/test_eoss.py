"""`eoslab reproduce eoss` (Edge of Stochastic Stability): its pieces against independent
computations, and its quick variant's table.

The references here use the test's own tanh-MLP forward pass and half-MSE on the raw parameter
pytree (flattened with ``ravel_pytree``), its own Hessian-vector products and its own random
batches (numpy), never eoslab's estimators or objective.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.sparse.linalg as sla
from jax.flatten_util import ravel_pytree

from eoslab import ConfigError, data, models, reproduce
from eoslab.data import builtin
from eoslab.reproduce.andreyev2024 import (
    QUICK,
    EossSettings,
    eoss_problem,
    eoss_rows,
    per_run,
    sgd_curvature_run,
    summarize,
)

TINY = EossSettings(
    n=64,
    widths=(6,),
    init_scale=0.5,
    lr=0.3,
    batch_sizes=(4, 16),
    steps=20,
    probe_every=10,
    rel_err=0.05,
    max_batches=128,
)


def reference(s: EossSettings, seed: int = 0):
    """The test's own loss(w, idx) for settings ``s``: tanh MLP (init from ``seed``) on the first
    ``s.n`` mnist-5k digits, each pixel centred and all divided by one rms, 1/|B| sum_i 1/2
    |f(x_i) - e_{y_i}|^2, float32."""
    raw = builtin.mnist_5k()[0][: s.n].reshape(s.n, -1).astype(np.float64)
    centred = raw - raw.mean(axis=0)
    x = jnp.asarray(centred / np.sqrt(np.mean(centred**2)), jnp.float32)  # global scaling
    ds = data.load("mnist-5k", n=s.n)
    y = jax.nn.one_hot(ds.y_train, 10, dtype=jnp.float32)
    _, params = models.create(
        "mlp", jax.random.key(seed), ds.input_shape, 10, widths=s.widths, activation="tanh"
    )
    params = jax.tree.map(lambda p: s.init_scale * p, params)
    w0, unravel = ravel_pytree(params)

    def loss(w, idx):
        p = unravel(w)
        h = x[idx]
        for i in range(len(s.widths)):
            h = jnp.tanh(h @ p[f"dense{i}"]["w"] + p[f"dense{i}"]["b"])
        out = h @ p["head"]["w"] + p["head"]["b"]
        return 0.5 * jnp.mean(jnp.sum((out - y[idx]) ** 2, axis=-1))

    return loss, w0


def ref_batch_sharpness(loss, w, n, b, batches, seed):
    """Mean and standard error of g_B^T H_B g_B / |g_B|^2 over ``batches`` random b-subsets."""
    rng = np.random.default_rng(seed)
    idx = jnp.asarray(np.stack([np.sort(rng.choice(n, b, replace=False)) for _ in range(batches)]))

    def one(i):
        f = jax.grad(lambda v: loss(v, i))
        g, hg = jax.jvp(f, (w,), (f(w),))
        return jnp.vdot(g, hg) / jnp.vdot(g, g)

    v = np.asarray(jax.lax.map(one, idx), np.float64)
    return v.mean(), v.std(ddof=1) / math.sqrt(v.size)


def ref_lambda_max(loss, w, n):
    full = jnp.arange(n)
    hvp = jax.jit(lambda v: jax.jvp(jax.grad(lambda u: loss(u, full)), (w,), (v,))[1])
    op = sla.LinearOperator(
        (w.size, w.size), matvec=lambda v: np.asarray(hvp(jnp.asarray(v, w.dtype)), np.float64)
    )
    return float(sla.eigsh(op, k=1, which="LA", tol=1e-6)[0][0])


def test_bad_settings_name_the_field():
    base = dataclasses.asdict(TINY)
    for field, bad in (
        ("batch_sizes", (16, 4)),
        ("batch_sizes", (4,)),
        ("batch_sizes", (4, 128)),
        ("lr", -0.1),
        ("widths", ()),
        ("init_scale", 0.0),
        ("probe_every", 11),
        ("steps", 1),
        ("seeds", ()),
        ("seeds", (0, 0)),
        ("scaling", "pixel"),
    ):
        with pytest.raises(ConfigError, match=field):
            EossSettings(**{**base, field: bad})


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
def test_problem_and_run_against_the_test_s_own_computation():
    with jax.enable_x64(False):
        obj = eoss_problem(TINY, seed=3)
        loss, w0 = reference(TINY, seed=3)
        np.testing.assert_array_equal(np.asarray(obj.w0), np.asarray(w0))
        frame, w_last = sgd_curvature_run(obj, TINY, 4, seed=3)
        assert list(frame["step"]) == [0, 10, 20]
        assert set(frame["seed"]) == {3} and set(frame["batch_size"]) == {4}
        last = frame.iloc[-1]
        w = jnp.asarray(w_last)
        # the loss and lambda_max at the saved point, recomputed
        assert last["loss"] == pytest.approx(float(loss(w, jnp.arange(TINY.n))), rel=1e-5)
        lam = ref_lambda_max(loss, w, TINY.n)
        assert abs(last["sharpness"] - lam) <= 2e-3 * lam + last["sharpness_error"]
        # the batch sharpness there, from other batches: the same expectation
        mean, se = ref_batch_sharpness(loss, w, TINY.n, 4, 256, seed=1)
        both = math.hypot(se, last["batch_sharpness_stderr"])
        print(
            f"BS {last['batch_sharpness']:.4g} ± {last['batch_sharpness_stderr']:.2g}, "
            f"reference {mean:.4g} ± {se:.2g}, lambda_max {last['sharpness']:.4g} vs {lam:.4g}"
        )
        assert abs(last["batch_sharpness"] - mean) <= 4 * both


def synthetic(b, bs, lam, steps=10, every=1, seed=0):
    s = np.arange(0, steps + 1, every)
    return pd.DataFrame(
        {
            "batch_size": b,
            "seed": seed,
            "step": s,
            "loss": 1.0,
            "sharpness": lam,
            "batch_sharpness": bs,
            "batch_sharpness_stderr": 0.01,
        }
    )


def test_summary_and_rows_on_known_curves():
    s = dataclasses.replace(TINY, lr=0.5, batch_sizes=(4, 16), steps=10, probe_every=1)
    thr = 4.0
    rng = np.random.default_rng(0)
    bs4 = np.r_[np.linspace(1, 3.7, 4), 4 + 0.1 * rng.standard_normal(7)]  # onset at step 3
    bs16 = np.r_[np.linspace(1, 3.5, 5), np.full(6, 3.9)]  # onset at step 5
    lam4, lam16 = np.full(11, 2.0), np.full(11, 3.0)
    frames = pd.concat([synthetic(4, bs4, lam4), synthetic(16, bs16, lam16)])
    summ = summarize(per_run(frames, s), s).set_index("batch_size")
    assert summ.loc[4, "onset_step"] == 3 and summ.loc[16, "onset_step"] == 5
    assert summ.loc[4, "stable_probes"] == 6  # steps 5..10
    assert summ.loc[4, "bs_mean"] == pytest.approx(bs4[5:].mean())
    se = math.hypot(bs4[5:].std(ddof=1) / math.sqrt(6), math.sqrt(6 * 0.01**2) / 6)
    assert summ.loc[4, "bs_mean_stderr"] == pytest.approx(se)
    assert summ.loc[16, "lambda_max_over_threshold"] == pytest.approx(3.0 / thr)
    assert summ.loc[16, "gap"] == pytest.approx(0.9)
    rows = eoss_rows(summ.reset_index(), s)
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    # each kind of row fails when its claim does
    bad = pd.concat(
        [
            synthetic(4, bs4, np.full(11, 4.5)),  # lambda_max above BS
            synthetic(16, np.r_[np.linspace(1, 3.5, 8), np.full(3, 3.6)], lam16),  # late, low
        ]
    )
    failed = [r["quantity"] for r in eoss_rows(summarize(per_run(bad, s), s), s) if not r["ok"]]
    assert any("b=4: lambda_max / batch sharpness" in q for q in failed)
    assert any("b=16: onset" in q for q in failed)
    assert any("b=16: batch sharpness / (2/lr)" in q for q in failed)
    assert any("b=4 below b=16" in q for q in failed)  # 4.5/4 > 3/4: the gap does not grow
    assert not any("b=4: batch sharpness / (2/lr)" in q for q in failed)


def test_seeds_are_averaged_and_a_diverged_run_fails_its_batch_size():
    s = dataclasses.replace(
        TINY, lr=0.5, batch_sizes=(4, 16), steps=10, probe_every=1, seeds=(0, 1, 2)
    )
    runs = {  # (b, seed): (stable-phase BS level, lambda_max level, onset step)
        (4, 0): (3.9, 2.0, 3),
        (4, 1): (4.1, 2.3, 3),
        (4, 2): (4.0, 1.7, 3),
        (16, 0): (3.8, 3.0, 3),
        (16, 1): (4.2, 2.8, 5),
        (16, 2): (3.9, 3.1, 3),
    }
    frames = []
    for (b, seed), (level, lam, onset) in runs.items():
        bs = np.r_[np.linspace(1, 3.5, onset), np.full(11 - onset, level)]
        frames.append(synthetic(b, bs, np.full(11, lam), seed=seed))
    curves = pd.concat(frames)
    summ = summarize(per_run(curves, s), s).set_index("batch_size")
    levels = np.array([runs[(16, k)][0] for k in range(3)])
    assert summ.loc[16, "bs_mean"] == pytest.approx(levels.mean())
    assert summ.loc[16, "bs_mean_stderr"] == pytest.approx(levels.std(ddof=1) / math.sqrt(3))
    lams = np.array([runs[(4, k)][1] for k in range(3)])
    assert summ.loc[4, "lambda_max_mean"] == pytest.approx(lams.mean())
    assert summ.loc[4, "lambda_max_mean_stderr"] == pytest.approx(lams.std(ddof=1) / math.sqrt(3))
    assert summ.loc[16, "onset_step"] == 5 and summ.loc[4, "onset_step"] == 3  # the latest run
    assert (summ["seeds"] == 3).all()
    rows = eoss_rows(summ.reset_index(), s)
    assert all(r["ok"] for r in rows) and "mean over 3 seeds" in rows[0]["quantity"]
    # seed 1 of b=4 diverges at step 4: no stable phase, so b=4's rows fail, b=16's hold
    cut = curves[~((curves["batch_size"] == 4) & (curves["seed"] == 1) & (curves["step"] > 4))]
    summ = summarize(per_run(cut, s), s)
    assert np.isnan(summ.set_index("batch_size").loc[4, "bs_mean"])
    failed = [r["quantity"] for r in eoss_rows(summ, s) if not r["ok"]]
    assert any(q.startswith("b=4: batch sharpness") for q in failed)
    assert not any(q.startswith("b=16") for q in failed)


@pytest.mark.slow  # 4,000 digits, 9 runs of 4,000 SGD steps with probes: 806 s at load 4
def test_quick_variant_passes_its_rows(tmp_path):
    rows = reproduce.get("eoss")(tmp_path, quick=True)
    assert len(rows) == 11
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    files = ("table.md", "table.csv", "curves.csv", "runs.csv", "summary.csv", "eoss.png")
    for f in (*files, "loss.png"):
        assert (tmp_path / f).exists(), f
    assert (tmp_path / "eoss.png").stat().st_size > 20_000
    summ = pd.read_csv(tmp_path / "summary.csv")
    assert np.allclose(summ["two_over_lr"], 2.0 / QUICK.lr)
    assert list(summ["batch_size"]) == list(QUICK.batch_sizes)
    # the batch sharpness at the last saved point of the smallest batch's last seed, recomputed
    b, seed = QUICK.batch_sizes[0], QUICK.seeds[-1]
    curves = pd.read_csv(tmp_path / "curves.csv")
    last = curves[(curves["batch_size"] == b) & (curves["seed"] == seed)].iloc[-1]
    w = jnp.asarray(np.load(tmp_path / "final_points.npz")[f"b{b}_seed{seed}"])
    with jax.enable_x64(False):
        loss, _ = reference(QUICK, seed)
        mean, se = ref_batch_sharpness(loss, w, QUICK.n, b, 400, seed=2)
    both = math.hypot(se, last["batch_sharpness_stderr"])
    assert abs(last["batch_sharpness"] - mean) <= 4 * both
