"""The eoslab command line end to end on tiny configs: runs, bad configs, divergence, plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pandas as pd
import pytest

from eoslab.cli import main
from eoslab.experiments import PRESETS, Experiment, from_dict, to_dict
from eoslab.runner import load_run

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = {
    "problem": {"kind": "toy-mlp", "n": 16, "width": 4},
    "rule": {"kind": "gd", "lr": 0.5},
    "steps": 40,
    "probe_every": 10,
}


def _write(tmp_path, data, name="exp.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def test_run_config_end_to_end(tmp_path, capsys):
    cfg = _write(tmp_path, TINY)
    out = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "completed" in text and "figure:" in text
    assert (out / "figures" / "overview.png").stat().st_size > 10_000
    rec = json.loads((out / "config.json").read_text())
    assert rec["config"]["rule"] == {"kind": "gd", "lr": 0.5}
    assert from_dict(rec["config"]) == from_dict(TINY)
    df = pd.concat(pd.read_parquet(p) for p in (out / "metrics").glob("*.parquet"))
    assert sorted(df["step"]) == list(range(41))
    # the same directory again: refused, nothing touched
    before = sorted(p.name for p in (out / "metrics").iterdir())
    assert main(["run", "--config", str(cfg), "--out", str(out), "--quiet"]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "metrics").iterdir()) == before
    # resume of a finished run: nothing to do
    assert main(["resume", str(out), "--quiet"]) == 0
    # plot two runs overlaid
    out2 = tmp_path / "run2"
    args = ["run", "--config", str(cfg), "--steps", "20", "--rule.lr", "0.3", "--out", str(out2)]
    assert main([*args, "--quiet", "--no-plot"]) == 0
    assert json.loads((out2 / "config.json").read_text())["config"]["rule"]["lr"] == 0.3
    png = tmp_path / "both.png"
    assert main(["plot", str(out), str(out2), "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("text", "name", "needle"),
    [
        ({"rule": {"kind": "gd", "lrr": 0.1}}, "a.json", "rule.lrr"),
        ({"rule": {"kind": "gd", "lr": -1}}, "b.json", "rule.lr"),
        ({"rule": {"kind": "sgd"}}, "c.json", "rule.kind"),
        ({"stepz": 3}, "d.json", "stepz"),
        ({"steps": "many"}, "e.json", "steps"),
        ({"probes": {"k": 0}}, "f.json", "probes.k"),
        ("rule:\n  kind: adam\n  beta1: 1.5\n", "g.yaml", "rule.beta1"),
        ("rule: [unclosed\n", "h.yaml", "not valid yaml"),
        ("{not json", "i.json", "not valid json"),
        ("!!python/object/apply:os.system ['echo pwned']", "j.yaml", "not valid yaml"),
    ],
)
def test_bad_configs_fail_before_work_with_one_line(tmp_path, capsys, text, name, needle):
    cfg = _write(tmp_path, text, name)
    out = tmp_path / "never"
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eoslab: error:") and err.count("\n") == 1
    assert needle.lower() in err.lower()
    assert "Traceback" not in err
    assert not out.exists()


def test_missing_config_and_conflicting_arguments(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "nope.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["run", "toy", "--config", str(_write(tmp_path, TINY))]) == 2
    assert "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # refused by tyro while it builds the config
        main(["run", "toy", "--rule.lr", "-1", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "lr=-1.0 is not accepted" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["resume", str(tmp_path)]) == 2


def test_bad_flag_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "toy", "--rule.lr", "abc"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["run", "no-such-preset"])
    assert exc.value.code == 2


def test_model_options_and_mini_batches_are_checked_before_any_work(tmp_path, capsys):
    out = tmp_path / "x"
    for args, needles in (
        (["--problem.model-options", "width", "64"], ["model_options.width=64", "d_model"]),
        (["--problem.model-options", "d_model", "0"], ["model_options.d_model=0", ">= 1"]),
        (["--batch-size", "1025"], ["batch_size=1025", "from 1 to n = 1024"]),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["run", "transformer", *args, "--out", str(out)])
        assert exc.value.code == 2
        err = " ".join(capsys.readouterr().err.replace("│", " ").split())
        assert all(n in err for n in needles), err
    with pytest.raises(SystemExit) as exc:
        main(["run", "gd-central-flow", "--batch-size", "8", "--out", str(out)])
    assert exc.value.code == 2
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert "compare=" in err and "full-batch GD" in err
    assert not out.exists()


def test_divergence_exit_code_message_and_metrics(tmp_path, capsys):
    out = tmp_path / "div"
    code = main(["run", "quadratic-diverge", "--out", str(out), "--quiet", "--no-plot"])
    assert code == 3
    text = capsys.readouterr().out
    assert "diverged at step" in text
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "diverged" and "diverged at step" in man["message"]
    df = pd.concat(pd.read_parquet(p) for p in (out / "metrics").glob("*.parquet"))
    assert len(df) > 50 and df["loss"].notna().all()
    assert main(["resume", str(out)]) == 3


def test_list_and_presets_round_trip(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for name in PRESETS:
        assert name in text
    for exp in PRESETS.values():
        assert isinstance(exp, Experiment)
        assert from_dict(json.loads(json.dumps(to_dict(exp)))) == exp


@pytest.mark.subprocess
def test_help_covers_every_run_flag():
    from dataclasses import fields

    from eoslab.cli import Run

    proc = subprocess.run(
        [sys.executable, "-m", "eoslab.cli", "run", "--help"],
        env=dict(os.environ, PYTHONPATH=SRC, COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    for f in fields(Run):
        if f.name != "experiment":
            assert f"--{f.name.replace('_', '-')}" in proc.stdout


@pytest.mark.subprocess
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_parses_and_its_help_covers_every_field(preset):
    from dataclasses import fields

    from eoslab.cli import _parse

    args, name = _parse(["run", preset])
    assert name == preset and args.experiment == PRESETS[preset]
    proc = subprocess.run(
        [sys.executable, "-m", "eoslab.cli", "run", preset, "--help"],
        env=dict(os.environ, PYTHONPATH=SRC, COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "None|" not in proc.stdout and "{None}" not in proc.stdout
    exp = PRESETS[preset]
    for f in fields(exp):
        if f.name in ("problem", "rule", "compare", "probes", "stop"):
            for sub in fields(getattr(exp, f.name)) if f.name != "compare" else ():
                if sub.init:
                    assert f"--{f.name}.{sub.name.replace('_', '-')}" in proc.stdout
            for key, proc_cfg in exp.compare.items() if f.name == "compare" else ():
                hints = typing.get_type_hints(type(proc_cfg), include_extras=True)
                for sub in fields(proc_cfg):
                    if "Suppress" in str(hints[sub.name]):  # Python-only fields
                        continue
                    assert f"--compare.{key}.{sub.name.replace('_', '-')}" in proc.stdout
        else:
            assert f"--{f.name.replace('_', '-')}" in proc.stdout


def test_version_and_top_level_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("eoslab ")
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "exit codes" in text and "eoslab run eos-gd" in text


@pytest.mark.slow
def test_demo_writes_figures_into_a_fresh_directory(tmp_path, capsys):
    base = tmp_path / "runs" / "demo"
    assert main(["demo", "--out", str(base), "--steps", "30"]) == 0
    assert (base / "figures" / "overview.png").is_file()
    assert main(["demo", "--out", str(base), "--steps", "30"]) == 0  # never over the first
    text = capsys.readouterr().out
    dirs = sorted(p.name for p in base.parent.iterdir())
    assert len(dirs) == 2 and dirs[0] == "demo" and dirs[1].startswith("demo-")
    assert "figure:" in text


def test_sharpness_and_report_commands(tmp_path, capsys):
    import jax
    import numpy as np

    from eoslab import load_run
    from eoslab.experiments import build

    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--config",
                str(_write(tmp_path, TINY)),
                "--out",
                str(out),
                "--quiet",
                "--no-plot",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["sharpness", str(out), "--k", "2", "--tol", "1e-8"]) == 0
    text = capsys.readouterr().out
    rows = [ln.split() for ln in text.splitlines() if ln.strip()[:1].isdigit()]
    values = np.array([float(r[1]) for r in rows])
    # independent: the dense Hessian of the same objective at the checkpointed point
    obj = build(from_dict(TINY)).objective
    w = np.asarray(load_run(out).w)
    H = np.asarray(jax.hessian(obj)(jax.numpy.asarray(w, obj.dtype)), np.float64)
    top = np.sort(np.linalg.eigvalsh(H))[::-1][:2]
    np.testing.assert_allclose(values, top, rtol=1e-4)
    assert main(["sharpness", str(out), "--process", "nope"]) == 2
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| gd |" in md and "figures/overview.png" in md
    assert (out / "report.html").stat().st_size > 500
    assert (out / "figures" / "overview.png").stat().st_size > 10_000
    assert main(["report", str(tmp_path)]) == 2


def test_resume_extends_a_finished_run_to_the_numbers_of_a_longer_one(tmp_path, capsys):
    cfg = _write(tmp_path, TINY)
    short, full = tmp_path / "short", tmp_path / "full"
    flags = ["--quiet", "--no-plot"]
    assert main(["run", "--config", str(cfg), "--steps", "20", "--out", str(short), *flags]) == 0
    assert main(["resume", str(short), "--steps", "10", *flags]) == 2  # never shortened
    assert main(["resume", str(short), "--steps", "40", *flags]) == 0
    assert main(["run", "--config", str(cfg), "--out", str(full), *flags]) == 0
    a, b = load_run(short), load_run(full)
    pd.testing.assert_frame_equal(a.metrics, b.metrics, check_exact=True)
    assert a.config["config"]["steps"] == 40 and a.config["extended"][0]["from_steps"] == 20
