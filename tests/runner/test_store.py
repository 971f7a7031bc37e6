"""The run store: atomic Parquet parts and npz checkpoints, no overwrite, bit-identical resume."""

from __future__ import annotations

import json
import signal
import time

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from eoslab import Objective
from eoslab.dynamics import rules
from eoslab.errors import UnsafeFileError
from eoslab.runner import HostProbe, Probes, RunExistsError, RunStore, load_run, train
from helpers import eoslab_process


def _loss(w, data):
    x, y = data
    h = jnp.tanh(x @ w[:12].reshape(3, 4))
    return 0.5 * jnp.mean((h @ w[12:16] - y) ** 2)


def _objective():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    y = np.sin(x[:, 0]).astype(np.float32)
    w0 = (0.5 * rng.normal(size=16)).astype(np.float32)
    return Objective.from_data_fn(_loss, (jnp.asarray(x), jnp.asarray(y)), w0)


class _Interrupt(Exception):
    pass


def test_store_files_and_plain_pandas(tmp_path):
    out = tmp_path / "run"
    run = train(
        _objective(),
        rules.GD(0.5),
        60,
        probe_every=10,
        out=out,
        flush_seconds=0,
        probes=Probes(k=2),
        config={"note": "hand-made", "seed": 3},
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["note"] == "hand-made" and cfg["seed"] == 3
    assert "eoslab_version" in cfg and "command_line" in cfg
    parts = sorted((out / "metrics").glob("part-*.parquet"))
    assert len(parts) >= 6
    frames = [pd.read_parquet(p) for p in parts]  # plain pandas, no eoslab
    df = pd.concat(frames).sort_values("step")
    assert list(df["step"]) == list(range(61))
    assert len(df["eigs"].dropna().iloc[0]) == 2
    for col in (
        "loss",
        "grad_norm",
        "lr_eff",
        "sharpness",
        "eigs",
        "threshold",
        "sharpness_matvecs",
        "grad_top_alignment",
    ):
        assert col in df
    # no temporary files left, one checkpoint, loadable without pickle
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    ckpts = list((out / "checkpoints").glob("*.npz"))
    assert len(ckpts) == 1
    with np.load(ckpts[0], allow_pickle=False) as z:
        np.testing.assert_array_equal(z["gd__point"], np.asarray(run.point()))
    back = load_run(out)
    assert back.status == "completed"
    pd.testing.assert_frame_equal(back.metrics, run.metrics)
    np.testing.assert_array_equal(np.asarray(back.point()), np.asarray(run.point()))


def test_existing_directory_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(RunExistsError, match="not a run directory.*another --out$"):
        train(_objective(), rules.GD(0.1), 5, out=out, probes=Probes(sharpness=False))
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    run = train(_objective(), rules.GD(0.1), 5, out=empty, probes=Probes(sharpness=False))
    assert run.status == "completed"
    # train(out=) draws the figure eoslab run draws
    assert (empty / "figures" / "overview.png").stat().st_size > 0


def test_pickled_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "step-000000001.npz"
    np.savez(bad, w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UnsafeFileError, match="pickle"):
        RunStore.read_checkpoint(bad)
    with pytest.raises(TypeError, match="pickle"):
        RunStore(tmp_path).write_checkpoint(1, {"w": np.array([None], dtype=object)})


def test_resume_after_interrupt_is_bit_identical(tmp_path):
    obj, rule = _objective(), rules.HeavyBall(0.3, 0.5)
    ref = train(obj, rule, 200, probe_every=10, out=tmp_path / "ref", flush_seconds=0)

    class Boom(HostProbe):
        def __call__(self, at, state):
            if at.step == 130:
                raise _Interrupt
            return {}, state

    with pytest.raises(_Interrupt):
        train(
            obj,
            rule,
            200,
            probe_every=10,
            out=tmp_path / "cut",
            flush_seconds=0,
            custom_probes=(Boom(),),
        )
    man = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert man["status"] == "running" and man["checkpoint_step"] == 130
    # a stray part past the checkpoint (as if killed between the part and the checkpoint)
    RunStore(tmp_path / "cut").write_part(ref.metrics[ref.metrics.step.between(130, 139)])
    run = train(obj, rule, 200, probe_every=10, out=tmp_path / "cut", resume=True)
    assert run.status == "completed"
    np.testing.assert_array_equal(np.asarray(run.point()), np.asarray(ref.point()))
    cols = ["step", "loss", "grad_norm", "lr_eff", "threshold", "sharpness"]
    pd.testing.assert_frame_equal(run.metrics[cols], ref.metrics[cols])
    # resuming a finished run changes nothing
    again = train(obj, rule, 200, probe_every=10, out=tmp_path / "cut", resume=True)
    pd.testing.assert_frame_equal(again.metrics, run.metrics)


@pytest.mark.slow  # ~20-40 s; test_extending and test_lockstep_runs SIGKILL a run too
@pytest.mark.subprocess
def test_sigkill_then_resume_gives_the_same_final_loss(tmp_path):
    cfg = {
        "problem": {"kind": "toy-mlp"},
        "rule": {"kind": "heavy_ball", "lr": 0.2, "beta": 0.5},
        "steps": 400,
        "probe_every": 20,
        "flush_seconds": 0,
    }
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(cfg))
    common = ["--config", str(path), "--quiet", "--no-plot"]
    cache = tmp_path / "jax-cache"
    # a pause after each chunk of 20 steps keeps the run going until the kill lands
    victim = eoslab_process("run", *common, "--out", tmp_path / "cut", cache=cache, pause=0.1)
    manifest = tmp_path / "cut" / "manifest.json"
    deadline = time.monotonic() + 300
    killed_at = None
    while time.monotonic() < deadline:
        if manifest.is_file():
            try:
                man = json.loads(manifest.read_text())
            except ValueError:  # never happens with atomic writes; fail loudly if it does
                raise AssertionError("manifest.json was read half-written") from None
            if man.get("step", 0) >= 100:
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                killed_at = man["step"]
                break
        if victim.poll() is not None:
            break
        time.sleep(0.01)
    assert killed_at is not None, "the run ended before it could be killed"
    assert victim.returncode == -signal.SIGKILL
    man = json.loads(manifest.read_text())
    assert man["status"] == "running" and man["step"] < 400
    resumed = eoslab_process("resume", tmp_path / "cut", "--quiet", "--no-plot", cache=cache)
    ref = eoslab_process("run", *common, "--out", tmp_path / "ref", cache=cache)  # uninterrupted
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    ref.communicate(timeout=300)
    assert ref.returncode == 0
    a, b = load_run(tmp_path / "ref"), load_run(tmp_path / "cut")
    assert a.status == b.status == "completed"
    assert a.metrics["loss"].iloc[-1] == b.metrics["loss"].iloc[-1]  # bit for bit
    np.testing.assert_array_equal(np.asarray(a.point()), np.asarray(b.point()))
    pd.testing.assert_series_equal(a.metrics["loss"], b.metrics["loss"])
    # probes restart from the checkpointed warm start: equal to the eigen-solver's tolerance
    # (bit-equal in every run we made but one, made under heavy CPU load)
    pd.testing.assert_series_equal(a.metrics["sharpness"], b.metrics["sharpness"], rtol=2e-3)
    assert list(b.metrics["step"]) == list(range(401))


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
@pytest.mark.subprocess
def test_ctrl_c_marks_the_run_interrupted_and_resume_finishes_it(tmp_path):
    cfg = {
        "problem": {"kind": "toy-mlp"},
        "rule": {"kind": "gd", "lr": 0.2},
        "steps": 400,
        "probe_every": 20,
        "flush_seconds": 0,
    }
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(cfg))
    out, cache = tmp_path / "cut", tmp_path / "jax-cache"
    # a pause after each chunk of 20 steps keeps the run going until the signal lands
    victim = eoslab_process(
        "run", "--config", path, "--out", out, "--quiet", "--no-plot", cache=cache, pause=0.1
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list((out / "checkpoints").glob("*.npz")):
        if victim.poll() is not None:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGINT)
    _, err = victim.communicate(timeout=60)
    assert victim.returncode == 130, err
    assert f"eoslab resume {out}" in err and "Traceback" not in err
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "interrupted" and str(out) in man["message"]
    resumed = eoslab_process("resume", out, "--quiet", "--no-plot", cache=cache)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert json.loads((out / "manifest.json").read_text())["status"] == "completed"
