"""`eoslab reproduce transformer-eos`: the decoder's objective against a hand-written loss, GD's
probed lambda_1 and Adam's preconditioned sharpness against dense Hessians and independent
optimizer loops, the EoS-phase selection on hand-made series, and (slow) the quick variant's
rows, re-derived from its CSVs and from dense Hessians at its saved points."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree

from eoslab import Objective, models, reproduce
from eoslab.data.sequences import sequence_arrays
from eoslab.dynamics.rules import Adam
from eoslab.errors import ConfigError
from eoslab.reproduce.cohen2022 import effective_sharpness
from eoslab.reproduce.transformer import (
    QUICK,
    TransformerEoSSetting,
    eos_phase,
    gd_sharpening,
    onset_and_peak,
    transformer_objective,
)

TINY = TransformerEoSSetting(n=6, length=2, vocab=3, d_model=4, n_heads=2, d_mlp=8)


def dense_hessian(obj):
    """w -> the dense jax.hessian of ``obj`` at w, symmetrized (numpy)."""
    f = jax.jit(jax.hessian(obj))

    def at(w):
        H = np.asarray(f(jnp.asarray(w)))
        return 0.5 * (H + H.T)

    return at


def test_setting_rejects_bad_fields():
    for kw, field in [
        ({"n": 0}, "n"),
        ({"length": 1}, "length"),
        ({"task": "shuffle"}, "task"),
        ({"lr": -0.1}, "lr"),
        ({"beta1": 1.0}, "beta1"),
        ({"every": 7}, "every"),
        ({"flow_every": 7}, "flow_every"),
        ({"adam_every": 7}, "adam_every"),
        ({"flow_steps": 100}, "flow_steps"),  # not more than 4 windows
        ({"head_init_std": 0.0}, "head_init_std"),
    ]:
        with pytest.raises(ConfigError) as e:
            TransformerEoSSetting(**kw)
        assert e.value.field == field
    with pytest.raises(ConfigError) as e:
        transformer_objective({"n": 4})
    assert e.value.field == "setting"


def test_objective_is_the_documented_decoder():
    with jax.enable_x64(True):
        obj = transformer_objective(TINY)
        # (V+T)d + L[4d + (d+1)3d + (d+1)d + (d+1)m + (m+1)d] + 2d + (d+1)V, V=3 T=3 d=4 m=8
        assert obj.dim == 6 * 4 + (16 + 60 + 20 + 40 + 36) + 8 + 15
        assert obj.dtype == jnp.float64
        # the same decoder built by hand from the model zoo, and the loss written out:
        # 1/(N T) sum_{i,t} 1/2 |logits_it - onehot(y_it)|^2 on the sort task's first 6 sources
        apply, params = models.create(
            "transformer", jax.random.key(0), (3,), 3, d_model=4, n_heads=2, n_layers=1, d_mlp=8,
            head_init_std=0.1,
        )  # fmt: skip
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        np.testing.assert_array_equal(np.asarray(ravel_pytree(params)[0]), np.asarray(obj.w0))
        x, y = sequence_arrays("sort", 7, 2, 3, seed=0)
        logits = np.asarray(apply(params, jnp.asarray(x[:6], jnp.float64)))
        want = 0.5 * np.mean(np.sum((logits - np.eye(3)[y[:6]]) ** 2, axis=-1))
        assert float(obj(obj.w0)) == pytest.approx(want, rel=1e-12)


def test_gd_sharpening_against_plain_gd_on_a_known_quadratic():
    # the columns of gd_sharpening where lambda_1 is known: L = 1/2 w^T A w, lambda_1 = 9
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    A = Q @ np.diag([9.0, 5.0, 3.0, 1.0, 0.5, 0.1]) @ Q.T
    lr, steps = 0.1, 4
    with jax.enable_x64(True):
        obj = Objective.from_data_fn(
            _quadratic, jnp.asarray(A), rng.normal(size=6), dtype="float64"
        )
        g = gd_sharpening(obj, lr=lr, steps=steps, every=2, keep_points=True)
    w, losses, points = np.asarray(obj.w0), [], {}
    for t in range(steps + 1):  # GD by hand
        losses.append(0.5 * w @ A @ w)
        points[t] = w
        w = w - lr * (A @ w)
    assert g["step"].tolist() == list(range(steps + 1))
    np.testing.assert_allclose(g["loss"], losses, rtol=1e-12)
    probed = g[g["sharpness"].notna()]
    assert probed["step"].tolist() == [0, 2, 4]
    np.testing.assert_allclose(probed["sharpness"], 9.0, rtol=1e-6)
    for t, p in zip(probed["step"], probed["point"], strict=True):
        np.testing.assert_allclose(np.asarray(p), points[t], rtol=1e-12)
    with pytest.raises(ConfigError) as e:
        gd_sharpening(obj, lr=lr, steps=steps, every=3)
    assert e.value.field == "every"


def _quadratic(w, A):
    return 0.5 * w @ A @ w


@pytest.mark.slow  # ~50 s of CPU: the decoder's eigen-solvers and dense Hessian compiled; the
# quadratic above checks the same columns by default
def test_gd_sharpening_against_plain_gd_and_dense_hessians():
    lr, steps = 0.5, 20
    with jax.enable_x64(True):
        obj = transformer_objective(TINY)
        g = gd_sharpening(obj, lr=lr, steps=steps, every=10, keep_points=True)
        grad, hess = jax.jit(jax.grad(obj)), dense_hessian(obj)
        w, losses, points = obj.w0, [], {}
        for t in range(steps + 1):
            losses.append(float(obj(w)))
            points[t] = np.asarray(w)
            w = w - lr * grad(w)
        assert g["step"].tolist() == list(range(steps + 1))
        np.testing.assert_allclose(g["loss"], losses, rtol=1e-10)
        probed = g[g["sharpness"].notna()]
        assert probed["step"].tolist() == [0, 10, 20]
        for t, lam, p in zip(probed["step"], probed["sharpness"], probed["point"], strict=True):
            np.testing.assert_allclose(np.asarray(p), points[t], rtol=1e-10, atol=1e-12)
            top = np.linalg.eigvalsh(hess(points[t]))[-1]
            assert lam == pytest.approx(top, rel=1e-6)
        with pytest.raises(ConfigError) as e:
            gd_sharpening(obj, lr=lr, steps=20, every=3)
        assert e.value.field == "every"


@pytest.mark.slow  # ~35 s of CPU: two eigen-trackers compiled on the decoder
def test_adam_preconditioned_sharpness_on_the_decoder_against_dense():
    # P^-1/2 H P^-1/2 with P = sqrt(v_hat) + eps of a hand-written Adam (the v after the
    # gradient at w_t: the preconditioner of the step taken from w_t)
    lr, b1, b2, eps, steps = 1e-2, 0.9, 0.999, 1e-7, 10
    with jax.enable_x64(True):
        obj = transformer_objective(TINY)
        df = effective_sharpness(obj, Adam(lr, b1, b2, eps), steps, every=5)
        grad, hess = jax.jit(jax.grad(obj)), dense_hessian(obj)
        w, m, v, want = np.asarray(obj.w0), 0.0, 0.0, {}
        for t in range(1, steps + 1):
            g = np.asarray(grad(w))
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
            p = np.sqrt(v / (1 - b2**t)) + eps
            if t - 1 in (0, 5):
                s = 1.0 / np.sqrt(p)
                want[t - 1] = np.linalg.eigvalsh(s[:, None] * hess(w) * s)[-1]
            w = w - lr * (m / (1 - b1**t)) / p
    assert df["step"].tolist() == [0, 5]
    assert df["sharpness"].tolist() == pytest.approx([want[0], want[5]], rel=1e-5)
    assert df["threshold"].tolist() == pytest.approx([(2 + 2 * b1) / ((1 - b1) * lr)] * 2)


def test_onset_peak_and_eos_phase_on_hand_made_series():
    steps = np.arange(0, 100, 10)
    lam = np.array([4, 6, 8, 9.9, 10.2, 11, 11.5, 10.1, 10.4, 10.3])
    assert onset_and_peak(steps, lam, 10.0) == (40, 70)  # crosses at 40, first falls at 70
    assert onset_and_peak(steps, lam, 12.0) == (None, None)  # never reaches
    assert onset_and_peak(steps, np.maximum.accumulate(lam) + steps * 1e-3, 11.0) == (50, None)
    np.testing.assert_array_equal(eos_phase(steps, 70, 90), steps >= 70)
    with pytest.raises(ConfigError) as e:
        onset_and_peak(steps, lam[:5], 10.0)
    assert e.value.field == "sharpness.shape"


def test_registered():
    assert "transformer-eos" in reproduce.REPRODUCTIONS
    assert reproduce.get("transformer-eos").run is not None


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("transformer-eos")
    return out, reproduce.get("transformer-eos")(out, quick=True)


@pytest.mark.slow
def test_quick_variant_rows_pass_and_files(quick):
    out, rows = quick
    assert len(rows) == 11 and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    for name in ("table.md", "table.csv", "gd.csv", "central_flow.csv", "adam.csv"):
        assert (out / name).exists()
    for name in ("sharpness.png", "loss.png", "adam_sharpness.png"):
        assert (out / name).stat().st_size > 10_000


@pytest.mark.slow
def test_quick_variant_sharpness_against_dense_hessians(quick):
    # GD's lambda_1 at init, at the onset and at 8 EoS-phase iterates, each from the dense
    # Hessian at the saved point: the EoS-phase ones sit at 2/lr (the rows' tolerance 0.1)
    out, _ = quick
    z = np.load(out / "gd_points.npz")
    g = pd.read_csv(out / "gd.csv").set_index("step")
    assert len(z["step"]) == 10 and z["step"][0] == 0
    with jax.enable_x64(True):
        obj = transformer_objective(QUICK)
        np.testing.assert_array_equal(z["w"][0], np.asarray(obj.w0))
        hess = dense_hessian(obj)
        for t, w, lam in zip(z["step"], z["w"], z["sharpness"], strict=True):
            assert g.loc[t, "sharpness"] == lam
            top = np.linalg.eigvalsh(hess(w))[-1]
            assert lam == pytest.approx(top, rel=1e-5), t
            assert float(obj(jnp.asarray(w))) == pytest.approx(g.loc[t, "loss"], rel=1e-12)
    thr = 2.0 / QUICK.lr
    assert z["sharpness"][0] < 0.5 * thr and z["sharpness"][1] >= thr
    assert np.all(np.abs(z["sharpness"][2:] / thr - 1) < 0.1)


@pytest.mark.slow
def test_quick_variant_rows_recomputed_from_the_csvs(quick):
    out, rows = quick
    by = {r["quantity"]: r["measured"] for r in rows}
    thr = 2.0 / QUICK.lr
    g = pd.read_csv(out / "gd.csv")
    p = g[g["sharpness"].notna()]
    lam, st = p["sharpness"].to_numpy(), p["step"].to_numpy()
    # the first fall of lambda_1 after it first reaches 2/lr, by a plain loop
    i = next(j for j in range(len(lam)) if lam[j] >= thr)
    peak = next(st[j] for j in range(i + 1, len(lam)) if lam[j] < lam[j - 1])
    start = peak + 2 * QUICK.window
    eos = lam[st >= start] / thr
    assert by["GD lambda_1 / (2/lr), mean over the EoS phase"] == pytest.approx(eos.mean())
    assert by["GD progressive sharpening: lambda_1 at that step / lambda_1 at init"] == (
        pytest.approx(lam[i] / lam[0])
    )
    cf = pd.read_csv(out / "central_flow.csv")
    assert (cf["gd_step"] == cf["step"] + QUICK.flow_start).all()
    end = QUICK.flow_start + QUICK.flow_steps - QUICK.window
    e = cf[(cf["gd_step"] >= start) & (cf["gd_step"] <= end)]
    assert len(e) >= 10 and (e["trace_sigma"] > 0).all()  # the flow is at the edge throughout
    err = np.median(np.abs(e["pred_loss_cf_avg"] / e["loss_gd_avg"] - 1))
    key = "central flow: median abs(window-avg prediction / GD window-avg loss - 1), EoS phase"
    assert by[key] == pytest.approx(err)
    # GD's loss beside the flow is GD's loss from init (the same iterates, 2 runs of the loop)
    gd_at = g.set_index("step").loc[cf["gd_step"], "loss"].to_numpy()
    before = cf["gd_step"] < peak - 200  # before the oscillation grows, to round-off
    np.testing.assert_allclose(cf["loss_gd"][before], gd_at[before], rtol=1e-9)
    ad = pd.read_csv(out / "adam.csv")
    assert np.allclose(ad["threshold"], (2 + 2 * QUICK.beta1) / ((1 - QUICK.beta1) * QUICK.adam_lr))
    late = ad["sharpness"].to_numpy()[len(ad) // 2 :] / ad["threshold"].to_numpy()[len(ad) // 2 :]
    assert by["Adam: lambda_1(P^-1 H) / threshold, mean over the 2nd half"] == (
        pytest.approx(late.mean())
    )
