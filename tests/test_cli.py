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
from helpers import markdown_tables

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
    # the rule records its display name and threshold beside its fields (2/lr = 2/0.5 = 4)
    assert rec["config"]["rule"] == {
        "kind": "gd",
        "lr": 0.5,
        "name": "GD",
        "threshold_formula": "2/lr",
        "threshold": 4.0,
    }
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
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert "lr=-1.0 is not accepted" in err and not (tmp_path / "x").exists()
    assert main(["resume", str(tmp_path)]) == 2


def test_bad_flag_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "toy", "--rule.lr", "abc"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["run", "no-such-preset"])
    assert exc.value.code == 2


def _exit_code(argv: list[str]) -> int:
    """main's exit code, whether returned or raised by the parser (tyro exits on its own)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_model_options_and_mini_batches_are_checked_before_any_work(tmp_path, capsys):
    out = tmp_path / "x"
    for args, needles in (
        (["--problem.model-options", "width", "64"], ["model_options.width=64", "d_model"]),
        (["--problem.model-options", "d_model", "0"], ["model_options.d_model=0", ">= 1"]),
        (["--batch-size", "1025"], ["batch_size=1025", "from 1 to n = 1024"]),
    ):
        assert _exit_code(["run", "transformer", *args, "--out", str(out)]) == 2
        err = " ".join(capsys.readouterr().err.replace("│", " ").split())
        assert all(n in err for n in needles), err
    assert _exit_code(["run", "gd-central-flow", "--batch-size", "8", "--out", str(out)]) == 2
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
    t_inf = int(man["message"].split("diverged at step ")[1].split(":")[0])
    assert t_inf > 100  # w_1 grows 1.5x a step: float32's loss overflows after ~100 steps
    probe = (t_inf - 1) // 10 * 10  # the last probe before it (probe_every 10)
    # every value printed names its step: the last finite loss, and the sharpness (exactly
    # h_1 = 25) at the last probe, not at the step the run stopped
    (line,) = [ln for ln in text.splitlines() if ln.strip().startswith("gd:")]
    assert f"at step {t_inf - 1};" in line
    assert f"sharpness 25 at step {probe} (its last probe), threshold 20" in line
    assert main(["resume", str(out)]) == 3
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    (table,) = markdown_tables((out / "report.md").read_text())
    row = dict(zip(table[0], table[1], strict=True))
    assert row["last step"] == str(t_inf - 1) and row["probed at step"] == str(probe)
    assert float(row["sharpness"]) == pytest.approx(25, rel=1e-5) and row["threshold"] == "20"


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

    from eoslab.cli import RunRequest

    proc = subprocess.run(
        [sys.executable, "-m", "eoslab.cli", "run", "--help"],
        env=dict(os.environ, PYTHONPATH=SRC, COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    for f in fields(RunRequest):
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
    assert main(["sharpness", str(out), "--k", "2", "--tol", "1e-5"]) == 0
    text = capsys.readouterr().out
    rows = [ln.split() for ln in text.splitlines() if ln.strip()[:1].isdigit()]
    values = np.array([float(r[1]) for r in rows])
    # independent: the dense Hessian of the same objective at the checkpointed point
    obj = build(from_dict(TINY)).objective
    w = np.asarray(load_run(out).point())
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


def test_a_run_recorded_before_rules_recorded_their_threshold_still_resumes(tmp_path):
    """A config.json from before rules recorded their display name and threshold (the rule's
    kind and fields only, as eoslab wrote it then) loads, extends to the numbers of a longer run
    and records the rule in full from then on."""
    cfg = _write(tmp_path, TINY)
    old, full = tmp_path / "old", tmp_path / "full"
    flags = ["--quiet", "--no-plot"]
    assert main(["run", "--config", str(cfg), "--steps", "20", "--out", str(old), *flags]) == 0
    record = json.loads((old / "config.json").read_text())
    record["config"]["rule"] = {"kind": "gd", "lr": 0.5}  # what the old code wrote
    (old / "config.json").write_text(json.dumps(record))
    assert main(["resume", str(old), "--steps", "40", *flags]) == 0
    assert main(["run", "--config", str(cfg), "--out", str(full), *flags]) == 0
    a, b = load_run(old), load_run(full)
    pd.testing.assert_frame_equal(a.metrics, b.metrics, check_exact=True)
    assert a.config["config"]["rule"]["threshold"] == 2 / 0.5


@pytest.mark.parametrize(
    "files",
    [
        {"notes.txt": "someone else's"},  # no config.json, no manifest.json
        {"config.json": '{"lr": 0.1}'},  # another program's config, no manifest
        {"config.json": '{"lr": 0.1}', "manifest.json": "{}"},  # no eoslab run record
        {"manifest.json": "{}"},
    ],
)
@pytest.mark.parametrize("command", ["plot", "report"])
def test_plot_and_report_refuse_a_directory_that_is_not_a_run(tmp_path, capsys, files, command):
    d = tmp_path / "theirs"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    before = sorted(tmp_path.rglob("*"))
    assert main([command, str(d)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eoslab: error: {d}: not a run directory") and err.count("\n") == 1
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no figures/
    assert main([command, str(d), "--out", str(tmp_path / "out")]) == 2
    assert main([command, str(tmp_path / "missing")]) == 2
    assert sorted(tmp_path.rglob("*")) == before
    capsys.readouterr()
    if command == "plot":  # one run among several is not enough
        run = tmp_path / "run"
        cfg = str(_write(tmp_path, TINY))
        assert main(["run", "--config", cfg, "--out", str(run), "--quiet", "--no-plot"]) == 0
        before = sorted(tmp_path.rglob("*"))
        assert main(["plot", str(run), str(d), "--out", str(tmp_path / "cmp.png")]) == 2
        assert sorted(tmp_path.rglob("*")) == before


def test_description_report_and_title_say_what_ran_after_overrides(tmp_path, capsys, monkeypatch):
    import matplotlib.pyplot as plt

    from eoslab.cli import _parse
    from eoslab.report import plots

    # quadratic-diverge says "lr * lambda_1 = 2.5 > 2: diverges": at lr 0.05 that is false
    preset = PRESETS["quadratic-diverge"]
    assert "diverges" in preset.description
    titles = []

    def keep_title(fig, path):
        titles.append(fig._suptitle.get_text())
        plt.close(fig)
        return Path(path)

    monkeypatch.setattr(plots, "save_figure", keep_title)
    out = tmp_path / "q"
    args = ["run", "quadratic-diverge", "--rule.lr", "0.05", "--steps", "20", "--out", str(out)]
    assert main([*args, "--quiet"]) == 0  # lr h_1 = 1.25 < 2: no divergence
    threshold = f"2/lr = {2 / 0.05:g}"  # 40
    desc = json.loads((out / "config.json").read_text())["config"]["description"]
    assert desc.startswith("preset quadratic-diverge with rule.lr = 0.05 (was 0.1): GD, lr = 0.05")
    assert f"threshold {threshold}" in desc
    assert "2.5" not in desc and "diverges" not in desc and "2/lr = 20" not in desc
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    head = md.split("## Config")[0]
    assert f"ran: GD, lr = 0.05 (threshold {threshold})" in head and "20 steps" in head
    assert "diverges" not in head and "lr = 0.1" not in head and "2/lr = 20" not in head
    assert titles and all("lr = 0.05" in t and "lr = 0.1" not in t for t in titles)
    # the preset unchanged, or only its budget: the preset's own words
    assert _parse(["run", "quadratic-diverge"])[0].experiment.description == preset.description
    steps_only = _parse(["run", "quadratic-diverge", "--steps", "50", "--probe-every", "5"])
    assert steps_only[0].experiment.description == preset.description
    # the user's own note is theirs
    mine = _parse(["run", "quadratic-diverge", "--rule.lr", "0.05", "--description", "mine"])
    assert mine[0].experiment.description == "mine"
    # a config file's description is replaced the same way
    cfg = _write(tmp_path, {**TINY, "description": "GD lr 0.5 on the toy net"})
    run, _ = _parse(["run", "--config", str(cfg), "--rule.lr", "0.25"])
    assert run.experiment.description.startswith(
        "config exp.json with rule.lr = 0.25 (was 0.5): GD, lr = 0.25 (threshold 2/lr = 8)"
    )


HELPS = [
    ["run"],
    *(["run", name] for name in PRESETS),
    ["resume"],
    ["plot"],
    ["report"],
    ["sharpness"],
    ["memory"],
    ["data"],
    ["demo"],
    ["reproduce"],
]


@pytest.mark.parametrize("argv", HELPS, ids=" ".join)
def test_help_shows_each_default_once_and_no_leaks(argv, capsys):
    import re

    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "type: ignore" not in text and "noqa" not in text
    assert "None" not in text and "(default: )" not in text  # a default says what it means
    for flag in re.split(r" (?=--?[a-z])", text):  # each flag's help: its default once at most
        assert flag.count("(default") <= 1, flag
    latex = re.findall(r"\\[A-Za-z|,{]|\$[^A-Z]|``", text)  # $EOSLAB_DATA is no math
    assert not latex, latex
    if argv[0] == "run":  # a preset's help lists the run's own options too
        for flag in ("--out DIR", "--config FILE", "--data-dir DIR", "--no-plot", "--quiet"):
            assert flag in text


def test_help_text_is_the_docstrings_first_paragraph_in_plain_unicode():
    from eoslab.dynamics.rules import GD
    from eoslab.helptext import plain, plain_docstrings

    assert plain(r"$w_{t+1} = w_t - \eta\nabla L(w_t)$; ``lr`` `x`") == "wₜ₊₁ = wₜ - η∇L(wₜ); lr x"
    adam = plain(r"$P_t = \sqrt{\hat\nu_t} + \epsilon$, $\tfrac12\sigma^2$")
    assert adam == "Pₜ = √(ν̂ₜ) + ε, ½σ²"
    assert plain(r"$\lambda_1(P^{-1}H)$ and $L_{\min}$") == "λ₁(P⁻¹H) and Lₘᵢₙ"
    doc = GD.__doc__
    with plain_docstrings([GD]):  # only while a command line is parsed
        assert GD.__doc__ == "Gradient descent, wₜ₊₁ = wₜ - η∇L(wₜ); stable while λ₁ < 2/η."
    assert GD.__doc__ == doc
