"""Phi, the tangent projector, the limiting flows and the EoS identities against closed forms."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

from eoslab import ConfigError, eos_diagnostics, limiting_flow, phi, tangent_projector
from eoslab.dynamics import (
    GradientFlow,
    Optimizer,
    ProjectedLimitingFlow,
    RetractedLimitingFlow,
    phi_result,
)
from eoslab.dynamics.rules import NormalizedGD, SqrtLossGD
from eoslab.errors import NotConvergedError
from eoslab.runner import Probes, run

NO_PROBES = Probes(sharpness=False, alignment=False)


def iterates(loss, w0, rule, steps, every=1):
    """The rule's iterates w_0, w_every, ..., w_steps through the loop."""
    res = run(
        Optimizer(rule),
        loss,
        steps,
        w0=w0,
        probe_every=steps,
        log_every=every,
        probes=NO_PROBES,
        keep_points=True,
    )
    return res.trajectory()


def flow_from(loss, ws, algorithm, lr, steps):
    """The limiting flow from ws[0] over the iterates' span of flow time."""
    return limiting_flow(
        loss, ws[0], algorithm=algorithm, tau=lr**2 * float(steps[-1] - steps[0]), n_save=1001
    )


def valley(w):
    """L = (1 + x^2) y^2: Gamma = {y = 0}, lambda_1 = 2 (1 + x^2) on Gamma."""
    return (1 + w[0] ** 2) * w[1] ** 2


def valley2(w):
    """A second normal direction: lambda_2 = 0.6."""
    return (1 + w[0] ** 2) * w[1] ** 2 + 0.3 * w[2] ** 2


def sphere(w):
    """L = 1/2 (1 + w_1^2)(|w|^2 - 1)^2: Gamma is the unit sphere, lambda_1 = 4 (1 + w_1^2)."""
    return 0.5 * (1 + w[0] ** 2) * (w @ w - 1.0) ** 2


def valley_phi_x(x, y):
    # ln|x| + x^2/2 - y^2/2 is conserved by gradient flow on the valley
    c = np.log(abs(x)) + x**2 / 2 - y**2 / 2
    return brentq(lambda s: np.log(s) + s * s / 2 - c, 1e-6, 50.0)


def ngd_flow_x(x0, tau):
    # dX/dtau = -X / (2 (1 + X^2))  <=>  ln X + X^2/2 = ln X0 + X0^2/2 - tau/2
    c = np.log(x0) + x0**2 / 2 - tau / 2
    return brentq(lambda s: np.log(s) + s * s / 2 - c, 1e-6, 50.0)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("start", [(2.0, 0.3), (0.5, -1.0), (-1.5, 0.8)])
def test_phi_matches_conserved_quantity_on_valley(start):
    x = phi(valley, jnp.array(start))
    assert float(x[0]) == pytest.approx(np.sign(start[0]) * valley_phi_x(*start), abs=1e-7)
    assert abs(float(x[1])) < 1e-8


def test_phi_on_the_sphere_is_the_radial_projection_when_flow_is_radial():
    f = lambda w: 0.5 * (w @ w - 1.0) ** 2
    w = jnp.array([0.3, -1.2, 0.9])
    np.testing.assert_allclose(phi(f, w), w / jnp.linalg.norm(w), atol=1e-8)


def test_phi_refuses_to_return_an_unconverged_point():
    with pytest.raises(NotConvergedError, match="t_max"):
        phi(valley, jnp.array([2.0, 0.3]), t_max=0.01)
    assert not bool(phi_result(valley, jnp.array([2.0, 0.3]), t_max=0.01).converged)
    with pytest.raises(ConfigError, match="gtol"):
        phi(valley, jnp.array([2.0, 0.3]), gtol=-1.0)


@pytest.mark.usefixtures("x64")
def test_tangent_projector_on_a_curved_manifold():
    x = jnp.array([0.36, 0.48, 0.8])  # on the unit sphere
    P = tangent_projector(sphere, x)
    assert P.rank == 1
    np.testing.assert_allclose(P.matrix(), np.eye(3) - np.outer(x, x), atol=1e-10)
    Pm = tangent_projector(sphere, x, method="matfree")
    np.testing.assert_allclose(Pm.matrix(), np.eye(3) - np.outer(x, x), atol=1e-8)
    v = jnp.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(P(v), (np.eye(3) - np.outer(x, x)) @ v, atol=1e-10)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("integrator, tol", [("projection", 1e-8), ("retraction", 2e-3)])
def test_limiting_flows_on_valley_match_closed_forms(integrator, tol):
    x0 = jnp.array([2.0, 0.3])
    X0 = valley_phi_x(2.0, 0.3)
    ngd = limiting_flow(
        valley, x0, algorithm="normalized_gd", tau=1.0, n_save=5, integrator=integrator, h=0.005
    )
    sq = limiting_flow(
        valley, x0, algorithm="sqrt_loss_gd", tau=1.0, n_save=5, integrator=integrator, h=0.005
    )
    for i, t in enumerate(np.asarray(ngd.tau)):
        assert float(ngd.X[i, 0]) == pytest.approx(ngd_flow_x(X0, t), abs=tol)
        assert float(sq.X[i, 0]) == pytest.approx(X0 * np.exp(-t / 2), abs=tol)
    np.testing.assert_allclose(ngd.sharpness, 2 * (1 + np.asarray(ngd.X[:, 0]) ** 2), rtol=1e-6)
    assert np.all(np.diff(np.asarray(ngd.sharpness)) < 0)  # sharpness decreases along the flow


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("algorithm", ["normalized_gd", "sqrt_loss_gd"])
def test_limiting_flow_on_the_sphere_matches_independent_integration(algorithm):
    # Riemannian gradient of lambda_1 = 4 (1 + w1^2) on the sphere: 8 w1 (e1 - w1 w)
    def rhs(t, w):
        g = 8 * w[0] * (np.eye(3)[0] - w[0] * w)
        if algorithm == "normalized_gd":
            return -0.25 * g / (4 * (1 + w[0] ** 2))
        return -0.125 * g

    x0 = np.array([0.6, 0.48, 0.64])
    ref = solve_ivp(rhs, (0, 2.0), x0, t_eval=[0.5, 1.0, 2.0], rtol=1e-11, atol=1e-12)
    fl = limiting_flow(sphere, jnp.asarray(x0), algorithm=algorithm, tau=np.array([0, 0.5, 1, 2.0]))
    np.testing.assert_allclose(np.asarray(fl.X)[1:], ref.y.T, atol=1e-7)
    np.testing.assert_allclose(fl.sharpness, 4 * (1 + np.asarray(fl.X)[:, 0] ** 2), rtol=1e-7)


def _phase2_error(rule_fn, lr, algorithm):
    steps = int(round(1 / lr**2))
    ws = iterates(valley, jnp.array([2.0, 0.3]), rule_fn(lr), steps, every=steps)
    X0 = valley_phi_x(2.0, 0.3)
    target = ngd_flow_x(X0, 1.0) if algorithm == "normalized_gd" else X0 * np.exp(-0.5)
    return abs(float(phi(valley, jnp.asarray(ws[-1]))[0]) - target)


@pytest.mark.parametrize(
    "rule_fn, algorithm", [(NormalizedGD, "normalized_gd"), (SqrtLossGD, "sqrt_loss_gd")]
)
def test_optimizers_track_the_flow_within_order_lr(rule_fn, algorithm):
    e1 = _phase2_error(rule_fn, 0.02, algorithm)
    e2 = _phase2_error(rule_fn, 0.01, algorithm)
    assert e1 <= 0.1 * 0.02 and e2 <= 0.1 * 0.01
    assert e2 <= 0.6 * e1  # at least linear in lr (measured ratios 0.25-0.35)


def _coarse_flow(loss, x0, algorithm, tau):
    # eos_diagnostics' own flow (1,000 saved steps) only feeds flow_dist, which these tests do
    # not check: a coarse one keeps them cheap
    return limiting_flow(loss, x0, algorithm=algorithm, tau=tau, n_save=3)


@pytest.mark.usefixtures("x64")
def test_eos_identities_normalized_gd():
    lr = 0.01
    tail = jnp.asarray(iterates(valley, jnp.array([2.0, 0.3]), NormalizedGD(lr), 10_000)[-50:])
    steps = np.arange(9_950, 10_000)
    fl = flow_from(valley, tail, "normalized_gd", lr, steps)
    df = eos_diagnostics(
        valley, tail, algorithm="normalized_gd", lr=lr, flow=fl, phi_every=49, steps=steps
    )
    # every step has length exactly lr, and sqrt L_t + sqrt L_t+1 = lr sqrt(lambda_1 / 2)
    np.testing.assert_allclose(
        np.linalg.norm(np.diff(np.asarray(tail), axis=0), axis=1), lr, rtol=1e-9
    )
    ok = df["sqrt_loss_sum"].notna()
    np.testing.assert_allclose(df["sqrt_loss_sum"][ok], df["sqrt_loss_pred"][ok], rtol=1e-2)
    assert np.all(np.abs(df["stab_sum"][ok] - 1) <= 5 * lr)
    # iterates stay O(lr) from the manifold and inside the invariant set (R_1 <= O(lr^2))
    assert np.all(df["phi_dist"].dropna() <= lr * 1.01)
    assert np.all(df["R_1"].dropna() <= lr**2)


def test_eos_identities_sqrt_loss_gd():
    lr = 0.01
    tail = jnp.asarray(iterates(valley, jnp.array([2.0, 0.3]), SqrtLossGD(lr), 10_000)[-50:])
    steps = np.arange(9_950, 10_000)
    fl = flow_from(valley, tail, "sqrt_loss_gd", lr, steps)
    df = eos_diagnostics(
        valley, tail, algorithm="sqrt_loss_gd", lr=lr, flow=fl, phi_every=49, steps=steps
    )
    lam = 2 * (1 + np.asarray(tail[:-1, 0]) ** 2)
    np.testing.assert_allclose(
        np.abs(np.diff(np.asarray(tail[:, 1]))), lr * np.sqrt(lam / 2), rtol=1e-2
    )
    ok = df["sqrt_loss_sum"].notna()
    # the theory's eta * lambda_1 / 2 (not eta * lambda_1)
    np.testing.assert_allclose(df["sqrt_loss_sum"][ok], df["sqrt_loss_pred"][ok], rtol=1e-2)
    assert np.all(np.abs(df["stab_sum"][ok] - 1) <= 5 * lr)


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
def test_stableness_identity_and_alignment_with_a_second_normal_direction():
    lr = 0.02
    steps = int(1 / lr**2)
    ws = jnp.asarray(iterates(valley2, jnp.array([2.0, 0.3, 0.3]), NormalizedGD(lr), steps))
    tail, at = ws[steps // 2 :], np.arange(steps // 2, steps + 1)
    df = eos_diagnostics(
        valley2,
        tail,
        algorithm="normalized_gd",
        lr=lr,
        flow=flow_from(valley2, tail, "normalized_gd", lr, at),
        phi_every=125,
        steps=at,
    )
    ok = df["stab_sum"].notna()
    assert np.all(np.abs(df["stab_sum"][ok] - 1) <= 5 * lr)
    assert df["theta"].dropna().mean() <= 5 * lr
    X0 = valley_phi_x(2.0, 0.3)
    err = abs(float(phi(valley2, ws[-1])[0]) - ngd_flow_x(X0, 1.0))
    assert err <= lr


def test_quadratic_two_cycle_theorem_3_1():
    A = jnp.diag(jnp.array([1.0, 0.4]))
    quad = lambda w: 0.5 * w @ A @ w
    lr = 1.0
    xt = (
        iterates(quad, jnp.array([0.37, -0.81]), NormalizedGD(lr), 80) @ np.asarray(A) / lr
    )  # x~ = A x / eta
    norms = np.linalg.norm(xt, axis=1)
    np.testing.assert_allclose(norms[-10:-1] + norms[-9:], 1.0, atol=1e-9)  # sums to lambda_1
    assert np.all(np.abs(xt[-10:, 1]) < 1e-8)  # aligned with v1


@pytest.mark.usefixtures("x64")
def test_optimizer_beside_gradient_flow_and_limiting_flow():
    # sqrt-loss GD, gradient flow and the limiting flow from one start in one loop, Phi probed
    lr = 0.05
    procs = {
        "opt": Optimizer(SqrtLossGD(lr)),
        "gf": GradientFlow(lr=lr),
        "flow": ProjectedLimitingFlow(algorithm="sqrt_loss_gd", lr=lr),
    }
    res = run(
        procs,
        valley,
        400,
        w0=jnp.array([2.0, 0.3]),
        probe_every=100,
        log_every=100,
        probes=Probes(tol=1e-6, alignment=False, phi=True),
    )
    m = res.wide(["loss", "sharpness", "tau", "dist_gf", "dist_flow", "phi_dist_flow", "phi_dist"])
    assert list(m["step"]) == [0, 100, 200, 300, 400]
    np.testing.assert_allclose(m["tau_flow"], lr**2 * m["step"], rtol=1e-12)  # tau = lr^2 t
    ws = iterates(valley, jnp.array([2.0, 0.3]), SqrtLossGD(lr), 400, every=100)
    # Phi of the iterates follows the flow to O(lr); gradient flow is left behind at Phi(x0)
    assert np.all(m["phi_dist_flow_opt"] <= lr)
    assert m["dist_gf_opt"].iloc[-1] > 10 * m["phi_dist_flow_opt"].iloc[-1]
    np.testing.assert_allclose(
        m["phi_dist_opt"],
        np.hypot(ws[:, 0] - [float(phi(valley, jnp.asarray(w))[0]) for w in ws], ws[:, 1]),
        atol=1e-7,
    )


def test_bad_algorithm_is_refused():
    with pytest.raises(ConfigError, match="algorithm"):
        limiting_flow(valley, jnp.array([2.0, 0.3]), algorithm="gd", tau=1.0)


@pytest.mark.usefixtures("x64")
def test_retraction_flow_stays_on_gamma_and_records_its_guards():
    # every retraction projects to |grad L| < phi_gtol; the guard columns are L and |grad L| at X
    gtol = 1e-7
    x0 = jnp.array([2.0, 0.3])
    fl = limiting_flow(
        valley,
        x0,
        algorithm="normalized_gd",
        tau=0.5,
        n_save=6,
        integrator="retraction",
        h=0.01,
        phi_gtol=gtol,
    )
    X = np.asarray(fl.X)
    # independent: L = (1 + x^2) y^2 and its gradient in closed form
    loss = (1 + X[:, 0] ** 2) * X[:, 1] ** 2
    grad = np.stack([2 * X[:, 0] * X[:, 1] ** 2, 2 * (1 + X[:, 0] ** 2) * X[:, 1]], axis=1)
    np.testing.assert_allclose(fl.loss, loss, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(fl.grad_norm, np.linalg.norm(grad, axis=1), rtol=1e-6, atol=1e-30)
    assert np.all(np.linalg.norm(grad, axis=1) < gtol)
    drift = fl.drift()
    assert drift["grad_norm"] == pytest.approx(
        np.max(np.linalg.norm(grad, axis=1)) / np.linalg.norm(grad[0]), rel=1e-6
    )
    assert drift["loss"] == pytest.approx(loss.max() / loss[0], rel=1e-6)
    X0 = valley_phi_x(2.0, 0.3)
    for i, t in enumerate(np.asarray(fl.tau)):
        assert X[i, 0] == pytest.approx(ngd_flow_x(X0, t), abs=5e-3 * t + 1e-7)


def test_retraction_refuses_a_bad_tolerance_and_has_no_fixed_projection_time():
    with pytest.raises(ConfigError, match="phi_gtol"):
        RetractedLimitingFlow(algorithm="normalized_gd", lr=0.1, phi_gtol=0.0)
    with pytest.raises(TypeError):
        RetractedLimitingFlow(algorithm="normalized_gd", lr=0.1, projection_time=1.0)


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
@pytest.mark.usefixtures("x64")
def test_float32_objectives_stay_float32_under_64_bit_mode():
    # 64-bit mode on (the x64 fixture); diffrax promotes its state to its times' dtype, so
    # Python-float times once made phi of a float32 objective float64, and the retraction flow's
    # HVP then paired a float64 point with a float32 eigenvector (mnist-flow under pytest)
    import jax

    from eoslab import Objective
    from eoslab.dynamics import GradientFlow

    assert jax.config.jax_enable_x64
    obj = Objective.from_fn(valley, jnp.array([2.0, 0.3]), dtype="float32")
    r = phi_result(obj, obj.w0, gtol=1e-5)
    assert r.x.dtype == r.t.dtype == r.grad_norm.dtype == jnp.float32
    assert float(r.x[0]) == pytest.approx(valley_phi_x(2.0, 0.3), abs=1e-5)

    def flow(objective):  # phi(w0, t) at t = 0, 0.25, 0.5: two steps of GradientFlow(lr=0.25)
        proc = GradientFlow(lr=0.25)
        state = proc.init(objective, objective.w0)
        points = [state.w]
        for _ in range(2):
            state, _ = proc.step(objective, state)
            points.append(state.w)
        return jnp.stack(points)

    path = flow(obj)
    assert path.dtype == jnp.float32
    # independent: the float64 flow from the same start
    ref = flow(Objective.from_fn(valley, jnp.array([2.0, 0.3]), dtype="float64"))
    assert ref.dtype == jnp.float64
    np.testing.assert_allclose(path, ref, rtol=1e-4)
    fl = limiting_flow(
        obj,
        obj.w0,
        algorithm="normalized_gd",
        tau=0.2,
        n_save=3,
        integrator="retraction",
        h=0.05,
        phi_gtol=1e-4,
    )
    X0 = valley_phi_x(2.0, 0.3)
    for i, t in enumerate(np.asarray(fl.tau, np.float64)):
        assert float(fl.X[i, 0]) == pytest.approx(ngd_flow_x(X0, t), abs=5e-3 * t + 1e-4)


def test_phi_tolerances_follow_the_precision():
    import jax

    from eoslab.dynamics.phi import default_tolerances

    assert default_tolerances(jnp.float64) == (1e-8, 1e-10)
    assert default_tolerances(jnp.float32) == (1e-5, 1e-7)
    # a float32 projection converges to the float64 closed form at float32 accuracy
    with jax.enable_x64(False):
        r = phi_result(valley, jnp.array([2.0, 0.3], jnp.float32), gtol=1e-5)
    assert bool(r.converged) and r.x.dtype == jnp.float32
    assert float(r.x[0]) == pytest.approx(valley_phi_x(2.0, 0.3), abs=1e-5)
