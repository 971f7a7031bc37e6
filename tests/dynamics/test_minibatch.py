"""Mini-batch processes and batch sharpness, checked against brute force over every batch.

The problem: a tanh MLP (3 -> 4 -> 2, D = 26) with half-MSE on N = 16 examples, batches of 4
(all C(16, 4) = 1820 of them enumerated). Every reference is computed here from the test's own
per-example loss with dense ``jax.hessian`` / ``eigvalsh``, never from eoslab's estimators.
"""

from __future__ import annotations

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import ConfigError, Objective
from eoslab.batches import batch_objective, random_batches
from eoslab.curvature import batch_lambda_max, batch_sharpness, gradient_noise_interaction
from eoslab.dynamics import MiniBatch, Optimizer, rules
from eoslab.parallel import microbatched
from eoslab.runner import BatchSharpness, HostProbe, Probes, run
from helpers import assert_same_metrics

# float64 throughout: every reference is a dense float64 Hessian over all batches
pytestmark = pytest.mark.usefixtures("x64")

N, DIN, H, DOUT, B = 16, 3, 4, 2, 4
SHAPES = [(DIN, H), (H,), (H, DOUT), (DOUT,)]
D = sum(math.prod(s) for s in SHAPES)


def net(w, x):
    out, i = [], 0
    for s in SHAPES:
        z = math.prod(s)
        out.append(w[i : i + z].reshape(s))
        i += z
    W1, b1, W2, b2 = out
    return jnp.tanh(x @ W1 + b1) @ W2 + b2


def apply(params, x):
    return net(params["w"], x)


def problem(seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIN))
    y = rng.normal(size=(n, DOUT))
    w0 = rng.normal(size=D) * 0.8
    obj = Objective.from_model(apply, {"w": w0}, (x, y), "mse_half", dtype="float64")
    return obj, jnp.asarray(x), jnp.asarray(y)


def ref_loss(w, x, y):
    """The test's own mean loss: 1/|B| sum_i 1/2 |f(w, x_i) - y_i|^2."""
    return 0.5 * jnp.mean(jnp.sum((net(w, x) - y) ** 2, axis=-1))


def all_batches(n=N, b=B):
    return jnp.asarray(list(itertools.combinations(range(n), b)), jnp.int32)


def per_batch(w, x, y, idx):
    """Dense per-batch quantities: g^T H g / g^T g, lambda_max(H_B), g_B (for every batch)."""

    def one(i):
        xb, yb = x[i], y[i]
        g = jax.grad(ref_loss)(w, xb, yb)
        Hb = jax.hessian(ref_loss)(w, xb, yb)
        return g @ Hb @ g / (g @ g), jnp.linalg.eigvalsh(Hb)[-1], g

    return jax.vmap(one)(idx)


@pytest.fixture(scope="module")
def exact():
    # float64 here too: a module fixture is set up before the tests' x64 fixture
    with jax.enable_x64(True):
        obj, x, y = problem()
        w = obj.w0
        rq, lam, gb = per_batch(w, x, y, all_batches())
        g = jax.grad(ref_loss)(w, x, y)
        Hf = jax.hessian(ref_loss)(w, x, y)
        gni = float(jnp.mean(jnp.einsum("bi,ij,bj->b", gb, Hf, gb)) / (g @ g))
        return {
            "obj": obj,
            "x": x,
            "y": y,
            "bs": float(jnp.mean(rq)),
            "lam": float(jnp.mean(lam)),
            "gni": gni,
            "full_rq": float(g @ Hf @ g / (g @ g)),
            "full_lam": float(jnp.linalg.eigvalsh(Hf)[-1]),
        }


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
def test_batch_sharpness_matches_the_mean_over_all_batches(exact):
    est = batch_sharpness(exact["obj"], None, B, rel_err=0.005, max_batches=1000)
    print(f"batch sharpness {est} exact {exact['bs']:.6g}")
    assert est.stderr > 0 and est.batches >= 10
    assert est.converged == (est.stderr <= 0.005 * abs(est.mean))
    assert abs(est.mean - exact["bs"]) <= 4 * est.stderr
    # the gap the EoSS paper is about: mini-batch curvature along g_B exceeds the full one
    assert exact["bs"] > exact["full_rq"]


def test_batch_quantities_with_the_whole_set_are_the_full_batch_ones(exact):
    est = batch_sharpness(exact["obj"], None, N, rel_err=0.005)
    assert est.stderr <= 1e-12 * est.mean and est.batches == 10 and est.converged
    assert est.mean == pytest.approx(exact["full_rq"], rel=1e-10)
    lam = batch_lambda_max(exact["obj"], None, N, tol=1e-8, max_batches=3, min_batches=3)
    assert lam.stderr == pytest.approx(0, abs=1e-9 * abs(lam.mean))
    assert lam.mean == pytest.approx(exact["full_lam"], rel=1e-7)
    gni = gradient_noise_interaction(exact["obj"], None, N, max_batches=3, min_batches=3)
    assert gni.mean == pytest.approx(exact["full_rq"], rel=1e-10)


def test_gradient_noise_interaction_matches_all_batches(exact):
    est = gradient_noise_interaction(exact["obj"], None, B, rel_err=0.01, max_batches=500)
    print(f"gni {est} exact {exact['gni']:.6g}")
    assert abs(est.mean - exact["gni"]) <= 4 * est.stderr
    # E[g_B^T H g_B] = g^T H g + tr(H Cov g_B) > g^T H g here
    assert exact["gni"] > exact["full_rq"]


def test_batch_lambda_max_per_batch_and_in_expectation(exact):
    obj, x, y = exact["obj"], exact["x"], exact["y"]
    key = jax.random.key(3)
    # the first 5 batches it draws, each against a dense eigvalsh of the test's own batch loss
    few = batch_lambda_max(obj, None, B, max_batches=5, min_batches=5, tol=1e-8, key=key)
    idx = random_batches(jax.random.fold_in(key, 0), N, B, 16)[:5]
    _, lam, _ = per_batch(obj.w0, x, y, idx)
    assert few.batches == 5
    assert few.matvecs >= 5 * 2  # at least two products per Lanczos solve
    assert few.mean == pytest.approx(float(jnp.mean(lam)), rel=1e-7)
    assert few.stderr == pytest.approx(float(jnp.std(lam, ddof=1) / math.sqrt(5)), rel=1e-5)
    est = batch_lambda_max(obj, None, B, rel_err=0.01, max_batches=100, tol=1e-6)
    print(f"batch lambda_max {est} exact {exact['lam']:.6g} full {exact['full_lam']:.6g}")
    assert abs(est.mean - exact["lam"]) <= 4 * est.stderr + est.error
    assert exact["lam"] > exact["full_lam"]


def test_random_batches_are_uniform_subsets():
    idx = np.asarray(random_batches(jax.random.key(0), 10, 3, 4000))
    assert np.all(np.diff(idx, axis=1) > 0)  # sorted, no repeats inside a batch
    counts = np.bincount(idx.ravel(), minlength=10) / idx.size
    assert np.abs(counts - 0.1).max() < 0.01


def test_sgd_steps_on_its_batches_and_epochs_cover_the_data():
    obj, x, y = problem(n=18)
    lr = 0.05
    proc = MiniBatch(rules.GD(lr), B, seed=7)
    state = proc.init(obj, obj.w0)
    step = eqx.filter_jit(lambda p, o, s: p.step(o, s))
    seen = []
    for _ in range(12):  # 3 epochs of floor(18/4) = 4 batches, 2 examples dropped per epoch
        idx = np.asarray(proc.batch(state))
        w = state.w
        state, row = step(proc, obj, state)
        g = jax.grad(ref_loss)(w, x[idx], y[idx])
        np.testing.assert_allclose(state.w, w - lr * g, rtol=1e-12, atol=1e-14)
        assert float(row["batch_loss"]) == pytest.approx(float(ref_loss(w, x[idx], y[idx])))
        assert float(row["loss"]) == pytest.approx(float(ref_loss(w, x, y)), rel=1e-12)
        gfull = jax.grad(ref_loss)(w, x, y)
        assert float(row["grad_norm"]) == pytest.approx(float(jnp.linalg.norm(gfull)))
        seen.append(idx)
    for e in range(3):
        epoch = np.concatenate(seen[4 * e : 4 * e + 4])
        assert len(set(epoch)) == 16  # without replacement inside an epoch
    assert any(not np.array_equal(seen[i], seen[i + 4]) for i in range(4))  # reshuffled
    # reproducible from the seed; another seed draws other batches
    again = MiniBatch(rules.GD(lr), B, seed=7)
    other = MiniBatch(rules.GD(lr), B, seed=8)
    for p, same in ((again, True), (other, False)):
        s = p.init(obj, obj.w0)
        bs = []
        for _ in range(12):
            bs.append(np.asarray(p.batch(s)))
            s, _ = step(p, obj, s)
        assert all(np.array_equal(a, b) for a, b in zip(bs, seen, strict=True)) == same


@pytest.mark.parametrize(
    "rule",
    [rules.GD(0.3), rules.HeavyBall(0.1, beta=0.9), rules.Adam(0.01)],
    ids=["gd", "heavy_ball", "adam"],
)
def test_full_batch_minibatch_is_the_optimizer(rule):
    obj, _, _ = problem()
    mb, opt = MiniBatch(rule, N, seed=1), Optimizer(rule)
    s1, r1, ok1, _ = mb.scan(obj, mb.init(obj, obj.w0), 15, keep_points=True)
    s2, r2, ok2, _ = opt.scan(obj, opt.init(obj, obj.w0), 15, keep_points=True)
    assert bool(jnp.all(ok1)) and bool(jnp.all(ok2))
    for col in ("w", "loss", "grad_norm", "lr_eff", "threshold", "gf_time"):
        np.testing.assert_allclose(r1[col], r2[col], rtol=1e-12, atol=1e-15, err_msg=col)
    np.testing.assert_allclose(r1["batch_loss"], r2["loss"], rtol=1e-12)
    np.testing.assert_allclose(s1.w, s2.w, rtol=1e-12, atol=1e-15)


def test_resume_is_bit_identical_with_the_probe(tmp_path):
    obj, _, _ = problem()
    proc = {"sgd": MiniBatch(rules.HeavyBall(0.1, beta=0.5), B, seed=2)}
    probe = BatchSharpness(
        B, rel_err=0.05, max_batches=40, seed=5, lambda_max_batches=8, gni_max_batches=40
    )
    probe_cfg = Probes(alignment=False, tol=1e-6)
    kw = dict(probe_every=5, probes=probe_cfg, flush_seconds=0)
    whole = run(proc, obj, 20, out=tmp_path / "a", custom_probes=(probe,), **kw).metrics
    hit = {"done": False}

    class Interrupt(HostProbe):
        def __call__(self, at, state):
            if at.step == 15 and not hit["done"]:
                hit["done"] = True
                raise KeyboardInterrupt
            return {}, state

    probes = (probe, Interrupt())
    with pytest.raises(KeyboardInterrupt):
        run(proc, obj, 20, out=tmp_path / "b", custom_probes=probes, **kw)
    resumed = run(proc, obj, 20, out=tmp_path / "b", resume=True, custom_probes=probes, **kw)
    assert_same_metrics(whole, resumed.metrics)
    probed = whole[whole["batch_sharpness"].notna()]
    assert list(probed["step"]) == [0, 5, 10, 15, 20]
    for col in ("batch_sharpness_stderr", "batch_lambda_max", "gni", "batch_loss", "sharpness"):
        assert col in whole and whole[col].notna().any(), col


def test_probe_in_the_loop_against_dense_values():
    obj, x, y = problem()
    probe = BatchSharpness(
        N, max_batches=12, lambda_max_batches=3, lambda_tol=1e-8, gni_max_batches=3
    )
    res = run(MiniBatch(rules.GD(0.1), N), obj, 0, probes=Probes(tol=1e-8), custom_probes=(probe,))
    row = res.metrics.iloc[0]
    g = jax.grad(ref_loss)(obj.w0, x, y)
    Hf = jax.hessian(ref_loss)(obj.w0, x, y)
    assert row["batch_sharpness"] == pytest.approx(float(g @ Hf @ g / (g @ g)), rel=1e-10)
    assert row["gni"] == pytest.approx(float(g @ Hf @ g / (g @ g)), rel=1e-10)
    lam = float(jnp.linalg.eigvalsh(Hf)[-1])
    assert row["batch_lambda_max"] == pytest.approx(lam, rel=1e-6)
    assert row["sharpness"] == pytest.approx(lam, rel=1e-6)
    # cost in full-batch products: batches of all N examples count 1 each
    assert row["batch_sharpness_hvp"] == row["batch_sharpness_batches"]
    assert row["batch_lambda_max_hvp"] >= 2 * row["batch_lambda_max_batches"]  # a Lanczos each


def test_bad_input_names_the_field():
    obj, _, _ = problem()
    with pytest.raises(ConfigError, match="batch_size"):
        MiniBatch(rules.GD(0.1), N + 1).init(obj, obj.w0)
    with pytest.raises(ConfigError, match="batch_size"):
        MiniBatch(rules.GD(0.1), 0)
    with pytest.raises(ConfigError, match="rule"):
        MiniBatch("sgd", 4)
    with pytest.raises(ConfigError, match="transform"):
        MiniBatch(rules.GD(0.1), 4).init(obj.sqrt(), obj.w0)
    plain = Objective.from_fn(lambda w: jnp.sum(w**2), jnp.ones(3))
    with pytest.raises(ConfigError, match="objective"):
        batch_sharpness(plain, None, 1)
    with pytest.raises(ConfigError, match="max_batches"):
        batch_sharpness(obj, None, 4, max_batches=0)
    with pytest.raises(ConfigError, match="batch_size"):
        BatchSharpness(0)


def test_microbatched_objective_steps_like_the_plain_one():
    obj, _, _ = problem(n=18)
    mobj = microbatched(obj, batch_size=4)  # 18 rows padded with zero weight to 20
    proc = MiniBatch(rules.HeavyBall(0.1, beta=0.5), 4, seed=3)
    s1, r1, _, _ = proc.scan(obj, proc.init(obj, obj.w0), 9, keep_points=True)
    s2, r2, _, _ = proc.scan(mobj, proc.init(mobj, obj.w0), 9, keep_points=True)
    for col in ("w", "loss", "batch_loss", "grad_norm"):
        np.testing.assert_allclose(r1[col], r2[col], rtol=1e-12, atol=1e-14, err_msg=col)
    with pytest.raises(ConfigError, match="batch_size"):
        batch_sharpness(mobj, None, 6)


def test_batch_objective_is_the_batch_mean():
    obj, x, y = problem()
    idx = jnp.asarray([1, 5, 6, 13])
    w = obj.w0
    assert float(batch_objective(obj, idx)(w)) == pytest.approx(
        float(ref_loss(w, x[idx], y[idx])), rel=1e-13
    )
