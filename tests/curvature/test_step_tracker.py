"""The sharpness at every step (`StepTracker`, ``Probes(every_step=True)``): each certified value
against the dense Hessian's eigenvalue, the fused step against the plain one, resume to the bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import Objective
from eoslab.curvature import as_operator
from eoslab.curvature.step_tracker import StepTracker, StepTrackerState
from eoslab.dynamics.optimizer import Optimizer
from eoslab.dynamics.rules import GD, NormalizedGD, SqrtLossGD
from eoslab.errors import ConfigError
from eoslab.runner import HostProbe, Probes, run
from helpers import assert_same_metrics, quadratic_with_spectrum, small_mlp_loss


@pytest.mark.usefixtures("x64")
def test_linearize_matches_value_grad_and_dense_hessian():
    loss, w = small_mlp_loss(n=20, hidden=5)
    value, grad, matmat = as_operator(loss, w).linearize()
    H = np.asarray(jax.hessian(loss)(w))
    X = np.random.default_rng(0).normal(size=(w.size, 3))
    np.testing.assert_allclose(value, loss(w), rtol=1e-13)
    np.testing.assert_allclose(grad, jax.grad(loss)(w), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(matmat(jnp.asarray(X)), H @ X, rtol=1e-10, atol=1e-12)
    # one column takes the path without vmap
    np.testing.assert_allclose(matmat(jnp.asarray(X[:, :1])), H @ X[:, :1], rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("k", [1, 2])
def test_bounds_hold_on_a_fixed_matrix_with_a_cluster(k):
    eigs = np.array([5.0, 4.999, 4.0, *np.linspace(-1.0, 3.0, 27)])
    loss, A = quadratic_with_spectrum(eigs, seed=1)
    tr = StepTracker(k=k, tol=1e-6, max_rounds=eigs.size // (k + 1))
    st = tr.init(eigs.size, jnp.float64, jax.random.key(0))
    st, eig = tr.update(lambda X: A @ X, st)
    want = np.sort(eigs)[::-1][:k]
    err = np.abs(np.asarray(eig.values) - want)
    assert bool(eig.converged)
    assert np.all(err <= np.asarray(eig.error_bound) * (1 + 1e-9) + 1e-14)
    assert np.all(np.asarray(eig.error_bound) <= 1e-6 * want)
    # a warm start at the same matrix certifies with the top k products alone: the first call
    # polished the residuals to tol / 4
    st, again = tr.update(lambda X: A @ X, st)
    assert int(again.matvecs) == k
    assert np.all(np.abs(np.asarray(again.values) - want) <= np.asarray(again.error_bound))


@pytest.mark.usefixtures("x64")
def test_a_top_only_round_is_bounded_by_its_residual_and_keeps_the_guard():
    """A warm step multiplies only the top vector; its bound is the residual norm
    ||Hv - theta v|| (no guard, no gap), which must hold against eigvalsh."""
    eigs = np.array([10.0, 6.0, *np.linspace(-2.0, 5.0, 30)])
    loss, A = quadratic_with_spectrum(eigs, seed=2)
    tr = StepTracker(k=1, tol=1e-3, max_rounds=8)
    st = tr.init(eigs.size, jnp.float64, jax.random.key(1))
    st, _ = tr.update(lambda X: A @ X, st)
    guard = np.asarray(st.vectors[1])
    # a nearby matrix: the old vectors are a warm start, not the answer
    B = A + 1e-3 * np.diag(np.linspace(0.0, 1.0, eigs.size))
    st2, eig = tr.update(lambda X: B @ X, st)
    v = np.array(tr.predict(st)[0])
    v /= np.linalg.norm(v)
    theta = v @ B @ v
    assert int(eig.matvecs) == 1 and bool(eig.converged) and np.isnan(float(eig.next_value))
    np.testing.assert_allclose(eig.values[0], theta, rtol=1e-12)
    np.testing.assert_allclose(eig.error_bound[0], np.linalg.norm(B @ v - theta * v), rtol=1e-8)
    assert abs(eig.values[0] - np.linalg.eigvalsh(B)[-1]) <= eig.error_bound[0]
    np.testing.assert_allclose(np.asarray(st2.vectors[1]), guard, rtol=0, atol=1e-15)
    # the kept vector is the power step B v / |B v|, whose residual is smaller than v's
    Bv = B @ v
    np.testing.assert_allclose(np.asarray(st2.vectors[0]), Bv / np.linalg.norm(Bv), atol=1e-12)
    u = Bv / np.linalg.norm(Bv)
    assert np.linalg.norm(B @ u - (u @ B @ u) * u) < np.linalg.norm(B @ v - theta * v)


def _history(seq):
    """A tracker state whose vectors are ``seq`` (oldest first; the newest is the top row)."""
    seq = [jnp.asarray(x)[None, :] for x in seq]
    past = (seq[-2::-1] + [jnp.zeros_like(seq[0])] * 4)[:4]
    rows = jnp.concatenate([seq[-1], jnp.zeros_like(seq[-1])])
    return StepTrackerState(
        rows, jnp.stack(past), jnp.asarray(min(len(seq) - 1, 4)), jnp.zeros((), rows.dtype)
    )


def test_predict_continues_a_drift_with_a_growing_alternation():
    """v_t = a + t e + (-rho)^t b satisfies Delta_t = (1 - rho) Delta_(t-1) + rho Delta_(t-2): the
    fitted recurrence predicts the next vector up to its ridge, far better than a straight line
    or the last vector."""
    rng = np.random.default_rng(0)
    a, e, b = rng.normal(size=(3, 40))
    seq = [a + t * 1e-3 * e + (-1.2) ** t * 1e-3 * b for t in range(6)]
    truth = a + 6 * 1e-3 * e + (-1.2) ** 6 * 1e-3 * b
    tr, st = StepTracker(k=1), _history(seq)
    pred = np.asarray(tr.predict(st)[0])
    line = 2 * seq[-1] - seq[-2]
    step = np.linalg.norm(seq[-1] - seq[-2])
    assert np.linalg.norm(pred - truth) < 1e-3 * step
    assert np.linalg.norm(line - truth) > 2 * step


def test_predict_continues_an_alternation_whose_amplitude_drifts():
    """v_t = a + t s + (-1)^t (b + t e): each parity moves on its own line, so the same-parity
    line 2 v_(t-1) - v_(t-3) is exact, where a line plus period 2 misses by 4 |e| (three modes,
    beyond the two-term recurrence)."""
    rng = np.random.default_rng(2)
    a, s, b, e = rng.normal(size=(4, 40))

    def v(t):
        return a + t * 1e-3 * s + (-1) ** t * (1e-2 * b + t * 1e-3 * e)

    seq = [v(t) for t in range(6)]
    pred = np.asarray(StepTracker(k=1).predict(_history(seq))[0])
    period2 = seq[-1] + seq[-2] - seq[-3]
    step = np.linalg.norm(seq[-1] - seq[-2])
    assert np.linalg.norm(pred - v(6)) < 1e-4 * step
    assert np.linalg.norm(period2 - v(6)) > 0.1 * step


@pytest.mark.parametrize("n", [1, 2, 3])
def test_predict_with_a_short_history(n):
    """One vector: itself. With 2 or 3, the one-term fit Delta_0 ~ c Delta_1 (a straight line
    continues as one)."""
    rng = np.random.default_rng(1)
    a, e = rng.normal(size=(2, 30))
    seq = [a + t * 1e-2 * e for t in range(n)]
    pred = np.asarray(StepTracker(k=1).predict(_history(seq))[0])
    want = seq[-1] if n < 3 else a + n * 1e-2 * e
    # up to the fit's ridge (1e-4 of its normal matrix)
    np.testing.assert_allclose(pred, want, atol=1e-3 * 1e-2 * np.linalg.norm(e))


@pytest.mark.usefixtures("x64")
def test_every_step_sharpness_is_within_its_bound_of_the_dense_eigenvalue():
    """GD at lr 0.5 on a small tanh MLP (sharpening to 2/lr = 4, then the edge): every step's
    certified sharpness against eigvalsh of jax.hessian at the same point."""
    loss, w0 = small_mlp_loss(n=24, hidden=6)
    obj = Objective.from_fn(loss, w0, dtype="float64")
    r = run(
        Optimizer(GD(0.5)),
        obj,
        150,
        probe_every=50,
        probes=Probes(every_step=True, tol=1e-4, alignment=False),
        keep_points=True,
    )
    m = r.metrics
    assert len(m) == 151 and m["sharpness"].notna().all()
    assert m["sharpness"].max() > 4.0  # it reached the edge
    hessian = jax.jit(jax.hessian(loss))  # one compilation for the 151 points
    for w, lam, bound in zip(m["w"], m["sharpness"], m["sharpness_error"], strict=True):
        dense = np.linalg.eigvalsh(np.asarray(hessian(jnp.asarray(w))))[-1]
        assert abs(lam - dense) <= bound * (1 + 1e-9) + 1e-12
        assert bound <= 1e-4 * abs(dense)
    # after the Lanczos start, a warm step certifies with one or two rounds (4 products each)
    assert np.median(m["sharpness_matvecs"][1:]) <= 8


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    # gd by default; sqrt-loss GD (its own objective) and normalized GD under -m slow
    "rule",
    [
        GD(0.5),
        pytest.param(NormalizedGD(0.05), marks=pytest.mark.slow),
        pytest.param(SqrtLossGD(0.1), marks=pytest.mark.slow),
    ],
)
def test_the_fused_step_takes_the_same_steps(rule):
    """The step given the linearization's gradient = the step that computes its own."""
    loss, w0 = small_mlp_loss(n=24, hidden=6, seed=3)
    obj = Objective.from_fn(loss, w0, dtype="float64")
    if rule.name.startswith("sqrt"):  # L_min below the loss, so sqrt(L - L_min) is smooth
        obj = Objective.from_fn(loss, w0, 0.01, dtype="float64").sqrt()
    kw = dict(probe_every=10, keep_points=True)
    plain = run(Optimizer(rule), obj, 30, probes=Probes(alignment=False), **kw).metrics
    fused = run(
        Optimizer(rule), obj, 30, probes=Probes(every_step=True, alignment=False), **kw
    ).metrics
    for col in ("loss", "grad_norm", "lr_eff"):
        np.testing.assert_allclose(fused[col], plain[col], rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(np.stack(fused["w"]), np.stack(plain["w"]), rtol=1e-10, atol=1e-13)


@pytest.mark.usefixtures("x64")
def test_resume_continues_the_step_tracker_bit_for_bit(tmp_path):
    """Interrupted at a probe (a custom probe raises), then resumed: the same table as one run."""
    loss, w0 = small_mlp_loss(n=24, hidden=6)
    obj = Objective.from_fn(loss, w0, dtype="float64")
    kw = dict(probe_every=10, probes=Probes(every_step=True, tol=1e-6), flush_seconds=0)
    whole = run(Optimizer(GD(1.0)), obj, 40, out=tmp_path / "a", **kw).metrics

    calls = {"n": 0}

    class Interrupt(HostProbe):
        def __call__(self, at, state):
            calls["n"] += 1
            if at.step == 30 and calls["n"] < 10:
                calls["n"] = 10
                raise KeyboardInterrupt
            return {}, state

    interrupt = Interrupt()

    with pytest.raises(KeyboardInterrupt):
        run(Optimizer(GD(1.0)), obj, 40, out=tmp_path / "b", custom_probes=(interrupt,), **kw)
    again = dict(out=tmp_path / "b", resume=True, custom_probes=(interrupt,))
    resumed = run(Optimizer(GD(1.0)), obj, 40, **again, **kw).metrics
    assert_same_metrics(whole, resumed)


def test_every_step_refuses_a_growing_k():
    with pytest.raises(ConfigError, match="probes.grow_above"):
        Probes(every_step=True, grow_above=1.0)


@pytest.mark.usefixtures("x64")
def test_checkpoint_round_trip_and_older_column_layout():
    """A checkpoint's tracker arrays restore the state exactly; one from an older run (``step_V``,
    vectors as columns, no history) restarts the history from those vectors."""
    from eoslab.runner.loop import _Lockstep

    loss, w0 = small_mlp_loss(n=24, hidden=6)
    obj = Objective.from_fn(loss, w0, dtype="float64")

    def lockstep():
        return _Lockstep({"gd": Optimizer(GD(0.5))}, obj, w0, Probes(every_step=True), 0, False)

    lock = lockstep()
    lock.advance(0, 3, 1, may_end=False)  # the Lanczos start, then three tracker steps
    state = lock.pstates["gd"]["step"]
    arrays = lock.arrays(3)
    again = lockstep()
    again.load(arrays, "here")
    for a, b in zip(state, again.pstates["gd"]["step"], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(again.pstates["gd"]["step"].count) == 3
    older = {k: v for k, v in arrays.items() if "__probe_step_" not in k}
    older["gd__probe_step_V"] = np.asarray(state.vectors).T
    old = lockstep()
    old.load(older, "here")
    np.testing.assert_array_equal(old.pstates["gd"]["step"].vectors, state.vectors)
    assert int(old.pstates["gd"]["step"].count) == 0
    assert not np.any(np.asarray(old.pstates["gd"]["step"].past))
