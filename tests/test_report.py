"""`eoslab.report`: the reproductions' tables and figures, drawn from the data they are given;
the package never imports the runner or the experiments."""

import ast
from pathlib import Path

import numpy as np
import pandas as pd

import eoslab.report as report
from eoslab.report import beyond_figures, paper_figures, tables

ROWS = [
    {
        "quantity": "a |ratio| - 1",
        "predicted": 1.0,
        "measured": 1.0123456789,
        "error": 0.0123456789,
        "tolerance": 0.1,
        "kind": "absolute",
        "ok": True,
    },
    {
        "quantity": "b",
        "predicted": 0.0,
        "measured": 2.5,
        "error": 2.5,
        "tolerance": 1.0,
        "kind": "at most",
        "ok": False,
    },
]


def _pngs_ok(paths):
    assert paths and all(Path(p).stat().st_size > 10_000 for p in paths)


def test_report_imports_neither_runner_nor_reproduce():
    root = Path(report.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                mod, names = "", [a.name for a in node.names]
            else:
                continue
            for target in [mod, *names, *(f"{mod}.{n}" for n in names)]:
                for banned in ("runner", "reproduce"):
                    assert banned not in target.split("."), f"{path.name} imports {target}"


def test_write_table_round_trips_and_marks_failures(tmp_path):
    md = tables.write_table(tmp_path / "t", ROWS, "a title")
    text = md.read_text()
    assert text.startswith("# a title\n")
    assert "| b | 0 | 2.5 | 2.50e+00 (at most) | 1.0e+00 | NO |" in text
    back = tables.read_table(tmp_path / "t")
    assert list(back.columns) == list(tables.COLUMNS)
    assert back["measured"].tolist() == [1.0123456789, 2.5]  # full precision in the CSV
    assert not list((tmp_path / "t").glob("*.tmp"))


def test_write_frame_is_plain_csv(tmp_path):
    df = pd.DataFrame({"step": [0, 5], "loss": [1.0, 0.5]})
    path = tables.write_frame(df, tmp_path / "sub" / "f.csv")
    pd.testing.assert_frame_equal(pd.read_csv(path), df)


def test_paper_figures_render(tmp_path):
    t = np.arange(12.0)
    sq = np.stack([14.7 - t, (-1.0) ** t * 3.0 / (1 + t)], axis=1)
    _pngs_ok([paper_figures.valley_figure(tmp_path / "valley.png", sq, sq[:10])])
    long = np.stack([0.5 + 0.1 * (-1.0) ** np.arange(81), 0.1 * 0.5 ** np.arange(81)], axis=1)
    norms = np.linalg.norm(long[:11], axis=1)
    _pngs_ok(
        [
            paper_figures.quadratic_figure(
                tmp_path / "quadratic.png", norms, list(norms), long, long[:11], 1.0, 0.4
            )
        ]
    )
    lrs = [0.04, 0.02]
    taus = np.linspace(0, 1, 20)
    algs = ("normalized_gd", "sqrt_loss_gd")
    _pngs_ok(
        [
            paper_figures.flow_tracking_figure(
                tmp_path / "flow.png",
                lrs,
                taus,
                {a: 2 - taus for a in algs},
                {(a, lr): (taus, 2 - taus + lr) for a in algs for lr in lrs},
                {a: [1e-3, 5e-4] for a in algs},
                {a: [25, 50] for a in algs},
                1.0,
            )
        ]
    )
    _pngs_ok(
        [
            paper_figures.mnist_flow_figure(
                tmp_path / "mnist.png",
                taus,
                40 - taus,
                taus,
                40 - taus,
                t,
                1 / (1 + t),
                lr=0.05,
                h=0.25,
            )
        ]
    )
    eig = np.stack([40 - t, 30 - t], axis=1)
    curves = {a: (t, 1 / (1 + t), eig, 40 + 0 * t) for a in algs}
    _pngs_ok([paper_figures.cifar_vgg_figure(tmp_path / "cifar.png", curves, source="x", n=16)])


def test_beyond_figures_render(tmp_path):
    s = np.arange(0, 100, 5)
    wide = pd.DataFrame(
        {
            "step": s,
            "pred_loss_cf": 1 / (1 + s),
            "loss_cf": 0.9 / (1 + s),
            "loss_gf": 0.8 / (1 + s),
            "sharpness_gd": 4 + 0 * s,
            "sharpness_cf": 3.9 + 0 * s,
            "sharpness_gf": 3 + 0.01 * s,
            "gd_gf": 0.01 * s,
            "gd_cf": 0.005 * s,
        }
    )
    loss = 1 / (1 + np.arange(100.0))
    paths = beyond_figures.central_flow_figures(tmp_path / "cf", wide, loss, loss, window=2, lr=0.5)
    assert [p.name for p in paths] == ["loss.png", "sharpness.png", "distance.png"]
    _pngs_ok(paths)
    df = pd.DataFrame(
        {
            "gd_step": s,
            "x": 0.1 * (-1.0) ** s,
            "delta": 0.1 + 0 * s,
            "loss_gd": 1 / (1 + s),
            "loss_dagger": 0.9 / (1 + s),
            "sharpness_gd": 4 + 0 * s,
            "sharpness_dagger": 4 + 0 * s,
        }
    )
    _pngs_ok(
        beyond_figures.self_stabilization_figures(
            tmp_path / "ss", df, df["x"] ** 2, df["loss_gd"], lr=0.5
        )
    )
    frame = pd.DataFrame({"step": s, "sharpness": 3 + 0.01 * s, "threshold": 4 + 0 * s})
    paths = beyond_figures.adam_eos_figures(tmp_path / "a", {"adam": frame, "heavy_ball": frame})
    assert [p.name for p in paths] == ["adam_sharpness.png", "heavy_ball_sharpness.png"]
    _pngs_ok(paths)
