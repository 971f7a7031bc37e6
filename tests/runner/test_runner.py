"""The runner: metrics against closed forms on quadratics, divergence, stopping, probes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import DivergenceError, Objective
from eoslab.dynamics import Optimizer, rules
from eoslab.errors import ConfigError
from eoslab.runner import HostProbe, Probes, Stop, run, train

H = np.array([10.0, 4.0, 1.0, 0.25], np.float32)
W0 = np.array([1.0, -1.0, 2.0, 0.5], np.float32)


def _quadform(w, data):
    A, c = data
    return 0.5 * w @ A @ w + c


def _quadratic(A, w0=W0, loss_min=0.0, dtype="float32"):
    """One loss function for every test, so compiled code (Lanczos, the scan) is shared."""
    dt = jnp.float64 if dtype == "float64" else jnp.float32
    data = (jnp.asarray(A, dt), jnp.asarray(loss_min, dt))
    return Objective.from_data_fn(_quadform, data, np.asarray(w0, dt), dtype=dtype)


def _diag_quadratic(loss_min=0.0):
    obj = _quadratic(np.diag(H), loss_min=loss_min)
    return obj if loss_min == 0.0 else dataclasses.replace(obj, loss_min=loss_min)


def test_gd_on_quadratic_matches_closed_form():
    lr, steps = 0.15, 40
    run = train(
        _diag_quadratic(), rules.GD(lr), steps, probe_every=10, probes=Probes(k=2, tol=1e-5)
    )
    assert run.status == "completed" and run.step == steps
    df = run.metrics
    assert list(df["step"]) == list(range(steps + 1))
    # w_t = (1 - lr h)^t w0
    w_exact = (1 - lr * H.astype(np.float64)) ** steps * W0
    np.testing.assert_allclose(np.asarray(run.point()), w_exact, rtol=1e-4, atol=1e-6)
    loss_exact = [0.5 * np.sum(H * ((1 - lr * H) ** t * W0) ** 2) for t in range(steps + 1)]
    np.testing.assert_allclose(df["loss"], loss_exact, rtol=1e-4)
    probed = df[df["sharpness"].notna()]
    assert list(probed["step"]) == [0, 10, 20, 30, 40]
    np.testing.assert_allclose(probed["sharpness"], 10.0, rtol=1e-4)
    np.testing.assert_allclose(np.stack(probed["eigs"].to_list()), [[10.0, 4.0]] * 5, rtol=1e-3)
    np.testing.assert_allclose(df["threshold"], 2 / lr, rtol=1e-6)
    np.testing.assert_allclose(probed["lr_sharpness"], lr * 10.0, rtol=1e-4)
    assert (probed["sharpness_matvecs"] > 0).all()
    # alignment g^T H g / (|g|^2 lambda_1) at step 0, by hand
    g = H * W0
    align = g @ (H * g) / (g @ g * 10.0)
    assert probed["grad_top_alignment"].iloc[0] == pytest.approx(align, rel=1e-4)
    # unprobed rows are missing, never 0
    assert df["sharpness"].isna().sum() == steps + 1 - 5


def test_divergence_stops_cleanly_and_keeps_metrics():
    lr = 0.25  # lr * lambda_1 = 2.5 > 2
    with pytest.warns(RuntimeWarning, match="diverged at step"):
        run = train(_diag_quadratic(), rules.GD(lr), 2000, probe_every=10)
    assert run.diverged
    assert "diverged at step" in run.message and "kept" in run.message
    df = run.metrics
    assert len(df) > 50
    assert np.isfinite(df["loss"]).all()
    assert np.all(np.diff(df["loss"].to_numpy()[5:]) > 0)  # blowing up, every row kept
    assert np.all(np.isfinite(np.asarray(run.point())))
    assert run.step < 2000
    with pytest.raises(DivergenceError, match="diverged"):
        train(_diag_quadratic(), rules.GD(lr), 2000, stop=Stop(raise_on_divergence=True))


@pytest.mark.usefixtures("x64")
def test_adam_preconditioned_sharpness_closed_form():
    """lambda_1(P^-1 H) for a dense quadratic, P from the optimizer state: known exactly."""
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    A = (Q * np.array([8.0, 3.0, 1.0, 0.5])) @ Q.T
    w0 = rng.normal(size=4)
    lr, b1, b2, eps = 0.01, 0.9, 0.99, 1e-8
    obj = _quadratic(A, w0, dtype="float64")
    A = np.asarray(obj.data[0])
    rule = rules.Adam(lr, b1, b2, eps)
    run = train(obj, rule, 20, probe_every=10, probes=Probes(tol=1e-8))
    # replay by hand: the probe at step t uses the preconditioner of the step taken from w_t
    w, s = jnp.asarray(w0), rule.init(jnp.asarray(w0))
    expected = {}
    for t in range(21):
        g = jnp.asarray(A) @ w
        w_next, s_next, info = rule.step(w, s, g, 0.0)
        if t % 10 == 0:
            P = np.asarray(rule.preconditioner(s_next))
            expected[t] = np.max(np.linalg.eigvals(A / P[:, None]).real)
        w, s = w_next, s_next
    probed = run.metrics[run.metrics["eff_sharpness"].notna()]
    for _, row in probed.iterrows():
        assert row["eff_sharpness"] == pytest.approx(expected[int(row["step"])], rel=1e-6)
        assert row["sharpness"] == pytest.approx(8.0, rel=1e-6)
    assert run.metrics["threshold"].iloc[0] == pytest.approx((2 + 2 * b1) / ((1 - b1) * lr))
    # lr x sharpness uses the preconditioned sharpness for adaptive rules
    assert probed["lr_sharpness"].iloc[0] == pytest.approx(lr * expected[0], rel=1e-6)


def test_adam_first_step_preconditioner_diagonal():
    """On a diagonal quadratic, the first Adam step has P = |g| = h |w|: P^-1 H = diag(1/|w|)."""
    run = train(_diag_quadratic(), rules.Adam(0.001), 1, probe_every=1)  # probed at step 0
    assert run.metrics["eff_sharpness"].iloc[0] == pytest.approx(1 / 0.5, rel=1e-3)


def test_sqrt_objective_reports_base_loss_and_matches_sqrt_rule():
    lmin = 0.3
    obj = _diag_quadratic(loss_min=lmin)
    lr = 0.05
    a = train(obj.sqrt(), rules.GD(lr), 30, probe_every=10)
    b = train(obj, rules.SqrtLossGD(lr), 30, probe_every=10)  # L_min: the objective's
    np.testing.assert_allclose(np.asarray(a.point()), np.asarray(b.point()), rtol=1e-5, atol=1e-6)
    for col in ("loss", "grad_norm", "lr_eff", "threshold", "sharpness"):
        np.testing.assert_allclose(a.metrics[col], b.metrics[col], rtol=2e-4, err_msg=col)
    assert a.metrics["loss"].iloc[0] == pytest.approx(float(obj(obj.w0)), rel=1e-6)
    assert a.metrics["sharpness"].dropna().iloc[0] == pytest.approx(10.0, rel=1e-4)


def test_normalized_gd_threshold_column():
    run = train(_diag_quadratic(), rules.NormalizedGD(0.01), 10, probe_every=5)
    df = run.metrics
    np.testing.assert_allclose(df["threshold"], 2 * df["grad_norm"] / 0.01, rtol=1e-5)
    np.testing.assert_allclose(df["lr_eff"], 0.01 / df["grad_norm"], rtol=1e-5)


def test_stop_on_loss_goal_and_custom_probe():
    calls = []

    class Goal(HostProbe):
        def __call__(self, at, state):
            calls.append(at.step)
            acc = 1.0 if at.loss < 1.0 else 0.0
            return {"accuracy": acc, "wnorm": float(jnp.linalg.norm(at.w))}, state

    probe = Goal()

    run = train(
        _diag_quadratic(),
        rules.GD(0.1),
        1000,
        probe_every=5,
        custom_probes=(probe,),
        stop=Stop(loss_below=0.5),
    )
    assert run.status == "loss_goal"
    assert run.metrics["loss"].iloc[-1] <= 0.5
    assert run.step % 5 == 0 and run.step < 1000
    assert "wnorm" in run.metrics and calls[0] == 0
    run = train(
        _diag_quadratic(),
        rules.GD(0.1),
        1000,
        probe_every=5,
        custom_probes=(probe,),
        stop=Stop(accuracy_above=1.0),
    )
    assert run.status == "accuracy_goal"


def test_a_host_probe_reads_loss_gradient_and_eigenpairs_from_at():
    """``at.loss``, ``at.grad`` and ``at.eig`` are those of the base loss
    L = w^T diag(H) w / 2 + L_min at the probed point, also when the rule trains on
    sqrt(L - L_min); ``at.eig`` is None without the host sharpness probe."""
    seen = []

    class Record(HostProbe):
        def __call__(self, at, state):
            assert at.grad is at.grad  # computed once per point
            lam = None if at.eig is None else float(at.eig.values[0])
            seen.append((np.asarray(at.w), at.loss, np.asarray(at.grad), lam))
            return {}, state

    lmin = 0.3
    obj = _diag_quadratic(loss_min=lmin).sqrt()
    train(
        obj, rules.GD(0.05), 20, probe_every=10, probes=Probes(tol=1e-5), custom_probes=(Record(),)
    )
    assert len(seen) == 3
    h = H.astype(np.float64)
    for w, loss, g, lam in seen:
        w = w.astype(np.float64)
        assert loss == pytest.approx(0.5 * np.sum(h * w * w) + lmin, rel=1e-5)
        np.testing.assert_allclose(g, h * w, rtol=1e-5, atol=1e-6)
        assert lam == pytest.approx(10.0, rel=1e-4)
    seen.clear()
    train(
        obj,
        rules.GD(0.05),
        10,
        probe_every=10,
        probes=Probes(sharpness=False),
        custom_probes=(Record(),),
    )
    assert [lam for *_, lam in seen] == [None, None]


def test_log_every_and_stableness():
    run = train(
        _diag_quadratic(),
        rules.GD(0.1),
        20,
        probe_every=10,
        log_every=5,
        probes=Probes(stableness=True),
    )
    assert list(run.metrics["step"]) == [0, 5, 10, 15, 20]
    # on a quadratic the stableness is lr * lambda_1
    assert run.metrics["stableness"].dropna().iloc[0] == pytest.approx(0.1 * 10.0, rel=1e-3)


def test_bad_arguments():
    obj = _diag_quadratic()
    with pytest.raises(ConfigError, match="steps"):
        train(obj, rules.GD(0.1), -1)
    with pytest.raises(ConfigError, match="probe_every"):
        train(obj, rules.GD(0.1), 10, probe_every=0)
    with pytest.raises(ConfigError, match="rule"):
        train(obj, "gd", 10)
    with pytest.raises(ConfigError, match="probes.k"):
        Probes(k=0)


def test_a_function_probe_is_refused_before_any_work(tmp_path):
    """A probe is a class: a function in ``custom_probes`` gets an error naming the field and
    saying to subclass HostProbe, before a run directory is made."""

    def probe(w, objective, cache):
        return {}

    obj = _diag_quadratic()
    for go in (
        lambda out, p: train(obj, rules.GD(0.1), 10, out=out, custom_probes=p),
        lambda out, p: run(Optimizer(rules.GD(0.1)), obj, 10, out=out, custom_probes=p),
    ):
        for probes in ((probe,), probe):
            with pytest.raises(
                ConfigError, match=r"custom_probes=.*Subclass eoslab.runner.HostProbe"
            ):
                go(tmp_path / "r", probes)
            assert not (tmp_path / "r").exists()


@pytest.mark.usefixtures("x64")
def test_heavy_ball_runs_in_float64_on_a_plain_callable():
    f = lambda w: 0.5 * jnp.sum(jnp.asarray(H, jnp.float64) * w * w)
    run = train(
        f,
        rules.HeavyBall(0.05, 0.5),
        20,
        w0=jnp.asarray(W0, jnp.float64),
        probes=Probes(sharpness=False),
    )
    assert run.point().dtype == jnp.float64
    assert run.metrics["loss"].iloc[-1] < run.metrics["loss"].iloc[0]
    assert jax.tree_util.tree_leaves(run.point())[0].shape == (4,)


@pytest.mark.usefixtures("x64")
def test_run_accessors_series_wide_and_trajectory():
    # GD and gradient flow on a diagonal quadratic: GD's iterates are (1 - lr h)^t w0, the flow's
    # exp(-h lr t) w0; the accessors must return exactly the stored rows, side by side by step
    from eoslab.dynamics import GradientFlow, Optimizer
    from eoslab.runner import run

    lr, steps = 0.05, 12
    obj = _quadratic(np.diag(H), dtype="float64")
    res = run(
        {"gd": Optimizer(rules.GD(lr)), "gf": GradientFlow(lr=lr, rtol=1e-10, atol=1e-12)},
        obj,
        steps,
        probe_every=4,
        probes=Probes(k=1, tol=1e-8),
        keep_points=True,
    )
    t = np.arange(steps + 1)[:, None]
    h, w0 = H.astype(np.float64), W0.astype(np.float64)
    np.testing.assert_allclose(res.trajectory("gd"), (1 - lr * h) ** t * w0, rtol=1e-12)
    np.testing.assert_allclose(res.trajectory("gf"), np.exp(-h * lr * t) * w0, rtol=1e-7)
    np.testing.assert_array_equal(res.trajectory(), res.trajectory("gd"))  # the first process
    assert res.process_names == ["gd", "gf"]
    s = res.series("gd", ["loss", "sharpness"])
    assert list(s.columns) == ["step", "loss", "sharpness"] and list(s["step"]) == list(range(13))
    probed = s.dropna()
    assert list(probed["step"]) == [0, 4, 8, 12]
    np.testing.assert_allclose(probed["sharpness"], h.max(), rtol=1e-8)
    wd = res.wide(["loss", "dist_gf", "dist_gd"])
    assert list(wd.columns) == ["step", "loss_gd", "dist_gf_gd", "loss_gf", "dist_gd_gf"]
    np.testing.assert_array_equal(wd["loss_gd"], s["loss"])
    gap = np.linalg.norm(res.trajectory("gd") - res.trajectory("gf"), axis=1)
    at = wd["dist_gf_gd"].notna().to_numpy()
    np.testing.assert_allclose(wd["dist_gf_gd"][at], gap[at], rtol=1e-10)
    np.testing.assert_array_equal(wd["dist_gf_gd"][at], wd["dist_gd_gf"][at])
    for bad in (lambda: res.series("sgd"), lambda: res.series("gd", "nope"), lambda: res.wide("x")):
        with pytest.raises(ConfigError):
            bad()
    no_points = run(Optimizer(rules.GD(lr)), obj, 2, probes=Probes(sharpness=False))
    with pytest.raises(ConfigError, match="keep_points"):
        no_points.trajectory()
