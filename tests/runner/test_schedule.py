"""The adaptive probe schedule: its decisions on synthetic signals (closed forms), bad input, and
a tiny run: the budget kept, every probed step recorded with its reason, the decisions replayed."""

from __future__ import annotations

import math

import jax
import numpy as np
import pandas as pd
import pytest

from eoslab import Objective
from eoslab.dynamics import Optimizer, rules
from eoslab.errors import ConfigError
from eoslab.runner import HostProbe, Probes, run
from eoslab.runner.schedule import REASONS, AdaptiveSchedule, ScheduleState
from helpers import small_mlp_loss


def _probed(sched: AdaptiveSchedule, curve, steps, costs=None) -> ScheduleState:
    st = ScheduleState.empty()
    for i, t in enumerate(steps):
        st = sched.record(st, t, curve(t), 10 if costs is None else costs[i])
    return st


def test_curvature_gap_is_the_interpolation_bound():
    # lambda(t) = 10 + c t^2 / 2: D2 = c exactly; the gap g = sqrt(8 rtol lambda / c)
    c, rtol = 0.002, 0.005
    sched = AdaptiveSchedule(rtol=rtol, longest=1000)
    st = _probed(sched, lambda t: 10 + c * t * t / 2, [0, 10, 20])
    lam = 10 + c * 400 / 2
    gap, why = sched.gap(st, 20, threshold=1e6)
    assert why == "curvature" and gap == math.floor(math.sqrt(8 * rtol * lam / c))
    # the linear interpolation over that gap errs by at most rtol * lambda (c g^2 / 8)
    assert c * gap**2 / 8 <= rtol * lam


def test_crossing_gap_is_half_the_way_to_the_threshold():
    # a straight line 10 + t/20 crosses 2/lr = 20 at t = 200; probed at 0, 50, 100 (value 15)
    sched = AdaptiveSchedule(longest=1000, look=8)
    line = lambda t: 10 + t / 20  # noqa: E731
    st = _probed(sched, line, [0, 50, 100])
    assert sched.gap(st, 100, threshold=20.0) == (50, "crossing")  # half of 100 steps
    st = sched.record(st, 150, line(150), 10)
    assert sched.gap(st, 150, threshold=20.0) == (25, "crossing")
    st = sched.record(st, 175, line(175), 10)
    assert sched.gap(st, 175, threshold=20.0) == (12, "crossing")  # floor(half of 25)
    # within two looks (16 steps) of the crossing: onto it (ceil), 13 steps to t = 200
    st = sched.record(st, 187, line(187), 10)
    assert sched.gap(st, 187, threshold=20.0) == (13, "crossing")
    # no crossing is predicted with a falling trend, nor without a threshold
    st = _probed(sched, lambda t: 10 - t / 2, [0, 5, 10])
    assert sched.gap(st, 10, threshold=20.0) == (1000, "longest")
    st = _probed(sched, line, [0, 5, 10])
    assert sched.gap(st, 10, threshold=math.nan) == (1000, "longest")


def test_loss_rises_shorten_the_gap():
    sched = AdaptiveSchedule(longest=100, edge_gap=4)
    far = _probed(sched, lambda t: 10.0, [0, 50, 100])
    assert sched.gap(far, 100, threshold=20.0) == (100, "longest")
    # a loss rise in a gap under way ends it (if longer than the edge's)
    rose = sched.observe(far, np.array([1.0, 0.9, 0.95, 0.8]))
    assert int(rose.rises) == 1 and float(rose.last_loss) == 0.8
    assert sched.cut(rose, 100, 108) and not sched.cut(far, 100, 108)
    assert not sched.cut(rose, 4, 102)  # a gap as short as the edge's runs to its end
    # rises are counted across chunks (the last loss is kept)
    again = sched.observe(rose, np.array([0.85, 0.7]))
    assert int(again.rises) == 2
    # the probe after them: the edge; its count starts again
    edge = sched.record(again, 108, 10.0, 10)
    assert int(edge.rises) == 0 and sched.gap(edge, 108, threshold=20.0) == (4, "edge")
    # a calm gap after it: no edge, but no curvature across the catapult either
    calm = sched.record(sched.observe(edge, np.array([0.6, 0.5])), 112, 12.0, 10)
    assert sched.gap(calm, 112, threshold=1e6) == (100, "longest")
    calm = sched.record(calm, 212, 13.0, 10)
    calm = sched.record(calm, 312, 15.0, 10)  # three calm values: D2 = 2 (0.02 - 0.01) / 200
    g = math.floor(math.sqrt(8 * sched.rtol * 15.0 / 1e-4))
    assert sched.gap(calm, 312, threshold=1e6) == (g, "curvature")


def test_pieces_add_up_to_the_gap():
    sched = AdaptiveSchedule(look=8)
    for gap in range(1, 70):
        pieces = sched.pieces(gap)
        assert sum(pieces) == gap and set(pieces) <= {1, 2, 4, 8}
        assert len(pieces) == gap // 8 + bin(gap % 8).count("1")


def test_start_longest_and_budget():
    sched = AdaptiveSchedule(longest=50, first_gap=8, budget=0.5)
    st = sched.record(ScheduleState.empty(), 0, 10.0, 60)
    assert sched.gap(st, 0, 20.0) == (8, "start")
    st = sched.record(st, 8, 10.0, 12)
    st = sched.record(st, 16, 10.0, 9)
    assert float(st.spent) == 0  # the first three probes (the start) are outside the budget
    # flat curve: the longest gap; the budget affords the next probe (cost <= 12, the largest
    # of the last three but the cold one) from step 12 / 0.5 = 24 on
    assert sched.gap(st, 16, 20.0) == (50, "longest")
    st = sched.record(st, 66, 10.0, 40)
    assert float(st.spent) == 40
    need = math.ceil((40 + 40) / 0.5 - 66)  # spent + the next cost within 0.5 * (66 + gap)
    assert need > 50 and sched.gap(st, 66, 20.0) == (need, "budget")
    # a loss rise ends a long gap only where the budget affords a probe
    rose = sched.observe(st, np.array([1.0, 1.1]))
    assert not sched.cut(rose, 94, 66 + 8) and sched.cut(rose, 94, 160)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"schedule": "sometimes"}, "probes.schedule"),
        ({"schedule": "adaptive", "budget": 0.0}, "probes.budget"),
        ({"schedule": "adaptive", "budget": -1.0}, "probes.budget"),
        ({"schedule": "adaptive", "budget": math.inf}, "probes.budget"),
        ({"schedule": "adaptive", "budget": math.nan}, "probes.budget"),
        ({"schedule": "adaptive", "budget": True}, "probes.budget"),
        ({"schedule": "adaptive", "budget": "2"}, "probes.budget"),
        ({"budget": 2.0}, "probes.budget"),  # a budget belongs to the adaptive schedule
        ({"schedule": "adaptive", "sharpness": False}, "probes.schedule"),
        ({"schedule": "adaptive", "every_step": True}, "probes.schedule"),
    ],
)
def test_bad_settings_are_refused(kwargs, field):
    with pytest.raises(ConfigError) as err:
        Probes(**kwargs)
    assert err.value.field == field
    if field == "probes.schedule" and kwargs["schedule"] == "sometimes":
        assert "'fixed' or 'adaptive'" in str(err.value)


def _net():
    loss, w = small_mlp_loss(n=40, hidden=8)
    return Objective.from_fn(loss, w, dtype="float64")


def test_probe_every_one_is_refused_before_any_step():
    calls = []

    def loss(w):
        calls.append(1)
        return (w**2).sum()

    with pytest.raises(ConfigError) as err:
        run(Optimizer(rules.GD(0.1)), loss, 10, w0=np.ones(3), probe_every=1,
            probes=Probes(schedule="adaptive"))  # fmt: skip
    assert err.value.field == "probe_every" and not calls


# sharpening from 3.2 to 2/lr = 3.64 and on to the edge (float64)
STEPS, LR, BUDGET = 250, 0.55, 1.0


@pytest.fixture(scope="module")
def tiny_run():
    return _tiny()


def _tiny():
    probes = Probes(schedule="adaptive", budget=BUDGET, alignment=False)
    with jax.enable_x64(True):
        return run(Optimizer(rules.GD(LR)), _net(), STEPS, probe_every=40, probes=probes)


def test_tiny_run_records_every_probe_and_keeps_the_budget(tiny_run):
    m = tiny_run.metrics
    assert tiny_run.status == "completed" and list(m["step"]) == list(range(STEPS + 1))
    probed = m[m["sharpness"].notna()]
    # a probed row says why, an unprobed one nothing
    assert probed["probe_reason"].isin(REASONS).all()
    assert m.loc[m["sharpness"].isna(), "probe_reason"].isna().all()
    steps = probed["step"].to_numpy()
    assert steps[0] == 0 and steps[-1] == STEPS
    assert probed["probe_reason"].iloc[0] == "start" and probed["probe_reason"].iloc[-1] == "last"
    gaps = np.diff(steps)
    assert np.all((gaps <= 40) | (probed["probe_reason"].to_numpy()[1:] == "budget"))
    # the budget: the products after the first three probes and before the last stay within
    # BUDGET * t at every probe (the estimate of the next probe's cost may miss by one probe)
    cost = probed["sharpness_matvecs"].to_numpy(float)
    inner = np.cumsum(cost[3:-1])
    assert np.all(inner <= BUDGET * steps[3:-1] + cost[3:-1].max())
    assert inner[-1] <= BUDGET * STEPS


def test_tiny_run_decisions_replay(tiny_run):
    """The gaps the run took are the schedule's pure decisions on the values and losses it
    recorded (every step's loss is logged), replayed here without the loop."""
    m = tiny_run.metrics
    sched = Probes(schedule="adaptive", budget=BUDGET).adaptive(40)
    probed = m[m["sharpness"].notna()]
    loss = m["loss"].to_numpy(float)
    st = ScheduleState.empty()
    rows = list(probed.itertuples())
    for a, b in zip(rows[:-1], rows[1:], strict=True):
        st = sched.record(st, a.step, a.sharpness, a.sharpness_matvecs)
        gap, why = sched.gap(st, a.step, a.threshold)
        st = sched.observe(st, loss[a.step : b.step])
        if b.probe_reason == "last":
            assert b.step <= a.step + gap and b.step == STEPS
        elif b.probe_reason == "loss_rise":
            assert b.step < a.step + gap and int(st.rises) > 0
        else:
            assert (b.step - a.step, b.probe_reason) == (gap, why)


@pytest.mark.slow  # the resume test below repeats a run too
def test_adaptive_run_is_deterministic(tiny_run):
    a, b = tiny_run.metrics, _tiny().metrics
    np.testing.assert_array_equal(
        a["step"][a["sharpness"].notna()], b["step"][b["sharpness"].notna()]
    )
    assert list(a["probe_reason"].dropna()) == list(b["probe_reason"].dropna())


class _Interrupt(Exception):
    pass


def test_adaptive_run_resumes_to_the_same_probes(tiny_run, tmp_path):
    """Stopped at a probed step (its checkpoint holds the schedule's state from before that
    probe) and resumed, the run probes the same steps for the same reasons and values."""
    ref = tiny_run.metrics
    probed = ref[ref["sharpness"].notna()]
    cut = int(probed["step"].iloc[6])

    class Boom(HostProbe):
        def __call__(self, at, state):
            if at.step == cut:
                raise _Interrupt
            return {}, state

    probes = Probes(schedule="adaptive", budget=BUDGET, alignment=False)
    kw = dict(probe_every=40, probes=probes, out=tmp_path / "cut", flush_seconds=0)
    with jax.enable_x64(True):
        with pytest.raises(_Interrupt):
            run(Optimizer(rules.GD(LR)), _net(), STEPS, custom_probes=(Boom(),), **kw)
        again = run(Optimizer(rules.GD(LR)), _net(), STEPS, resume=True, **kw)
    assert again.status == "completed"
    m = again.metrics
    cols = ["step", "loss", "sharpness", "sharpness_matvecs", "probe_reason"]
    a, b = m[m["sharpness"].notna()][cols], probed[cols]
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
