"""Fault injection: every kind of run file truncated, filled with garbage, emptied or deleted.

Every case ends in a documented exit code with one-line messages and no traceback, and the good
data survives: a repaired run ends with exactly the metrics of the undamaged one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil

import pandas as pd
import pytest

import eoslab.runner.store as store_module
from eoslab.cli import main
from eoslab.runner import load_run

TINY = {
    "problem": {"kind": "toy-mlp", "n": 16, "width": 4},
    "rule": {"kind": "gd", "lr": 0.5},
    "steps": 40,
    "probe_every": 10,
    "flush_seconds": 0,
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("damage")
    cfg = base / "exp.json"
    cfg.write_text(json.dumps(TINY))
    out = base / "ref"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--quiet", "--no-plot"]) == 0
    return out


def _damage(path, how):
    data = path.read_bytes()
    if how == "truncate-half":
        path.write_bytes(data[: len(data) // 2])
    elif how == "truncate-tail":
        path.write_bytes(data[:-7])
    elif how == "garbage":
        path.write_bytes(b"\x00garbage\xff" * (1 + len(data) // 10))
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()


def _target(run, kind):
    if kind == "config":
        return run / "config.json"
    if kind == "manifest":
        return run / "manifest.json"
    if kind == "checkpoint":
        return next((run / "checkpoints").glob("step-*.npz"))
    return sorted((run / "metrics").glob("part-*.parquet"))[1]  # a part before the checkpoint


def _one_line_messages(err: str) -> None:
    assert "Traceback" not in err
    for line in err.strip().splitlines():
        assert line.startswith("eoslab: "), line


HOWS = ["truncate-half", "truncate-tail", "garbage", "empty", "delete"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("kind", ["manifest", "checkpoint", "part"])
def test_resume_repairs_and_recomputes_exactly(reference, tmp_path, capsys, kind, how):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    _damage(_target(run, kind), how)
    good = sorted(p.name for p in (run / "metrics").glob("*.parquet"))
    capsys.readouterr()
    assert main(["resume", str(run), "--quiet", "--no-plot"]) == 0
    err = capsys.readouterr().err
    _one_line_messages(err)
    if kind != "manifest" or how != "delete":
        assert "warning" in err
    if kind != "manifest":  # nothing deleted: damaged and superseded parts are moved aside
        aside = {p.name.split("__")[-1] for p in (run / "damaged").glob("*")}
        for name in good:
            assert (run / "metrics" / name).is_file() or name in aside
    repaired, ref = load_run(run), load_run(reference)
    assert repaired.status == "completed"
    pd.testing.assert_frame_equal(repaired.metrics, ref.metrics, check_exact=True)


@pytest.mark.parametrize("how", HOWS)
def test_damaged_config_is_exit_4_and_changes_nothing(reference, tmp_path, capsys, how):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    _damage(run / "config.json", how)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    capsys.readouterr()
    code = main(["resume", str(run)])
    err = capsys.readouterr().err
    _one_line_messages(err)
    if how == "delete":
        assert code == 2 and "not a run directory" in err
    else:
        assert code == 4 and "config.json is damaged" in err
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before


@pytest.mark.parametrize("kind", ["part", "checkpoint", "manifest"])
def test_plot_and_report_read_around_damage(reference, tmp_path, capsys, kind):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    _damage(_target(run, kind), "garbage")
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(tmp_path / "p.png")]) == 0
    assert main(["report", str(run)]) == 0
    err = capsys.readouterr().err
    _one_line_messages(err)
    assert (tmp_path / "p.png").stat().st_size > 10_000
    if kind == "part":
        assert "damaged" in err
    # read-only: nothing was moved aside
    assert not (run / "damaged").exists()


@pytest.mark.parametrize("manifest", ["rewritten-in-place", "unwritable"])
def test_a_full_disk_marks_the_run_interrupted_and_resume_finishes_it(
    reference, tmp_path, capsys, monkeypatch, manifest
):
    """The disk fills at the second checkpoint and stays full: every later write fails. The run
    exits 4 naming the original error; its manifest says "interrupted" with that error (rewritten
    in place, as the atomic write needs a new file), or, when even that fails, is left as it was
    and the original error is still the one reported. A resume then ends with exactly the
    reference's metrics."""
    cfg = tmp_path / "exp.json"
    cfg.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    write, full = store_module.atomic_write_bytes, []

    def filling(path, data, **kw):
        if path.name.startswith("step-") and path.name != "step-000000010.npz" or full:
            full.append(path.name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write(path, data, **kw)

    monkeypatch.setattr(store_module, "atomic_write_bytes", filling)
    if manifest == "unwritable":

        def no_open(file, *a, **kw):  # the in-place rewrite fails too, once the disk is full
            if full and os.path.basename(file) == "manifest.json":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
            return open(file, *a, **kw)

        monkeypatch.setattr(store_module, "open", no_open, raising=False)
    capsys.readouterr()
    assert main(["run", "--config", str(cfg), "--out", str(run), "--quiet", "--no-plot"]) == 4
    err = capsys.readouterr().err
    _one_line_messages(err)
    assert len(err.strip().splitlines()) == 1
    assert "step-000000020.npz: No space left on device" in err  # the original error, unmasked
    assert f"eoslab resume {run}" in err
    assert full[0] == "step-000000020.npz" and "manifest.json" in full  # the manifest failed too
    man = json.loads((run / "manifest.json").read_text())
    assert man["checkpoint"] == "checkpoints/step-000000010.npz"
    if manifest == "unwritable":
        assert man["status"] == "running"  # best effort: as it was
    else:
        assert man["status"] == "interrupted"
        assert "No space left on device" in man["message"] and "step 20" in man["message"]
        assert f"eoslab resume {run}" in man["message"]
    monkeypatch.undo()  # space freed
    assert main(["resume", str(run), "--quiet", "--no-plot"]) == 0
    _one_line_messages(capsys.readouterr().err)
    back, ref = load_run(run), load_run(reference)
    assert back.status == "completed"
    pd.testing.assert_frame_equal(back.metrics, ref.metrics, check_exact=True)
