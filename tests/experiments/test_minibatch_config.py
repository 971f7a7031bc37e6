"""Mini-batch SGD from the typed config and the command line (``batch_size``, the batch-sharpness
probe, the ``sgd-eoss`` preset), checked against an SGD loop written here: its own tanh net, its own
half-MSE, its own Rayleigh quotients; only the batch indices come from eoslab's sampler
(`eoslab.batches.next_batch`, the documented epoch sampler) and the initial parameters from
`eoslab.models.create`."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import eoslab
from eoslab import data, models
from eoslab.batches import next_batch
from eoslab.cli import main
from eoslab.dynamics.gradient_flow import GradientFlow
from eoslab.errors import ConfigError
from eoslab.experiments import (
    PRESETS,
    Experiment,
    ModelProblem,
    QuadraticProblem,
    build,
    from_dict,
    to_dict,
)
from helpers import assert_same_metrics

N, B, LR, SEED = 48, 8, 0.1, 3
FLAGS = [
    "--problem.n", str(N), "--batch-size", str(B), "--rule.lr", str(LR), "--seed", str(SEED),
    "--dtype", "float64", "--probe-every", "2", "--probes.no-sharpness",
    "--batch-sharpness-rel-err", "0.05", "--flush-seconds", "0", "--quiet", "--no-plot",
]  # fmt: skip


# ------------------------------------------------------------------ the config
def test_config_round_trip_and_the_preset():
    exp = Experiment(
        problem=ModelProblem(n=100),
        batch_size=10,
        batch_sharpness=False,
        batch_sharpness_rel_err=0.1,
    )
    d = json.loads(json.dumps(to_dict(exp)))
    assert d["batch_size"] == 10 and d["batch_sharpness"] is False
    assert from_dict(d) == exp
    assert from_dict(to_dict(Experiment())).batch_size is None  # full batch by default
    sgd = PRESETS["sgd-eoss"]
    assert sgd.batch_size == 32 and sgd.rule.kind == "gd" and sgd.batch_sharpness
    assert from_dict(json.loads(json.dumps(to_dict(sgd)))) == sgd


@pytest.mark.parametrize(
    "changes,field,needle",
    [
        ({"batch_size": 0}, "batch_size", "from 1 to n = 100"),
        ({"batch_size": 101}, "batch_size", "from 1 to n = 100"),
        ({"batch_size": 2.0}, "batch_size", "an integer or null"),
        ({"batch_size": True}, "batch_size", "an integer or null"),
        ({"batch_size": "8"}, "batch_size", "null"),
        ({"batch_size": 4, "batch_sharpness_rel_err": 0}, "batch_sharpness_rel_err", "> 0"),
        (
            {"batch_size": 4, "compare": {"gf": {"kind": "GradientFlow", "lr": 0.1}}},
            "compare",
            "full-batch GD",
        ),
    ],
)
def test_bad_batch_settings_name_the_field(changes, field, needle):
    d = {**to_dict(Experiment(problem=ModelProblem(n=100))), **changes}
    with pytest.raises(ConfigError) as err:
        from_dict(d)
    assert err.value.field == field and needle in str(err.value), str(err.value)


def test_batch_size_is_checked_against_the_problem():
    with pytest.raises(ConfigError, match="from 1 to n = 4000"):  # n = None: the whole set
        Experiment(problem=ModelProblem(n=None), batch_size=4001)
    assert Experiment(problem=ModelProblem(n=None), batch_size=4000).batch_size == 4000
    for bad in (2.0, True):  # from Python, past the config file's type check
        with pytest.raises(ConfigError, match="None \\(full batch\\) or an integer from 1"):
            Experiment(problem=ModelProblem(n=100), batch_size=bad)
    with pytest.raises(ConfigError) as err:
        Experiment(problem=QuadraticProblem(), batch_size=2)
    assert err.value.field == "batch_size" and "'model'" in err.value.accepted
    with pytest.raises(ConfigError, match="compare"):
        Experiment(problem=ModelProblem(n=100), batch_size=4, compare={"gf": GradientFlow(lr=0.1)})
    # micro-batches of 16: a batch of 24 is neither within one block nor a number of blocks
    with pytest.raises(ConfigError, match="multiple of 16"):
        build(Experiment(problem=ModelProblem(n=64), batch_size=24, microbatch=16))


def test_build_makes_the_minibatch_process_and_its_probe():
    built = build(Experiment(problem=ModelProblem(n=64), batch_size=16, seed=5))
    proc = built.processes["gd"]
    assert type(proc).__name__ == "MiniBatch" and proc.batch_size == 16 and proc.seed == 5
    assert len(built.custom_probes) == 2  # accuracy and batch sharpness
    off = build(Experiment(problem=ModelProblem(n=64), batch_size=16, batch_sharpness=False))
    assert len(off.custom_probes) == 1
    full = build(Experiment(problem=ModelProblem(n=64)))
    assert type(full.processes["gd"]).__name__ == "Optimizer" and len(full.custom_probes) == 1


# ------------------------------------------------------------------ the command line
def test_cli_refuses_a_bad_batch_size_with_exit_2_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    try:  # the config's own error, reported by tyro or by eoslab (one line)
        code = main(["run", "sgd-eoss", "--batch-size", "4001", "--out", str(out)])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert "batch_size=4001" in err and "from 1 to n = 4000" in err
    cfg = tmp_path / "exp.json"
    cfg.write_text(json.dumps({"problem": {"kind": "model", "n": 50}, "batch_size": 0}))
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "batch_size=0" in err and "from 1 to n = 50" in err
    assert not out.exists()


def _net(params, x):
    """fc-tanh written out: tanh(tanh(x W0 + b0) W1 + b1) Wh + bh."""
    h = jnp.tanh(x @ params["dense0"]["w"] + params["dense0"]["b"])
    h = jnp.tanh(h @ params["dense1"]["w"] + params["dense1"]["b"])
    return h @ params["head"]["w"] + params["head"]["b"]


def _loss(params, x, y):
    """1/|B| sum_i 1/2 |f(x_i) - e_{y_i}|^2."""
    return 0.5 * jnp.mean(jnp.sum((_net(params, x) - jax.nn.one_hot(y, 10)) ** 2, axis=-1))


def _reference(steps):
    """SGD from the test's own loss on the sampler's batches: (full losses, batch losses, points,
    the batches)."""
    ds = data.load("mnist1d", n=N)
    x, y = np.asarray(ds.x_train, np.float64), np.asarray(ds.y_train)
    _, params = models.create("fc-tanh", jax.random.PRNGKey(SEED), ds.input_shape, 10)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    key = jax.random.key_data(jax.random.key(SEED))
    perm, pos = jnp.arange(N, dtype=jnp.int32), jnp.asarray(N, jnp.int32)
    grad = jax.jit(jax.value_and_grad(_loss))
    full, batch, points, batches = [], [], [], []
    for _ in range(steps):
        idx, key, perm, pos = next_batch(key, perm, pos, B)
        idx = np.asarray(idx)
        full.append(float(_loss(params, x, y)))
        points.append(ravel_pytree(params)[0])
        lb, g = grad(params, x[idx], y[idx])
        batch.append(float(lb))
        params = jax.tree_util.tree_map(lambda p, d: p - LR * d, params, g)
        batches.append(idx)
    full.append(float(_loss(params, x, y)))
    points.append(ravel_pytree(params)[0])
    return (
        np.array(full),
        np.array(batch),
        points,
        batches,
        (params, jnp.asarray(x), jnp.asarray(y)),
    )


def _rayleigh(params, x, y, idx):
    """g_B^T H_B g_B / |g_B|^2 of the batch rows idx (one forward-over-reverse product)."""
    f = lambda p: jax.grad(_loss)(p, x[idx], y[idx])  # noqa: E731
    g, hg = jax.jvp(f, (params,), (f(params),))
    gv, hv = ravel_pytree(g)[0], ravel_pytree(hg)[0]
    return gv @ hv / (gv @ gv)


@pytest.mark.slow
@pytest.mark.usefixtures("x64")  # the float64 run against a float64 reference
def test_cli_sgd_is_the_reference_loop_and_resumes_to_the_same_bits(tmp_path, capsys):
    steps = 10  # 48 / 8 = 6 batches an epoch: the run crosses into a second epoch
    out = tmp_path / "whole"
    assert main(["run", "sgd-eoss", *FLAGS, "--steps", str(steps), "--out", str(out)]) == 0
    run = eoslab.load_run(out)
    m = run.metrics
    full, batch, points, batches, _ = _reference(steps)
    np.testing.assert_allclose(m["loss"], full, rtol=1e-10)
    np.testing.assert_allclose(m["batch_loss"].iloc[:steps], batch, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(run.point("gd")), points[-1], rtol=1e-9, atol=1e-12)
    assert len(set(np.concatenate(batches[:6]))) == N  # one epoch: every example once
    # a run cut at step 4 (mid-epoch) and extended to 10 draws the same batches: same bits
    cut = tmp_path / "cut"
    assert main(["run", "sgd-eoss", *FLAGS, "--steps", "4", "--out", str(cut)]) == 0
    assert main(["resume", str(cut), "--steps", str(steps), "--quiet", "--no-plot"]) == 0
    assert_same_metrics(eoslab.load_run(cut).metrics, m)
    np.testing.assert_array_equal(eoslab.load_run(cut).point("gd"), run.point("gd"))


@pytest.mark.usefixtures("x64")
def test_cli_sgd_steps_and_batch_sharpness_against_the_reference(tmp_path):
    steps = 4
    out = tmp_path / "run"
    assert main(["run", "sgd-eoss", *FLAGS, "--steps", str(steps), "--out", str(out)]) == 0
    m = eoslab.load_run(out).metrics
    for col in (
        "batch_loss",
        "batch_grad_norm",
        "batch_sharpness",
        "batch_sharpness_stderr",
    ):
        assert col in m, col
    full, batch, _, _, (params_end, x, y) = _reference(steps)
    np.testing.assert_allclose(m["loss"], full, rtol=1e-10)
    np.testing.assert_allclose(m["batch_loss"].iloc[:steps], batch, rtol=1e-10)
    probed = m[m["batch_sharpness"].notna()]
    assert list(probed["step"]) == [0, 2, 4]
    # the last probe (step 4, at the reference's final parameters) against an independent
    # Monte-Carlo mean over 256 uniformly random batches of B (numpy's generator)
    rng = np.random.default_rng(0)
    idx = jnp.asarray(np.sort([rng.choice(N, B, replace=False) for _ in range(256)], axis=1))
    vals = np.asarray(jax.jit(jax.vmap(lambda i: _rayleigh(params_end, x, y, i)))(idx))
    mean, se = vals.mean(), vals.std(ddof=1) / np.sqrt(vals.size)
    row = probed.iloc[-1]
    gap = abs(row["batch_sharpness"] - mean)
    print(f"batch sharpness {row['batch_sharpness']:.5g} +- {row['batch_sharpness_stderr']:.2g}, "
          f"reference {mean:.5g} +- {se:.2g}")  # fmt: skip
    assert row["batch_sharpness_stderr"] <= 0.05 * row["batch_sharpness"]
    assert gap <= 4 * np.hypot(row["batch_sharpness_stderr"], se)


_DEVICES_SCRIPT = """
import sys
from eoslab.cli import main
out, dev = sys.argv[1], sys.argv[2]
sys.exit(main(["run", "sgd-eoss", "--problem.n", "50", "--batch-size", "8", "--steps", "8",
               "--probe-every", "4", "--devices", dev, "--out", out, "--quiet", "--no-plot"]))
"""


@pytest.mark.subprocess
@pytest.mark.multidevice
@pytest.mark.slow
def test_sgd_on_four_host_devices_gives_the_numbers_of_one(tmp_path):
    """50 examples over 4 devices: padded with 2 zero-weight rows the sampler never draws."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(
        os.environ,
        XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    runs = {}
    for dev in ("1", "4"):
        out = tmp_path / dev
        proc = subprocess.run(
            [sys.executable, "-c", _DEVICES_SCRIPT, str(out), dev],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[dev] = eoslab.load_run(out).metrics
    one, four = runs["1"], runs["4"]
    for col in ("loss", "batch_loss", "grad_norm", "sharpness", "batch_sharpness", "accuracy"):
        ok = one[col].notna()
        assert ok.sum() >= 3, col
        np.testing.assert_allclose(four[col][ok], one[col][ok], rtol=1e-5, err_msg=col)
