"""The proxy probes in a run, each number checked against an independent computation at the
recorded point: in the compiled step (probe_every=1) and at probed points (probe_every>1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import Objective, models
from eoslab.curvature import GaussNewtonOperator, top_eigenpairs
from eoslab.dynamics.optimizer import Optimizer
from eoslab.dynamics.rules import GD, Adam
from eoslab.runner import (
    CriticalSharpness,
    DirectionalSharpness,
    GaussNewtonSharpness,
    LayerSharpness,
    Probes,
    TracePerParameter,
    run,
)

pytestmark = pytest.mark.usefixtures("x64")


def quad(w, data):
    A, b = data
    return 0.5 * w @ A @ w + b @ w


def quadratic(dim=6, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    A = Q @ np.diag(np.linspace(0.5, 10.0, dim)) @ Q.T
    b = rng.normal(size=dim)
    obj = Objective.from_data_fn(
        quad, (jnp.asarray(A), jnp.asarray(b)), rng.normal(size=dim), dtype="float64"
    )
    return obj, A, b


@pytest.mark.parametrize("probe_every", [1, 4])
def test_critical_and_directional_sharpness_of_gd_on_a_quadratic(probe_every):
    obj, A, b = quadratic()
    probes = (CriticalSharpness(rtol=1e-9), DirectionalSharpness(), TracePerParameter(400))
    res = run(
        Optimizer(GD(0.15)),
        obj,
        12,
        probe_every=probe_every,
        keep_points=True,
        probes=Probes(alignment=False, tol=1e-8),
        custom_probes=probes,
    )
    df = res.series(None, None)
    rows = df[df["critical_sharpness"].notna()]
    assert len(rows) >= 3
    for _, r in rows.iterrows():
        w = np.asarray(r["w"], np.float64)
        g = A @ w + b
        want = g @ A @ g / (g @ g)  # GD's update is -lr g: both are g^T A g / g^T g
        np.testing.assert_allclose(r["critical_sharpness"], want, rtol=1e-7)
        np.testing.assert_allclose(r["directional_sharpness"], want, rtol=1e-10)
        np.testing.assert_allclose(r["directional_sharpness_grad"], want, rtol=1e-10)
        assert 1 <= r["critical_sharpness_fwd"] <= 10
        assert r["directional_sharpness_hvp"] == 2
        assert abs(r["trace_per_param"] - np.trace(A) / 6) <= 5 * r["trace_per_param_stderr"]
        assert r["trace_per_param_hvp"] == 400
    # warm-started from the last eta_c, a slowly moving search costs few passes
    assert rows["critical_sharpness_fwd"].iloc[1:].median() <= 4


def test_adam_update_is_the_direction():
    obj, A, b = quadratic(seed=1)
    rule = Adam(0.05)
    res = run(
        Optimizer(rule),
        obj,
        6,
        probe_every=1,
        keep_points=True,
        probes=Probes(sharpness=False, alignment=False),
        custom_probes=(CriticalSharpness(rtol=1e-9), DirectionalSharpness()),
    )
    df = res.series(None, None)
    W = np.stack([np.asarray(w, np.float64) for w in df["w"]])
    for t in range(len(W) - 1):
        u = (W[t + 1] - W[t]) / 0.05  # the update per unit lr, from consecutive iterates
        g = A @ W[t] + b
        np.testing.assert_allclose(df["directional_sharpness"][t], u @ A @ u / (u @ u), rtol=1e-8)
        np.testing.assert_allclose(df["critical_sharpness"][t], -(u @ A @ u) / (g @ u), rtol=1e-6)


@pytest.mark.slow  # a dense Hessian per probed row; the solvers are tested in tests/curvature
def test_gauss_newton_and_layer_sharpness_on_a_small_net():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3)), rng.integers(0, 2, size=16)
    apply, params = models.create("mlp", jax.random.key(0), (3,), 2, widths=(5,), activation="tanh")
    obj = Objective.from_model(apply, params, (x, y), "cross_entropy", dtype="float64")
    res = run(
        Optimizer(GD(0.5)),
        obj,
        6,
        probe_every=3,
        keep_points=True,
        probes=Probes(alignment=False, tol=1e-8),
        custom_probes=(GaussNewtonSharpness(tol=1e-9), LayerSharpness(tol=1e-9)),
    )
    df = res.series(None, None)
    rows = df[df["gn_sharpness"].notna()]
    assert len(rows) >= 2
    for _, r in rows.iterrows():
        w = jnp.asarray(np.asarray(r["w"], np.float64))
        G = np.asarray(GaussNewtonOperator(obj, w).as_matrix())
        np.testing.assert_allclose(r["gn_sharpness"], np.linalg.eigvalsh(G)[-1], rtol=1e-7)
        assert r["gn_sharpness_hvp"] > 0
        H = np.asarray(jax.hessian(obj)(w))
        sizes = {k: sum(v.size for v in jax.tree_util.tree_leaves(p)) for k, p in params.items()}
        start = 0
        for name in sorted(params):  # ravel_pytree lays dict groups out in key order
            idx = slice(start, start + sizes[name])
            start += sizes[name]
            want = np.linalg.eigvalsh(H[idx, idx])[-1]
            np.testing.assert_allclose(r[f"layer_sharpness_{name}"], want, rtol=1e-7)
        assert r["layer_sharpness"] <= float(top_eigenpairs(obj, w, 1).values[0]) * (1 + 1e-6)
