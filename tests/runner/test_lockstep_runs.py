"""Processes in lockstep through the one loop: GD, gradient flow and the central flow in one store,
resumed after SIGKILL to the same bits; gradient flow against its closed form; compiled steps
reused, never shared; divergence of one process stopping the run."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import Objective
from eoslab.dynamics.central_flow import CentralFlow
from eoslab.dynamics.gradient_flow import GradientFlow
from eoslab.dynamics.optimizer import Optimizer
from eoslab.dynamics.rules import GD
from eoslab.runner import Probes, RunStore, load_run, run
from helpers import assert_same_metrics, quadratic_with_spectrum, run_python

# float64 throughout, as in the runs the subprocesses make (helpers.run_python)
pytestmark = pytest.mark.usefixtures("x64")

# --------------------------------------------------------------------------- GD at the EoS

C0, KAPPA, LR = 1.0, 0.05, 0.1
STEPS, PROBE_EVERY = 60, 10
NAMES = ("gd", "flow", "central")


def toy(w):
    """L = (c + x) log cosh y - kappa x + (2 + 0.1 x) z^2 / 2 (as in test_central_flow): GD
    started on its period-2 orbit y -> -y, log cosh y = kappa, oscillates at the edge of
    stability; gradient flow sharpens past 2/lr; the central flow stays pinned at 2/lr."""
    x, y, z = w[0], w[1], w[2]
    return (C0 + x) * jnp.log(jnp.cosh(y)) - KAPPA * x + 0.5 * (2.0 + 0.1 * x) * z**2


def _orbit_start() -> np.ndarray:
    ys = float(np.arccosh(np.exp(KAPPA)))
    return np.array([2 * ys / (LR * np.tanh(ys)) - C0, ys, 0.3])


def toy_run(out, resume=False, sharpness=False):
    """The three-process run (the subprocesses of the SIGKILL test run it too)."""
    processes = {
        "gd": Optimizer(GD(LR)),
        "flow": GradientFlow(lr=LR),
        "central": CentralFlow(lr=LR),
    }
    return run(
        processes,
        Objective.from_fn(toy, _orbit_start(), dtype="float64"),
        STEPS,
        probe_every=PROBE_EVERY,
        probes=Probes(tol=1e-8) if sharpness else Probes(sharpness=False),
        keep_points=True,
        out=out,
        flush_seconds=0,
        resume=resume,
    )


@pytest.fixture(
    scope="module",
    params=[False, pytest.param(True, marks=pytest.mark.slow)],
    ids=["distances", "distances+eigs"],
)
def toy_runs(request, tmp_path_factory):
    """An uninterrupted run and one killed with SIGKILL after its first checkpoint then resumed;
    each in a fresh interpreter (the second and third load the first one's compiled code)."""
    tmp = tmp_path_factory.mktemp("toy")
    ref, cut, cache, eigs = tmp / "ref", tmp / "cut", tmp / "jax-cache", request.param
    code = f"_m.toy_run({str(ref)!r}, sharpness={eigs})\n_m.toy_run({str(cut)!r}, sharpness={eigs})"
    man = run_python(
        tmp, "test_lockstep_runs", code, kill_at_checkpoint_of=cut, cache=cache, pause=0.2
    )
    killed_at, _ = RunStore(cut).latest_checkpoint()
    code = f"_m.toy_run({str(cut)!r}, resume=True, sharpness={eigs})"
    run_python(tmp, "test_lockstep_runs", code, cache=cache)
    return {"manifest": man, "killed_at": killed_at, "ref": load_run(ref), "cut": load_run(cut)}


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
@pytest.mark.subprocess
def test_three_processes_in_one_store_resume_after_sigkill_bit_for_bit(toy_runs):
    assert toy_runs["manifest"]["status"] == "running"
    assert 0 < toy_runs["killed_at"] < STEPS
    ref, cut = toy_runs["ref"], toy_runs["cut"]
    assert ref.status == cut.status == "completed" and ref.step == cut.step == STEPS
    cfg = json.loads((ref.path / "config.json").read_text())["config"]
    assert list(cfg["processes"]) == list(NAMES)
    for name in NAMES:
        assert list(ref.series(name)["step"]) == list(range(STEPS + 1)), name
        np.testing.assert_array_equal(cut.point(name), ref.point(name))
    assert {"w", "dist_gd", "dist_flow", "dist_central", "pred_loss", "gf_time"} <= set(ref.metrics)
    assert_same_metrics(cut.metrics, ref.metrics)


_toy_hessian = jax.jit(jax.hessian(toy))


def _top_eig(w) -> float:
    """lambda_1 of the dense Hessian of the toy at w."""
    return float(np.linalg.eigvalsh(np.asarray(_toy_hessian(jnp.asarray(w))))[-1])


@pytest.mark.subprocess
def test_three_process_metrics_against_recomputation(toy_runs):
    ref = toy_runs["ref"]
    rows = {n: ref.series(n) for n in NAMES}
    w = {n: np.stack(rows[n]["w"].to_list()) for n in NAMES}
    # GD, again by hand: w_{t+1} = w_t - lr grad L(w_t)
    step = jax.jit(lambda v: v - LR * jax.grad(toy)(v))
    v, ws = jnp.asarray(_orbit_start()), []
    for _ in range(STEPS + 1):
        ws.append(np.asarray(v))
        v = step(v)
    np.testing.assert_allclose(w["gd"], ws, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rows["gd"]["loss"], [float(toy(u)) for u in ws], rtol=1e-10)
    # every row's loss is L at its point; the time columns count lr per step
    for n in NAMES:
        np.testing.assert_allclose(rows[n]["loss"], [float(toy(u)) for u in w[n]], rtol=1e-12)
    np.testing.assert_allclose(rows["gd"]["gf_time"], LR * np.arange(STEPS + 1), rtol=1e-12)
    np.testing.assert_allclose(rows["flow"]["gf_time"], LR * np.arange(STEPS + 1), rtol=1e-12)
    # distances between the processes' points, on probed rows only
    probed = np.arange(0, STEPS + 1, PROBE_EVERY)
    for p in NAMES:
        for q in NAMES:
            if p != q:
                dist = np.linalg.norm(w[p][probed] - w[q][probed], axis=1)
                np.testing.assert_allclose(rows[p][f"dist_{q}"].iloc[probed], dist, rtol=1e-13)
                assert rows[p][f"dist_{q}"].notna().sum() == probed.size
    # the edge of stability, by dense Hessians at the stored points
    top = {n: np.array([_top_eig(u) for u in w[n][probed]]) for n in NAMES}
    assert np.all(top["gd"] < 2 / LR) and np.all(top["gd"] > 0.9 * 2 / LR)
    assert np.all(top["flow"][1:] > 1.03 * 2 / LR)  # gradient flow sharpens past 2/lr
    cf = rows["central"]
    # the warm eigen-solve stops at a certified bound (res^2/gap): 1.5e-8 here, not exact
    np.testing.assert_allclose(cf["cf_sharpness"].iloc[probed], top["central"], rtol=1e-7)
    assert np.all(cf["cf_sharpness"] <= 2 / LR * (1 + 1e-6))
    np.testing.assert_allclose(top["central"][2:], 2 / LR, rtol=1e-5)  # pinned at 2/lr
    # the central flow predicts GD's time-averaged loss (c kappa on the orbit)
    gd_avg = float(np.mean(rows["gd"]["loss"].iloc[20:]))
    assert gd_avg == pytest.approx(C0 * KAPPA, rel=0.05)
    np.testing.assert_allclose(cf["pred_loss"].iloc[20:], gd_avg, rtol=0.05)
    if "sharpness" in ref.metrics and ref.metrics["sharpness"].notna().any():
        for n in NAMES:
            np.testing.assert_allclose(rows[n]["sharpness"].iloc[probed], top[n], rtol=1e-7)


# --------------------------------------------------------------------------- quadratics


def _quad(w, A):
    return 0.5 * w @ A @ w


EIGS = (3.0, 1.0, 0.3)


def _quadratic(w0, eigs=EIGS, seed=1):
    _, A = quadratic_with_spectrum(eigs, seed=seed)
    return Objective.from_data_fn(_quad, A, np.asarray(w0, np.float64), dtype="float64")


def test_gradient_flow_matches_exp_of_minus_A_t():
    w0 = np.array([1.0, -2.0, 0.5])
    obj, lr, steps = _quadratic(w0), 0.1, 40
    res = run(GradientFlow(lr=lr), obj, steps, probe_every=steps, probes=Probes(sharpness=False))
    lam, V = np.linalg.eigh(np.asarray(obj.data))
    c = np.exp(-np.outer(lr * np.arange(steps + 1), lam)) * (V.T @ w0)  # w(t) = exp(-A lr t) w0
    df = res.series("main")
    assert list(df["step"]) == list(range(steps + 1))
    np.testing.assert_allclose(df["loss"], 0.5 * np.sum(lam * c**2, axis=1), rtol=1e-6)
    np.testing.assert_allclose(df["gf_time"], lr * np.arange(steps + 1), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(res.point()), V @ c[-1], rtol=1e-6)


class _CompileCounter:
    """Counts XLA compilations (and traces) while active."""

    def __enter__(self):
        self.compiles, self.traces = 0, 0
        jax.monitoring.register_event_duration_secs_listener(self._hear)
        return self

    def _hear(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.compiles += 1
        elif event == "/jax/core/compile/jaxpr_trace_duration":
            self.traces += 1

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._hear)


def _gd_losses(obj, lr, steps):
    """L(w_t) for w_t = (1 - lr A)^t w0, in A's eigenbasis."""
    lam, V = np.linalg.eigh(np.asarray(obj.data))
    c = (1 - lr * lam) ** np.arange(steps + 1)[:, None] * (V.T @ np.asarray(obj.w0))
    return 0.5 * np.sum(lam * c**2, axis=1)


def test_the_same_rule_is_compiled_once_and_rules_that_differ_never_share_code():
    w0 = np.array([1.0, 1.0, -1.0])
    objs = [_quadratic(w0), _quadratic(2 * w0, eigs=(2.0, 1.5, 0.1), seed=2)]
    a, b = GD(0.3), GD(0.5)
    procs = [Optimizer(a), Optimizer(a), Optimizer(b)]

    def go(proc, obj):
        return run(proc, obj, 25, probe_every=10, probes=Probes(sharpness=False))

    with _CompileCounter() as first:
        ra = go(procs[0], objs[0])
    assert first.compiles > 0  # the counter hears compilations
    with _CompileCounter() as again:  # a new Optimizer of the same rule, then on other data
        ra2 = go(procs[1], objs[0])
        other = go(procs[1], objs[1])
    assert (again.compiles, again.traces) == (0, 0)
    rb = go(procs[2], objs[0])
    # each run its own closed form
    np.testing.assert_allclose(ra.metrics["loss"], _gd_losses(objs[0], 0.3, 25), rtol=1e-12)
    assert_same_metrics(ra2.metrics, ra.metrics)
    np.testing.assert_allclose(other.metrics["loss"], _gd_losses(objs[1], 0.3, 25), rtol=1e-12)
    np.testing.assert_allclose(rb.metrics["loss"], _gd_losses(objs[0], 0.5, 25), rtol=1e-12)
    assert np.abs(np.asarray(ra.point()) - np.asarray(rb.point())).max() > 1e-3


# --------------------------------------------------------------------------- divergence

DIV_A = np.diag([2.0, 1.0, 0.5])
DIV_LR = 1.5  # 1 - lr lambda = -2, -0.5, 0.25: w_t exact in binary, L(w_512) = 2^1024 = inf
DIV_AT = 512


def _diverging_run(out, probe_every, resume=False):
    obj = Objective.from_data_fn(_quad, jnp.asarray(DIV_A), np.ones(3), dtype="float64")
    procs = {"flow": GradientFlow(lr=0.1), "gd": Optimizer(GD(DIV_LR))}
    kw = dict(probe_every=probe_every, probes=Probes(sharpness=False), out=out, resume=resume)
    if resume:
        return run(procs, obj, 2000, **kw)
    with pytest.warns(RuntimeWarning, match=f"diverged at step {DIV_AT}: gd: the loss became inf"):
        return run(procs, obj, 2000, **kw)


def _div_losses(lr, steps, flow):
    lam, t = np.diag(DIV_A), np.arange(steps)[:, None]
    c = np.exp(-lr * lam * t) if flow else (1 - lr * lam) ** t
    return 0.5 * np.sum(lam * c**2, axis=1)


@pytest.mark.parametrize("probe_every", [8, 10], ids=["at-a-probe", "between-probes"])
# at step 512 GD's point is 2^512: numpy's norm of the distance to it overflows (dist_gd = inf)
@pytest.mark.filterwarnings("ignore:overflow encountered in dot:RuntimeWarning")
def test_divergence_of_one_process_stops_the_run_and_keeps_every_row(tmp_path, probe_every):
    res = _diverging_run(tmp_path / "run", probe_every)
    assert res.status == "diverged" and res.step == DIV_AT
    assert res.message.startswith(f"diverged at step {DIV_AT}: gd: the loss became inf")
    g, f = res.series("gd"), res.series("flow")
    # every row measured before the divergence is kept, every kept loss finite and exact
    assert list(g["step"]) == list(range(DIV_AT))
    np.testing.assert_allclose(g["loss"], _div_losses(DIV_LR, DIV_AT, flow=False), rtol=1e-15)
    assert list(f["step"][:DIV_AT]) == list(range(DIV_AT))
    np.testing.assert_allclose(f["loss"], _div_losses(0.1, len(f), flow=True), rtol=1e-6)
    assert np.isfinite(res.metrics["loss"]).all()
    # GD stays at the last point it reached, finite (its loss is not)
    assert np.asarray(res.point("gd"))[0] == 2.0**DIV_AT and np.isfinite(res.point("gd")).all()
    # the store says the same, and resuming a diverged run changes nothing
    back = load_run(tmp_path / "run")
    assert (back.status, back.step, back.message) == ("diverged", DIV_AT, res.message)
    assert_same_metrics(back.metrics, res.metrics)
    again = _diverging_run(tmp_path / "run", probe_every, resume=True)
    assert (again.status, again.step) == ("diverged", DIV_AT)
    assert_same_metrics(again.metrics, res.metrics)


def test_divergence_between_probes_leaves_every_process_at_the_stopping_step(tmp_path):
    res = _diverging_run(None, 10)
    assert res.metrics["step"].max() <= res.step
    lam = np.diag(DIV_A)
    np.testing.assert_allclose(res.point("flow"), np.exp(-0.1 * lam * DIV_AT), rtol=1e-5)
