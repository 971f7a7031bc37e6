"""Central flow of GD: the SDCP solver, complementarity along the flow, time averages on a toy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import Objective
from eoslab.dynamics import (
    CentralFlow,
    Optimizer,
    RMSPropCentralFlow,
    SDPCentralFlow,
    solve_sdcp,
)
from eoslab.dynamics.rules import GD
from eoslab.errors import ConfigError
from eoslab.runner import Probes, run

C0, KAPPA, LR = 1.0, 0.05, 0.1


def toy(w):
    """L = (c + x) log cosh y - kappa x + (2 + 0.1 x) z^2 / 2: a known period-2 EoS orbit.

    GD settles where log cosh y* = kappa, so its time-averaged loss is c * kappa; the central flow
    has sigma^2 = 2 kappa and predicts L(w) + sigma^2 / lr = -kappa (2/lr - c) + 2 kappa / lr.
    """
    x, y, z = w[0], w[1], w[2]
    return (C0 + x) * jnp.log(jnp.cosh(y)) - KAPPA * x + 0.5 * (2.0 + 0.1 * x) * z**2


def two_critical(w):
    """Two decoupled EoS directions: sigma_1^2 = 2 * 0.05, sigma_2^2 = 2 * 0.02."""
    x1, y1, x2, y2 = w
    return (C0 + x1) * 0.5 * y1**2 - 0.05 * x1 + (C0 + x2) * 0.5 * y2**2 - 0.02 * x2


def test_closed_form_matches_sdp_one_eigenvalue():
    rng = np.random.default_rng(0)
    for _ in range(5):
        g = rng.normal(size=(1, 7))
        G = g @ g.T
        C = np.array([[rng.normal()]])
        closed = solve_sdcp(G, C)
        # the SDP route: embed in k = 2 with a decoupled, inactive second direction
        G2 = np.zeros((4, 4))
        G2[0, 0] = G[0, 0]
        G2[3, 3] = 1.0
        C2 = np.diag([C[0, 0], 5.0])
        X2 = solve_sdcp(G2, C2)
        assert X2[0, 0] == pytest.approx(max(0.0, -C[0, 0] / G[0, 0]), abs=1e-6)
        assert closed[0, 0] == pytest.approx(X2[0, 0], abs=1e-6)
        assert abs(X2[1, 1]) < 1e-6


def test_sdp_kkt_conditions():
    rng = np.random.default_rng(1)
    k = 3
    J = rng.normal(size=(k * k, 12))
    J = 0.5 * (J + J.reshape(k, k, -1).transpose(1, 0, 2).reshape(k * k, -1))
    G = J @ J.T
    C = rng.normal(size=(k, k))
    C = 0.5 * (C + C.T) - 1.0 * np.eye(k)
    X = solve_sdcp(G, C)
    grad = (G @ X.reshape(-1)).reshape(k, k) + C  # 1/2 beta[X,.] * 2 / 2 + C
    assert np.linalg.eigvalsh(X).min() > -1e-7
    assert np.linalg.eigvalsh(0.5 * (grad + grad.T)).min() > -1e-5
    assert abs(np.sum(X * grad)) < 1e-5


def flow_rows(loss, w0, process, steps, *, every=None):
    """The flow's rows 0 .. steps-1 (all logged; probed every ``every`` steps, default once)."""
    res = run(
        {"cf": process},
        loss,
        steps,
        w0=w0,
        probe_every=every or steps,
        probes=Probes(sharpness=False),
        keep_points=True,
    )
    df = res.series("cf")
    return df[df["step"] < steps].reset_index(drop=True)


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
@pytest.mark.usefixtures("x64")
def test_central_flow_time_average_matches_gd_on_orbit():
    ys = float(np.arccosh(np.exp(KAPPA)))  # GD's period-2 orbit: y -> -y, log cosh y = kappa
    xs = 2 * ys / (LR * np.tanh(ys)) - C0
    w0 = jnp.array([xs, ys, 0.3])
    steps = 300
    proc = CentralFlow(lr=LR, record_vectors=True)
    cf = flow_rows(toy, w0, proc, steps)
    res = run(Optimizer(GD(LR)), toy, steps, w0=w0, probe_every=steps, keep_points=True)
    it = res.series(None, ["loss", "w"])
    gd_avg = float(np.mean(it["loss"].to_numpy()[100:steps]))
    pred = float(np.mean(cf["pred_loss"][100:]))
    assert gd_avg == pytest.approx(C0 * KAPPA, rel=0.1)
    assert pred == pytest.approx(gd_avg, rel=0.1)
    # sigma^2 = 2 kappa, pinned sharpness, complementarity
    sigma2, sharp = cf["trace_sigma"].to_numpy(), cf["cf_sharpness"].to_numpy()
    assert sigma2[50:] == pytest.approx(2 * KAPPA, rel=1e-4)
    assert np.all(sharp <= 2 / LR * (1 + 1e-6))
    active = sigma2 > 0
    assert np.allclose(sharp[active][1:] * LR, 2.0, atol=1e-4)
    # E f(w_t) ~ f(w) + 1/2 <grad^2 f, Sigma>: for f = y^2, E y_t^2 = sigma^2
    f_pred = proc.predicted_mean(lambda w: w[1] ** 2, cf.iloc[299])
    y2 = float(np.mean(res.trajectory()[200:300, 1] ** 2))
    assert f_pred == pytest.approx(y2, rel=0.1)


@pytest.mark.usefixtures("x64")
def test_complementarity_along_sdp_flow_two_eigenvalues():
    w0 = jnp.array([18.9, 0.2, 18.95, 0.15])
    proc = SDPCentralFlow(lr=LR, k=2)
    cf = flow_rows(two_critical, w0, proc, 40, every=1)
    assert list(cf["step"]) == list(range(40))
    thr = 2 / LR
    for _, r in cf.iterrows():
        X, lam = np.asarray(r["X"]), np.asarray(r["eigenvalues"])
        assert np.linalg.eigvalsh(X).min() > -1e-7
        assert lam.max() <= thr * (1 + 1e-6)
        # complementarity: oscillation only on eigenvalues at 2/lr
        on = np.diag(X) > 1e-8
        assert np.all(np.abs(thr - lam[on]) < 1e-3 * thr)
    diag = np.sort(np.diag(np.asarray(cf["X"].iloc[-1])))
    assert diag == pytest.approx([0.04, 0.1], rel=1e-4)
    # E f(w_t) ~ f(w) + 1/2 <grad^2 f, Sigma> with Sigma = U X U^T: f = y_1^2 + y_2^2 (both
    # directions oscillate, each along its y), so E f = sigma_1^2 + sigma_2^2 + f(w)
    last = cf.iloc[-1]
    f = lambda w: w[1] ** 2 + w[3] ** 2  # noqa: E731
    U, X = np.asarray(last["U"]), np.asarray(last["X"])
    expect = (
        float(f(jnp.asarray(last["w"]))) + float(np.trace(U.T @ np.diag([0, 2, 0, 2]) @ U @ X)) / 2
    )
    assert proc.predicted_mean(f, last) == pytest.approx(expect, rel=1e-10)


def test_rmsprop_central_flow_pins_effective_sharpness():
    # a toy with one direction at EoS for RMSProp: the effective sharpness stays at 2
    def toy2(w):  # the toy without its z direction (whose nu would decay to 0)
        return (C0 + w[0]) * jnp.log(jnp.cosh(w[1])) - KAPPA * w[0]

    w0 = jnp.array([18.0, 0.2])
    nu0 = jnp.full((2,), 1.0)
    fl = flow_rows(
        toy2, w0, RMSPropCentralFlow(lr=LR, nu0=nu0, beta2=0.9, record_vectors=True), 200
    )
    eff = LR * fl["cf_eff_sharpness"].to_numpy()  # lambda_1(lr P^-1 H): threshold 2
    assert np.all(np.isfinite(fl["loss"]))
    assert np.max(eff) <= 2.0 + 1e-4
    on = fl["sigma2"].to_numpy() > 0
    assert on.any()
    assert np.allclose(eff[on][1:], 2.0, atol=1e-4)
    fs = flow_rows(
        toy2,
        w0,
        RMSPropCentralFlow(lr=LR, nu0=1.0, beta2=0.9, scalar=True, record_vectors=True),
        50,
    )
    assert np.stack(fs["nu"]).shape == (50, 1)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: CentralFlow(lr=-1.0), "lr"),
        (lambda: CentralFlow(lr=0.1, substeps=0), "substeps"),
        (lambda: CentralFlow(lr=0.1, krylov_dim=1), "krylov_dim"),
        (lambda: CentralFlow(lr=0.1, eig_tol=0.0), "eig_tol"),
        (lambda: SDPCentralFlow(lr=0.1, k=0), "k"),
        (lambda: SDPCentralFlow(lr=0.1, window=-0.1), "window"),
        (lambda: run(CentralFlow(lr=0.1), toy, -1, w0=jnp.array([1.0, 0.1, 0.1])), "steps"),
        (lambda: run(SDPCentralFlow(lr=0.1, k=4), toy, 3, w0=jnp.array([1.0, 0.1, 0.1])), "k"),
    ],
)
def test_bad_inputs_name_the_field(make, field):
    with pytest.raises(ConfigError) as e:
        make()
    assert e.value.field == field


def test_bad_sdcp_shapes():
    with pytest.raises(ConfigError) as e:
        solve_sdcp(np.eye(3), np.eye(2))
    assert e.value.field == "G.shape"


def many_directions(w):
    """The toy's edge direction plus 15 stable ones whose curvatures (up to 18) drift with x."""
    x, y, z = w[0], w[1], w[2:]
    s = jnp.linspace(3.0, 18.0, z.shape[0])
    return (C0 + x) * jnp.log(jnp.cosh(y)) - KAPPA * x + 0.5 * jnp.sum(s * (1 + 0.01 * x) * z**2)


def test_warm_eigen_solve_matches_dense_hessian():
    # the warm block Lanczos's lambda_1 and u against eigh of the dense Hessian at every saved row
    ys = float(np.arccosh(np.exp(KAPPA)))
    w0 = jnp.concatenate(
        [jnp.array([2 * ys / (LR * np.tanh(ys)) - C0 + 0.3, 0.1]), 0.05 * jnp.ones(15)]
    )
    cf = flow_rows(many_directions, w0, CentralFlow(lr=LR, record_vectors=True), 60)
    sharp = cf["cf_sharpness"].to_numpy()
    for i in range(0, 60, 6):
        w = jnp.asarray(cf["w"].iloc[i])
        lam, vec = np.linalg.eigh(np.asarray(jax.hessian(many_directions)(w)))
        assert sharp[i] == pytest.approx(lam[-1], rel=5e-3)
        assert abs(float(np.dot(cf["u"].iloc[i], vec[:, -1]))) > 1 - 1e-3
    assert np.all(sharp[1:] <= 2 / LR * (1 + 1e-4))  # w0 starts above the edge


def test_warm_eigen_solve_spends_one_block_product_per_substep():
    obj = Objective.from_fn(
        many_directions, jnp.concatenate([jnp.array([18.0, 0.2]), 0.05 * jnp.ones(15)])
    )
    res = run({"cf": CentralFlow(lr=LR)}, obj, 80, probe_every=80, probes=Probes(sharpness=False))
    mv = res.metrics["cf_matvecs"].dropna().to_numpy()
    # 4 substeps x H applied once to the 8-vector block; a refinement adds up to krylov_dim = 30
    assert np.median(mv) == 4 * 8
    assert np.all(mv >= 4 * 8) and np.all(mv <= 4 * (8 + 30))


def _tanh_mlp(n: int, widths: tuple[int, ...], seed: int = 0, subset: str = "first") -> Objective:
    """A tanh MLP on ``n`` MNIST-1D examples (10 outputs; ``subset`` and ``seed`` pick them and
    the initialization), MSE, float64."""
    from eoslab import data, models

    ds = data.load("mnist1d", n=n, subset=subset, seed=seed)
    apply, params = models.create(
        "mlp", jax.random.key(seed), ds.x_train.shape[1:], 10, widths=widths, activation="tanh"
    )
    return Objective.from_model(apply, params, ds, "mse_half", dtype="float64")


def one_step_spikes(rel: np.ndarray, factor: float = 3.0, floor: float = 0.2) -> list[int]:
    """Steps whose relative error exceeds ``floor`` and ``factor`` times both neighbours'."""
    rel = np.asarray(rel)
    nb = np.maximum(rel[:-2], rel[2:])
    return [int(t) + 1 for t in np.flatnonzero((rel[1:-1] > floor) & (rel[1:-1] > factor * nb))]


def test_one_step_spikes_finds_the_reported_shape():
    # 163% at one step, 2-5% on either side (the report); a step-wise drift or a dip is none
    assert one_step_spikes(np.array([0.03, 0.02, 1.63, 0.05, 0.04])) == [2]
    assert one_step_spikes(np.array([0.03, 0.25, 0.3, 0.35, 0.04])) == []
    assert one_step_spikes(np.array([0.03, 0.05, 0.15, 0.05, 0.04])) == []


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
@pytest.mark.usefixtures("x64")
def test_warm_block_keeps_the_top_of_an_edge_cluster():
    # a 40-12-12-10 tanh net whose 10 outlier eigenvalues reach 2/lr together: several sit within
    # 1% of the edge, and the one the flow holds must be the dense Hessian's top one, at every
    # checked step. A 2-vector block lost it there (its Ritz value 2/lr while the true lambda_1
    # rose to 1.04 * 2/lr from step ~220, unseen until found and pulled back in one substep).
    lr, steps = 0.5, 250
    obj = _tanh_mlp(100, (12, 12))
    res = run(
        {"cf": CentralFlow(lr=lr)},
        obj,
        steps,
        probe_every=steps,
        probes=Probes(sharpness=False, alignment=False),
        keep_points=True,
    )
    m = res.metrics.set_index("step").sort_index()
    on = np.flatnonzero(m["trace_sigma"].to_numpy()[:steps] > 0)
    assert on.size and on[0] < 100  # the flow reaches the edge (step 88)
    base = obj.base()
    hess = jax.jit(jax.hessian(lambda v: base(v)))
    checked = np.arange(on[0] + 10, steps, 10)
    near = []
    for t in checked:
        lam = np.linalg.eigvalsh(np.asarray(hess(jnp.asarray(m["w"].loc[t]))))[::-1]
        near.append(int(np.sum(lam > 0.99 * 2 / lr)))
        got = float(m["cf_sharpness"].loc[t])
        assert got == pytest.approx(lam[0], rel=1e-3), f"step {t}: solve {got}, dense {lam[0]}"
        assert lam[0] <= 2 / lr * (1 + 5e-3), f"step {t}: lambda_1 * lr / 2 = {lam[0] * lr / 2}"
    assert max(near) >= 3  # a cluster at the edge, wider than the old 2-vector block


@pytest.mark.slow  # two nets, 1,200 steps of GD and the central flow each: ~4 min on 2 cores
@pytest.mark.parametrize(
    ("widths", "seed", "subset"),
    [
        ((24, 24), 0, "first"),  # the central-flow reproduction's quick net
        ((32, 32, 32), 1, "balanced"),  # a deeper tanh net on other examples
    ],
)
@pytest.mark.usefixtures("x64")
def test_predicted_loss_has_no_one_step_spike(widths, seed, subset):
    # |pred_loss / GD's 41-step centred average of its loss - 1| per step over the EoS phase:
    # no step above 50% and 3x both neighbours' (with the 2-vector block: up to 166%, 15 such
    # steps on the first net, 5 on the second); the median is the flow's accuracy (~4%)
    lr, steps, half = 0.5, 1200, 20
    obj = _tanh_mlp(300, widths, seed, subset)
    res = run(
        {"gd": Optimizer(GD(lr)), "cf": CentralFlow(lr=lr)},
        obj,
        steps,
        probe_every=steps,
        probes=Probes(sharpness=False, alignment=False),
    )
    rows = {p: res.series(p).set_index("step").sort_index() for p in ("gd", "cf")}
    gd_loss = rows["gd"]["loss"].to_numpy()[:steps]
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    avg = np.convolve(gd_loss, kernel, mode="same")  # centred; the edges are not compared
    rel = np.abs(rows["cf"]["pred_loss"].to_numpy()[:steps] / avg - 1.0)
    on = np.flatnonzero(rows["cf"]["trace_sigma"].to_numpy()[:steps] > 0)
    assert on.size and on[0] < 300  # the edge is reached early
    eos = rel[on[0] + 2 * half : steps - half]
    assert one_step_spikes(eos, floor=0.5) == []
    assert np.median(eos) < 0.05
