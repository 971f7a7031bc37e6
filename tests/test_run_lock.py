"""One writer per run directory, and nothing measured lost on a signal: real processes.

A second `run`, `resume`, `report` or figure into a run directory in use is refused in one line
naming the holder; a holder killed with SIGKILL leaves a lock the next writer takes over. SIGINT
and SIGTERM save every row measured and a checkpoint at the step reached; the resumed run ends
with the numbers of an uninterrupted one, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from eoslab import Objective
from eoslab.cli import main
from eoslab.dynamics import rules
from eoslab.errors import DamagedRunWarning, RunInterrupted, RunInUseError
from eoslab.runlock import LOCK_NAME, hold, read_holder
from eoslab.runner import HostProbe, Probes, load_run, train
from helpers import assert_same_metrics, eoslab_process

SRC = str(Path(__file__).resolve().parents[1] / "src")

_HOLDER = """
import sys, time
from eoslab.runlock import hold
with hold(sys.argv[1], "resume"):
    print("held", flush=True)
    time.sleep(300)
"""


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process holding ``run_dir``'s lock (returned once it holds it)."""
    env = dict(os.environ, PYTHONPATH=SRC, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run_dir)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held", "the holder did not take the lock"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.subprocess
def test_a_second_writer_is_refused_in_one_line_and_a_killed_holder_is_taken_over(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    other = _holder(d)
    try:
        with pytest.raises(RunInUseError) as refused, hold(d, "run"):
            raise AssertionError("two processes held one run directory")
        msg = str(refused.value)
        assert "\n" not in msg
        for part in (str(d), f"pid {other.pid}", socket.gethostname(), "resume", "since 2"):
            assert part in msg, (part, msg)
        assert f"kill {other.pid}" in msg
        assert read_holder(d).pid == other.pid
    finally:
        _kill(other)  # SIGKILL: no chance to let go; the kernel releases its flock
    assert read_holder(d).pid == other.pid  # its record is left behind
    with pytest.warns(DamagedRunWarning, match=rf"pid {other.pid} .*taken over"):
        with hold(d, "resume") as me:
            assert me.pid == os.getpid() and read_holder(d) == me
    assert read_holder(d) is None and (d / LOCK_NAME).read_bytes() == b""  # let go cleanly
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a lock let go cleanly is no takeover
        with hold(d, "resume"):
            pass


def test_the_lock_is_reentrant_in_its_thread_and_refused_to_another_thread(tmp_path):
    seen: list[BaseException | None] = []

    def other_thread():
        try:
            with hold(tmp_path, "report"):
                seen.append(None)
        except RunInUseError as exc:
            seen.append(exc)

    with hold(tmp_path, "resume") as outer:
        with hold(tmp_path, "figure") as inner:
            assert inner == outer
        assert read_holder(tmp_path) == outer  # the inner exit did not let go
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
    assert isinstance(seen[0], RunInUseError) and "another thread" in str(seen[0])
    assert read_holder(tmp_path) is None


TINY = {
    "problem": {"kind": "toy-mlp", "n": 16, "width": 4},
    "rule": {"kind": "gd", "lr": 0.5},
    "steps": 40,
    "probe_every": 10,
    "flush_seconds": 0,
}


@pytest.mark.subprocess
def test_report_plot_resume_and_run_are_refused_while_another_process_writes(tmp_path, capsys):
    cfg = tmp_path / "exp.json"
    cfg.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--out", str(run), "--quiet", "--no-plot"]) == 0
    assert (run / LOCK_NAME).read_bytes() == b""  # the run let go cleanly: no holder recorded
    capsys.readouterr()
    other = _holder(run)
    try:
        before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
        for args in (["report", str(run)], ["plot", str(run)], ["resume", str(run), "--quiet"]):
            assert main(args) == 4, args
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("eoslab: error: "), err
            assert f"in use by pid {other.pid}" in err[0]
        assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before  # untouched
        # reading it and writing elsewhere is fine
        assert main(["plot", str(run), "--out", str(tmp_path / "p.png")]) == 0
        assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
        assert (tmp_path / "rep" / "report.md").is_file()
    finally:
        _kill(other)


@pytest.mark.subprocess
def test_a_new_run_into_a_directory_another_process_holds_is_refused(tmp_path, capsys):
    cfg = tmp_path / "exp.json"
    cfg.write_text(json.dumps(TINY))
    new = tmp_path / "new"
    new.mkdir()
    other = _holder(new)
    try:
        capsys.readouterr()
        assert main(["run", "--config", str(cfg), "--out", str(new), "--quiet"]) == 4
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by pid {other.pid}" in err[0], err
        assert [p.name for p in new.iterdir()] == [LOCK_NAME]
    finally:
        _kill(other)


def test_run_out_suggests_resume_only_for_a_run(tmp_path, capsys):
    cfg = tmp_path / "exp.json"
    cfg.write_text(json.dumps(TINY))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["run", "--config", str(cfg), "--out", str(foreign), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a run directory" in err and "another --out" in err and "eoslab resume" not in err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]  # no lock file left in it
    run = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--out", str(run), "--quiet", "--no-plot"]) == 0
    capsys.readouterr()
    assert main(["run", "--config", str(cfg), "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and f"eoslab resume {run}" in err


# ------------------------------------------------------------------ real runs, real signals

BASE = {
    "problem": {"kind": "toy-mlp"},
    "rule": {"kind": "gd", "lr": 0.2},
    "steps": 400,
    "probe_every": 20,
    "flush_seconds": 1000,  # no timed flush: only the signal's own flush saves the rows
}


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _raw_metrics(run: Path) -> pd.DataFrame:
    """Every part as plain pandas reads it (no deduplication)."""
    return pd.read_parquet(run / "metrics")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The 400-step run, uninterrupted, in a fresh interpreter like the others (and the JAX
    compilation cache they share)."""
    base = tmp_path_factory.mktemp("lock")
    cfg = base / "exp.json"
    cfg.write_text(json.dumps(BASE))
    cache = base / "jax-cache"
    ref = eoslab_process(
        "run", "--config", cfg, "--out", base / "ref", "--quiet", "--no-plot", cache=cache
    )
    code, err = _finish(ref)
    assert code == 0, err
    return base, cfg, cache, load_run(base / "ref")


def _wait_for_step(proc: subprocess.Popen, log: Path, step: int) -> int:
    """The last step a chunk reached once it is >= ``step``."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if log.is_file():
            done = [int(x) for x in log.read_text().split()]
            if done and done[-1] >= step:
                return done[-1]
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}):\n{proc.stderr.read()}")
        time.sleep(0.005)
    raise AssertionError(f"step {step} not reached within 300 s")


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_every_row_and_resume_is_bit_identical(uninterrupted, tmp_path, sig):
    base, cfg, cache, ref = uninterrupted
    out, log = tmp_path / "cut", tmp_path / "steps.log"
    victim = eoslab_process(
        "run", "--config", cfg, "--out", out, "--quiet", "--no-plot", cache=cache, pause=0.05,
        log=log,
    )  # fmt: skip
    at = _wait_for_step(victim, log, 100)
    victim.send_signal(sig)
    code, err = _finish(victim)
    assert code == 128 + sig, err  # 130 for SIGINT, 143 for SIGTERM
    assert "Traceback" not in err and f"eoslab resume {out}" in err
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "interrupted" and f"eoslab resume {out}" in man["message"]
    assert signal.Signals(sig).name in man["message"]
    ckpt = man["checkpoint_step"]
    # the chunk under way when the signal came is finished, then saved: at most one probe
    # interval past the last step seen before the signal
    assert at <= ckpt <= at + BASE["probe_every"], (at, ckpt)
    kept = _raw_metrics(out)
    assert not kept.duplicated(["process", "step"]).any()
    assert sorted(kept["step"]) == list(range(ckpt))  # every step before the checkpoint
    print(f"{signal.Signals(sig).name}: last chunk seen at step {at}; rows kept: {len(kept)} "
          f"(steps 0..{ckpt - 1}); checkpoint at {ckpt}")  # fmt: skip
    resumed = eoslab_process("resume", out, "--quiet", "--no-plot", cache=cache)
    code, err = _finish(resumed)
    assert code == 0, err
    back = load_run(out)
    assert back.status == "completed"
    assert not _raw_metrics(out).duplicated(["process", "step"]).any()
    assert_same_metrics(back.metrics, ref.metrics)  # bit for bit


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_concurrent_resumes_one_runs_the_other_is_refused(uninterrupted, tmp_path):
    base, cfg, cache, ref = uninterrupted
    half = tmp_path / "half.json"
    half.write_text(json.dumps({**BASE, "steps": 200, "flush_seconds": 0}))
    run = tmp_path / "run"
    # two new runs into one directory at once: one makes it, the other is refused (in use
    # while the first holds it, or already a run once it has let go)
    args = ("run", "--config", half, "--out", run, "--quiet", "--no-plot")
    done = [_finish(p) for p in [eoslab_process(*args, cache=cache, pause=0.2) for _ in "ab"]]
    assert sorted(c for c, _ in done) in ([0, 2], [0, 4]), done
    refused = [e for c, e in done if c != 0][0].strip().splitlines()
    assert len(refused) == 1 and ("in use by pid" in refused[0] or "holds a run" in refused[0])
    # both at once; whichever takes the lock first holds it for over 10 s (pauses)
    args = ("resume", run, "--steps", "400", "--quiet", "--no-plot")
    both = [eoslab_process(*args, cache=cache, pause=0.5) for _ in range(2)]
    done = [_finish(p) for p in both]
    codes = sorted(c for c, _ in done)
    assert codes == [0, 4], done
    winner = both[[c for c, _ in done].index(0)]
    refused = [e for c, e in done if c == 4][0].strip().splitlines()
    assert len(refused) == 1 and refused[0].startswith("eoslab: error: "), refused
    assert f"in use by pid {winner.pid}" in refused[0] and "resume" in refused[0]
    assert len(json.loads((run / "config.json").read_text())["extended"]) == 1
    assert not (run / "damaged").exists()  # nothing healthy was taken for damage
    raw = _raw_metrics(run)
    assert not raw.duplicated(["process", "step"]).any()
    assert sorted(raw["step"]) == list(range(401))
    back = load_run(run)
    assert back.status == "completed"
    assert_same_metrics(back.metrics, ref.metrics)


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_sigkilled_holder_is_taken_over_by_the_next_resume(uninterrupted, tmp_path):
    base, cfg, cache, ref = uninterrupted
    flushing = tmp_path / "flushing.json"
    flushing.write_text(json.dumps({**BASE, "flush_seconds": 0}))
    run, log = tmp_path / "run", tmp_path / "steps.log"
    victim = eoslab_process(
        "run", "--config", flushing, "--out", run, "--quiet", "--no-plot", cache=cache, pause=0.05,
        log=log,
    )  # fmt: skip
    _wait_for_step(victim, log, 100)
    assert read_holder(run).pid == victim.pid
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    victim.stderr.close()
    victim.stdout.close()
    assert read_holder(run).pid == victim.pid  # the record stays; the flock went with it
    resumed = eoslab_process("resume", run, "--quiet", "--no-plot", cache=cache)
    code, err = _finish(resumed)
    assert code == 0, err
    warned = [line for line in err.splitlines() if "taken over" in line]
    assert len(warned) == 1 and f"pid {victim.pid}" in warned[0], err
    assert warned[0].startswith("eoslab: warning: ")
    assert read_holder(run) is None
    assert not _raw_metrics(run).duplicated(["process", "step"]).any()
    back = load_run(run)
    assert back.status == "completed"
    assert_same_metrics(back.metrics, ref.metrics)


# ------------------------------------------------------------------ the Python API, in process


def _quadform(w, data):
    A, w_star = data
    d = w - w_star
    return 0.5 * d @ A @ d


def _objective():
    rng = np.random.default_rng(3)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    A = Q @ np.diag([9.0, 5.0, 3.0, 1.0, 0.5, 0.1]) @ Q.T
    data = (jnp.asarray(A), jnp.asarray(rng.normal(size=6)))
    return Objective.from_data_fn(_quadform, data, jnp.asarray(rng.normal(size=6)))


class _SignalAt(HostProbe):
    """Sends ``sig`` to this process at the probe of ``step``: a signal from outside, as it
    would come mid-run."""

    step: int
    sig: int

    def __call__(self, at, state):
        if at.step == self.step:
            os.kill(os.getpid(), self.sig)
        return {}, state


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_train_saves_every_row_on_a_signal_and_resumes_bit_for_bit(tmp_path, sig):
    """`eoslab.train` (so `run` and `experiments.execute`, which train goes through) behaves as
    the CLI does: the signal at the probe of step 50 lets the chunk 50..59 finish, then every
    row and a checkpoint at 60 are written; the previous handlers are back afterwards."""
    obj, rule = _objective(), rules.HeavyBall(0.15, 0.5)
    kw = dict(probe_every=10, flush_seconds=1e6, probes=Probes(k=2), accuracy=False)
    ref = train(obj, rule, 120, out=tmp_path / "ref", **kw)
    before = signal.getsignal(sig)
    with pytest.raises(RunInterrupted) as stopped:
        train(obj, rule, 120, out=tmp_path / "cut", custom_probes=(_SignalAt(50, sig),), **kw)
    assert stopped.value.signum == sig and stopped.value.exit_code == 128 + sig
    assert isinstance(stopped.value, KeyboardInterrupt)
    assert signal.getsignal(sig) == before  # restored
    man = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert man["status"] == "interrupted" and man["checkpoint_step"] == 60
    assert signal.Signals(sig).name in man["message"] and "eoslab resume" in man["message"]
    kept = pd.read_parquet(tmp_path / "cut" / "metrics")
    assert sorted(kept["step"]) == list(range(60))  # nothing measured was lost
    back = train(obj, rule, 120, out=tmp_path / "cut", resume=True, **kw)
    assert back.status == "completed"
    assert_same_metrics(back.metrics, ref.metrics)
    np.testing.assert_array_equal(np.asarray(back.point()), np.asarray(ref.point()))


def test_an_ignored_sigint_stays_ignored(tmp_path):
    """A shell's background job starts with SIGINT ignored; a run leaves it so."""
    obj, rule = _objective(), rules.GD(0.1)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run = train(
            obj,
            rule,
            40,
            out=tmp_path / "run",
            probes=Probes(sharpness=False),
            custom_probes=(_SignalAt(20, signal.SIGINT),),
            accuracy=False,
        )
        assert run.status == "completed" and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
