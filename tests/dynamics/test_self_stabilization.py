"""Self-stabilization: alpha, beta, delta, the projection, and GD's oscillation on a toy."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from eoslab import Objective
from eoslab.dynamics import (
    SelfStabilization,
    predicted_xy,
    stability_quantities,
    stable_projection,
)
from eoslab.errors import ConfigError
from eoslab.runner import Probes, Stop, run


def moving_average(x, h):
    """Centred mean over 2h + 1 samples, shrinking at the ends (pandas, independently)."""
    return (
        pd.Series(np.asarray(x, np.float64)).rolling(2 * h + 1, center=True, min_periods=1).mean()
    )


def self_stabilization(loss, w0, *, lr, steps):
    """GD beside its constrained trajectory: the process's rows 0 .. steps-1."""
    res = run(
        SelfStabilization(lr),
        loss,
        steps,
        w0=w0,
        probe_every=steps,
        probes=Probes(sharpness=False),
        stop=Stop(raise_on_divergence=True),
    )
    df = res.series("main")
    return df[df["step"] < steps].reset_index(drop=True)


C0, KAPPA, LR = 1.0, 0.05, 0.1


def toy(w):
    x, y, z = w[0], w[1], w[2]
    return (C0 + x) * jnp.log(jnp.cosh(y)) - KAPPA * x + 0.5 * (2.0 + 0.1 * x) * z**2


def test_quantities_closed_form():
    # at y = 0, z = 0: S = c + x (u = e_y), grad S = e_x, alpha = kappa, beta = 1
    q = stability_quantities(toy, jnp.array([15.0, 0.0, 0.0]))
    assert float(q.S) == pytest.approx(16.0)
    assert abs(float(q.u[1])) == pytest.approx(1.0)
    assert float(q.alpha) == pytest.approx(KAPPA)
    assert float(q.beta) == pytest.approx(1.0)
    assert float(q.delta) == pytest.approx(np.sqrt(2 * KAPPA))


def test_projection_lands_on_stable_set():
    w = stable_projection(toy, jnp.array([19.5, 0.2, 0.0]), lr=LR)
    q = stability_quantities(toy, w)
    assert float(q.S) <= 2 / LR + 1e-5
    assert abs(float(jnp.vdot(q.u, q.grad_L))) < 1e-5


@pytest.mark.slow  # ~20-30 s
@pytest.mark.usefixtures("x64")
def test_gd_oscillation_matches_delta():
    df = self_stabilization(toy, jnp.array([19.6, 0.3, 0.3]), lr=LR, steps=250)
    x2 = float(np.mean(df["x"].to_numpy()[100:] ** 2))
    assert x2 == pytest.approx(2 * KAPPA, rel=0.1)
    assert df["sharpness_dagger"].max() <= 2 / LR * (1 + 1e-6)
    assert df["dist"].max() < 1.0
    avg = moving_average(df["loss"], 10)[100:240]
    pred = (df["loss_dagger"] + moving_average(df["x"] ** 2, 10) / LR)[100:240]
    assert np.mean(avg) == pytest.approx(np.mean(pred), rel=0.5)
    # the process's own prediction: L(theta_dagger) + x^2 / lr at every step
    np.testing.assert_allclose(df["pred_loss"], df["loss_dagger"] + df["x"] ** 2 / LR, rtol=1e-12)


def test_predicted_xy_cycle():
    xs, ys = predicted_xy(KAPPA, 1.0, LR, 0.1, 0.0, 4000)
    assert np.all(np.isfinite(xs))
    assert np.mean(xs[1000:] ** 2) == pytest.approx(2 * KAPPA, rel=0.3)


def test_bad_inputs():
    with pytest.raises(ConfigError) as e:
        SelfStabilization(0.0)
    assert e.value.field == "lr"
    with pytest.raises(ConfigError) as e:
        stable_projection(toy, jnp.zeros(3), lr=0.1, iters=0)
    assert e.value.field == "iters"
    with pytest.raises(ConfigError) as e:
        predicted_xy(0.1, 1.0, 0.1, 0.0, 0.0, steps=-1)
    assert e.value.field == "steps"


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
@pytest.mark.usefixtures("x64")
def test_pull_against_dense_third_derivative():
    # pull = grad S_perp . grad^3 L(dagger)[v, v], by central differences of dense Hessians
    obj = Objective.from_fn(toy, jnp.array([19.6, 0.3, 0.3]))
    proc = SelfStabilization(LR)
    state = proc.init(obj, obj.w0)
    _, row = eqx.filter_jit(proc.step)(obj, state)  # as the runner takes it: compiled
    dag, v = state.dagger, state.theta - state.dagger
    hess = jax.jit(jax.hessian(toy))
    lam, vec = np.linalg.eigh(np.asarray(hess(dag)))
    u = vec[:, -1]
    h = 1e-4
    grad_S = np.array(
        [(u @ np.asarray(hess(dag + h * e) - hess(dag - h * e)) @ u) / (2 * h) for e in np.eye(3)]
    )
    gsp = grad_S - u * (u @ grad_S)
    ref = (v @ np.asarray(hess(dag + h * gsp) - hess(dag - h * gsp)) @ v) / (2 * h)
    assert float(row["pull"]) == pytest.approx(float(ref), rel=1e-4)


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
def test_pull_balances_two_alpha_on_the_toy():
    # one direction at the edge: the time-averaged pull is 2 alpha = 2 kappa (alpha = kappa at y=0)
    df = self_stabilization(toy, jnp.array([19.6, 0.3, 0.3]), lr=LR, steps=250)
    assert np.mean(df["pull"].to_numpy()[100:]) == pytest.approx(2 * KAPPA, rel=0.1)


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
@pytest.mark.usefixtures("x64")
def test_gd_beside_flows_averages_the_prediction_over_gds_window():
    from eoslab.dynamics import CentralFlow, GradientFlow, Optimizer
    from eoslab.dynamics.rules import GD
    from eoslab.reproduce.cohen2025 import gd_beside_flows

    obj = Objective.from_fn(toy, jnp.array([19.6, 0.3, 0.3]), dtype="float64")
    wide, _ = gd_beside_flows(obj, lr=LR, steps=40, every=10, k=1, window=3)
    procs = {"gd": Optimizer(GD(LR)), "gf": GradientFlow(lr=LR), "cf": CentralFlow(lr=LR)}
    rows = run(procs, obj, 40, probe_every=10, probes=Probes(sharpness=False))
    pred = rows.series("cf", "pred_loss")["pred_loss"].to_numpy()[:40]
    gd_loss = rows.series("gd", "loss")["loss"].to_numpy()[:40]
    assert list(wide["step"]) == [0, 10, 20, 30]
    for i, s in enumerate(wide["step"]):
        lo, hi = max(0, s - 3), min(40, s + 4)
        assert wide["pred_loss_cf_avg"].iloc[i] == pytest.approx(np.mean(pred[lo:hi]), rel=1e-12)
        assert wide["loss_gd_avg"].iloc[i] == pytest.approx(np.mean(gd_loss[lo:hi]), rel=1e-12)
    assert np.all(wide["cf_matvecs"] >= 8)  # 4 substeps x H applied to the 2-vector warm block
