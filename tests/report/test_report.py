"""`eoslab.report`: the reproductions' tables and figures, drawn from the data they are given;
the package never imports the runner or the experiments."""

import ast
import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

import eoslab.report as report
from eoslab.cli import main
from eoslab.dynamics.rules import GD, Adam, HeavyBall, Nesterov, NormalizedGD, RMSProp
from eoslab.report import beyond_figures, paper_figures, plots, run_info, tables
from helpers import markdown_tables

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


def test_markdown_tables_escape_their_cells(tmp_path):
    # flow-tracking's quantity holds pipes: unescaped, Markdown split the row and the "ok"
    # column showed the error; a backslash must survive too
    rows = [
        dict(ROWS[0], quantity="normalized_gd |Phi(x_T) - X(1)|, lr=0.04"),
        dict(ROWS[1], quantity="a \\ b | c\\|d"),
    ]
    md = tables.write_table(tmp_path / "t", rows, "a title").read_text()
    (table,) = markdown_tables(md)
    assert table[0] == ["quantity", "predicted", "measured", "error", "tolerance", "ok"]
    assert [len(r) for r in table] == [6, 6, 6]
    assert [r[0] for r in table[1:]] == [r["quantity"] for r in rows]
    assert [r[5] for r in table[1:]] == ["yes", "NO"]
    assert [float(r[4]) for r in table[1:]] == [0.1, 1.0]
    assert tables.markdown_cell("two\nlines") == "two lines"


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
    paths = beyond_figures.central_flow_figures(
        tmp_path / "cf", wide, loss, loss, window=2, rule=GD(0.5).describe()
    )
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
            tmp_path / "ss", df, df["x"] ** 2, df["loss_gd"], rule=GD(0.5).describe()
        )
    )
    frame = pd.DataFrame({"step": s, "sharpness": 3 + 0.01 * s, "threshold": 4 + 0 * s})
    records = {"adam": Adam(0.001).describe(), "heavy_ball": HeavyBall(0.1).describe()}
    paths = beyond_figures.adam_eos_figures(
        tmp_path / "a", {"adam": frame, "heavy_ball": frame}, records
    )
    assert [p.name for p in paths] == ["adam_sharpness.png", "heavy_ball_sharpness.png"]
    _pngs_ok(paths)


# ------------------------------------------------------------------ run figures (plot_runs)
# Run directories are written here by hand in the store's layout (config.json, manifest.json,
# metrics/part-*.parquet), so every number a figure shows is known independently of the runner.
MODEL = {"kind": "model", "model": "fc-tanh", "dataset": "mnist1d", "n": 500, "loss": "mse_half"}


def _fake_run(
    path,
    *,
    rule,
    steps,
    sharp=None,
    err=None,
    acc=None,
    loss=None,
    status="completed",
    stop=None,
    problem=MODEL,
    process=None,
    probe_every=10,
):
    """A run directory: the loss at every step, probes (sharpness, bound, accuracy) at ``steps``
    of the probe columns; the threshold from the rule's formula."""
    path.mkdir(parents=True)
    kind, lr = rule["kind"], rule["lr"]
    thr = {
        "gd": 2 / lr,
        "heavy_ball": (2 + 2 * rule.get("beta", 0.9)) / lr,
        "adam": (2 + 2 * rule.get("beta1", 0.9)) / ((1 - rule.get("beta1", 0.9)) * lr),
    }[kind]
    last = int(max(steps)) if loss is None else len(loss) - 1
    every = np.arange(last + 1)
    df = pd.DataFrame(
        {
            "step": every,
            "process": process or kind,
            "loss": np.asarray(loss, float) if loss is not None else 1.0 / (1.0 + every),
            "lr_eff": lr,
            "threshold": thr,
        }
    )
    for col, vals in (("sharpness", sharp), ("sharpness_error", err), ("accuracy", acc)):
        df[col] = np.nan
        if vals is not None:
            df.loc[df["step"].isin(steps), col] = vals
    df["sharpness_matvecs"] = pd.array(
        [3 if s in set(steps) else pd.NA for s in every], dtype="Int64"
    )
    if kind == "adam":
        df["eff_sharpness"] = df["sharpness"]
    (path / "metrics").mkdir()
    df.to_parquet(path / "metrics" / f"part-000000000-{last:09d}.parquet")
    cfg = {"problem": problem, "rule": rule, "steps": last, "probe_every": probe_every}
    (path / "config.json").write_text(json.dumps({"config": cfg, "eoslab_version": "0"}))
    msg = f"diverged at step {stop}: {kind}: the loss became inf; 3 rows kept" if stop else "ok"
    manifest = {"status": status, "step": stop if stop is not None else last, "message": msg}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture
def figures(monkeypatch):
    """The figures a report function draws, kept open (their saving is skipped)."""
    drawn = []

    def keep(fig, path):
        drawn.append(fig)
        return Path(path)

    monkeypatch.setattr(plots, "save_figure", keep)
    monkeypatch.setattr(paper_figures, "save_figure", keep)
    monkeypatch.setattr(beyond_figures, "save_figure", keep)
    yield drawn
    for fig in drawn:
        matplotlib.pyplot.close(fig)


def _axes(fig):
    return {ax.get_title(): ax for ax in fig.axes}


def _legend(ax):
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg else []


def _sharp_axes(fig):
    return next(ax for t, ax in _axes(fig).items() if "at the probes" in t)


def test_run_figure_labels_title_threshold_band_markers_accuracy(tmp_path, figures):
    steps = [0, 10, 20, 30]
    sharp, err = np.array([6.5, 9.0, 14.0, 19.5]), np.array([0.01, 0.02, 0.005, 0.03])
    acc = np.array([0.1, 0.4, 0.55, 0.7])
    run = _fake_run(
        tmp_path / "a", rule=GD(0.1).describe(), steps=steps, sharp=sharp, err=err, acc=acc
    )
    plots.plot_runs([run], tmp_path / "o.png")
    (fig,) = figures
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
    title = fig._suptitle.get_text()
    for word in ("fc-tanh", "mnist1d", "n = 500", "MSE/2", "GD", "lr = 0.1"):
        assert word in title
    ax = _sharp_axes(fig)
    assert f"2/lr = {2 / 0.1:.0f}" in _legend(ax)  # 2/lr = 20
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    verts = band.get_paths()[0].vertices
    for s, v, e in zip(steps, sharp, err, strict=True):  # the band spans lambda_1 -+ bound
        ys = verts[np.isclose(verts[:, 0], s), 1]
        np.testing.assert_allclose([ys.min(), ys.max()], [v - e, v + e], rtol=1e-12)
    probes = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(steps)]
    assert probes and all(ln.get_marker() not in ("None", "", None) for ln in probes)
    np.testing.assert_allclose(probes[0].get_ydata(), sharp)
    acc_ax = _axes(fig)["training accuracy"]
    (line,) = acc_ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), 100 * acc)
    assert line.get_marker() not in ("None", "")


def test_run_figure_adaptive_and_heavy_ball_thresholds(tmp_path, figures):
    adam = _fake_run(
        tmp_path / "adam",
        rule=Adam(0.01, 0.9).describe(),
        steps=[0, 10],
        sharp=[50.0, 300.0],
    )
    hb = _fake_run(
        tmp_path / "hb",
        rule=HeavyBall(0.05, 0.5).describe(),
        steps=[0, 10],
        sharp=[5.0, 20.0],
    )
    plots.plot_runs([adam], tmp_path / "a.png")
    plots.plot_runs([hb], tmp_path / "h.png")
    texts = _legend(_sharp_axes(figures[0]))
    adam_thr = f"(2+2β1)/((1-β1) lr) = {(2 + 1.8) / (0.1 * 0.01):.0f}"  # 3800
    assert f"{adam_thr} (above the axis)" in texts  # > 5x the curve: off the axis, said so
    assert "P^{-1}H" in _sharp_axes(figures[0]).get_ylabel()
    assert f"(2+2β)/lr = {(2 + 1.0) / 0.05:.0f}" in _legend(_sharp_axes(figures[1]))  # 60


def test_run_figure_marks_divergence_and_shows_one_probe(tmp_path, figures):
    loss = [40.0, 4e3, 4e5, np.inf]
    run = _fake_run(
        tmp_path / "d",
        rule=GD(0.1).describe(),
        steps=[0],
        sharp=[25.0],
        err=[1e-3],
        loss=loss,
        status="diverged",
        stop=3,
        problem={"kind": "quadratic", "dim": 10, "top": 25.0, "bottom": 1.0},
    )
    plots.plot_runs([run], tmp_path / "d.png")
    (fig,) = figures
    assert "diverged at step 3" in fig._suptitle.get_text()
    for ax in fig.axes:  # a vertical line at the step the run stopped, in every panel
        assert any(list(ln.get_xdata()) == [3, 3] for ln in ax.get_lines()), ax.get_title()
    assert "diverged at step 3" in _legend(_axes(fig)["training loss"])
    ax = _sharp_axes(fig)
    one = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [0]]
    assert one and one[0].get_marker() not in ("None", "") and one[0].get_markersize() >= 4
    lo, hi = ax.get_xlim()
    assert lo < 0 < hi and hi - lo >= 2  # the probe is inside a readable axis
    loss_line = _axes(fig)["training loss"].get_lines()[0]
    np.testing.assert_allclose(loss_line.get_ydata(), loss[:3])  # the inf is left out


def test_compare_writes_beside_the_runs_never_inside(tmp_path, capsys):
    a = _fake_run(
        tmp_path / "runs" / "a",
        rule=GD(0.1).describe(),
        steps=[0, 10],
        sharp=[5.0, 6.0],
        err=[0.1, 0.1],
    )
    b = _fake_run(
        tmp_path / "runs" / "b",
        rule=GD(0.05).describe(),
        steps=[0, 10],
        sharp=[5.0, 5.5],
        err=[0.1, 0.1],
    )
    assert main(["plot", str(a), str(b)]) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1]).resolve()
    assert out.is_file() and out.suffix == ".png"
    for run in (a, b):
        assert not out.is_relative_to(run.resolve())
    assert out.parent.parent == a.resolve().parent  # a new directory beside the runs
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a", "b", out.parent.name]
    assert main(["plot", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.png").is_file()
    assert main(["plot", str(a), str(b), "--out", str(a / "figures")]) == 2
    assert not (a / "figures").exists()


def test_threshold_labels_are_the_recorded_formula_and_value():
    def label(rule):
        rec = run_info.rule_record(rule.describe())
        return run_info.threshold_label(rec.threshold_formula, rec.threshold)

    assert label(GD(0.1)) == "2/lr = 20"
    assert label(RMSProp(0.004)) == "2/lr = 500"
    assert label(Nesterov(0.1, 0.9)) == "(2+2β)/((1+2β) lr) = 13.57"  # 3.8 / 0.28
    assert label(NormalizedGD(0.1)) == "2/lr_eff = 2|∇L|/lr"  # changes every step: no value
    assert run_info.threshold_label(None, 7.0) == "threshold = 7"


def test_a_rule_recorded_without_name_or_threshold_falls_back_to_its_kind(tmp_path, figures):
    """config.json written before rules recorded their display name and threshold (kind and
    fields only): the figure names the rule by its kind and the threshold by its value."""
    run = _fake_run(
        tmp_path / "old", rule={"kind": "gd", "lr": 0.1}, steps=[0, 10], sharp=[5.0, 15.0]
    )
    info = run_info.read_run_info(run)
    assert info.rule.text == "gd, lr = 0.1" and info.rule.threshold_formula is None
    plots.plot_runs([run], tmp_path / "o.png")
    (fig,) = figures
    assert "gd, lr = 0.1" in fig._suptitle.get_text()
    assert "threshold = 20" in _legend(_sharp_axes(fig))  # the value from the metrics
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert run_info.describe_config(cfg, budget=False).startswith("gd, lr = 0.1; ")


def test_valley_figure_start_inside_and_round_colorbar(tmp_path, figures):
    t = np.arange(12.0)
    sq = np.stack([14.7 - t, (-1.0) ** t * 3.0 / (1 + t)], axis=1)
    paper_figures.valley_figure(tmp_path / "v.png", sq, sq[:10] * [1.0, -1.0])
    (fig,) = figures
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_title()]
    for ax in panels:
        box = ax.get_window_extent(renderer)
        (start,) = [t for t in ax.texts if t.get_text() == "start"]
        sb = start.get_window_extent(renderer)
        assert box.x0 <= sb.x0 and sb.x1 <= box.x1 and box.y0 <= sb.y0 and sb.y1 <= box.y1
        assert ax.get_xlabel()
    cbar = next(ax for ax in fig.axes if not ax.get_title())
    ticks = cbar.get_yticks()
    ticks = ticks[(ticks >= 1e-3) & (ticks <= 1e2)]
    np.testing.assert_allclose(np.log10(ticks), np.round(np.log10(ticks)))  # one per decade
    assert len(ticks) == 6


def test_quadratic_figure_paper_on_top_no_denormals_legends_off_data(tmp_path, figures):
    k = np.arange(81)
    long = np.stack([0.5 + 0.1 * (-1.0) ** k, 0.5**k], axis=1)  # v2 part: 0.5^80 ~ 8e-25
    norms = np.linalg.norm(long[:11], axis=1)
    paper_figures.quadratic_figure(
        tmp_path / "q.png", norms, list(norms), long, long[:11], 1.0, 0.4
    )
    (fig,) = figures
    ax_norm, ax_align, ax_sets = fig.axes
    (paper,) = [ln for ln in ax_norm.get_lines() if ln.get_label().startswith("paper")]
    assert all(paper.get_zorder() > c.get_zorder() for c in ax_norm.collections)
    floor = np.finfo(np.float64).eps * np.max(np.linalg.norm(long, axis=1))
    v2 = next(ln for ln in ax_align.get_lines() if "v_2" in ln.get_label())
    y = np.asarray(v2.get_ydata())
    assert y.min() > floor and y.min() > np.finfo(np.float32).tiny
    np.testing.assert_allclose(y, 0.5 ** np.arange(y.size))  # drawn down to the floor only
    assert 0.5 ** (y.size) <= floor
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        leg = ax.get_legend().get_window_extent(renderer)
        assert not leg.overlaps(ax.get_window_extent(renderer)), ax.get_title()


def test_beyond_thresholds_name_their_value(tmp_path, figures):
    s = np.arange(0, 50, 10)
    adam = pd.DataFrame({"step": s, "sharpness": 3000 + s, "threshold": 3.8 / (0.1 * 0.001)})
    hb = pd.DataFrame({"step": s, "sharpness": 30 + s, "threshold": 3.8 / 0.1})
    records = {"adam": Adam(0.001, 0.9).describe(), "heavy_ball": HeavyBall(0.1, 0.9).describe()}
    beyond_figures.adam_eos_figures(tmp_path, {"adam": adam, "heavy_ball": hb}, records)
    a, h = (_legend(fig.axes[0]) for fig in figures)
    assert "(2+2β1)/((1-β1) lr) = 38000" in a
    assert "(2+2β)/lr = 38" in h
    wide = pd.DataFrame({c: np.ones(5) for c in ("pred_loss_cf", "loss_cf", "loss_gf")})
    wide = wide.assign(step=s, sharpness_gd=4.0, sharpness_cf=4.0, sharpness_gf=3.0)
    wide = wide.assign(gd_gf=0.1, gd_cf=0.1)
    gd = GD(0.5).describe()
    beyond_figures.central_flow_figures(tmp_path, wide, np.ones(50), np.ones(50), window=2, rule=gd)
    assert "2/lr = 4" in _legend(figures[3].axes[0])  # sharpness.png
    for fig in figures:
        assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)


def test_compare_figure_labels_each_threshold(tmp_path, figures):
    runs = [
        _fake_run(tmp_path / name, rule=GD(lr).describe(), steps=[0, 10], sharp=[5.0, 15.0])
        for name, lr in (("a", 0.1), ("b", 0.05), ("c", 0.1))
    ]
    plots.plot_runs(runs, tmp_path / "cmp.png")
    (fig,) = figures
    texts = _legend(_sharp_axes(fig))
    assert f"a, c: 2/lr = {2 / 0.1:.0f}" in texts and f"b: 2/lr = {2 / 0.05:.0f}" in texts
    levels = [
        t
        for t in _legend(
            _axes(fig)["effective LR $\\times$ sharpness against the threshold's level"]
        )
        if "threshold" in t
    ]
    assert levels == ["lr_eff $\\times$ threshold = 2"]  # 0.1 * 20 = 0.05 * 40: one line


# ------------------------------------------------------------------ lockstep runs' figures
def _lockstep_run(path, cfg, rows):
    """A run directory of several processes in the store's layout, from the rows given."""
    (path / "metrics").mkdir(parents=True)
    last = int(rows["step"].max())
    rows.to_parquet(path / "metrics" / f"part-000000000-{last:09d}.parquet")
    (path / "config.json").write_text(json.dumps({"config": cfg, "eoslab_version": "0"}))
    (path / "manifest.json").write_text(json.dumps({"status": "completed", "step": last}))
    return path


def _line(ax, label):
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


def test_limiting_flow_figure_readable_sharpness_and_distances_against_tau(tmp_path, figures):
    # ngd-limiting-flow's shape: normalized GD's 2/lr_eff is 302.7 at step 0 (a large gradient)
    # and ~10 after, changing every step; lambda_1 ~ 8-10 for both processes
    lr, steps, every = 0.02, np.arange(501), 50
    probes = steps[steps % every == 0]
    lam = {"ngd": 10.5 - 0.004 * probes, "flow": 9.9 - 0.004 * probes}
    lam["ngd"][0] = 10.56
    thr = 10.8 - 0.003 * steps + 0.7 * (steps % 2)  # the threshold at odd steps is never probed
    thr[0] = 302.7
    dist = np.where(probes == 0, 0.42, 0.011 + 1e-6 * probes)
    phi = np.where(probes == 0, 0.0, 9e-4 + 1e-7 * probes)
    at = np.isin(steps, probes)
    ngd = pd.DataFrame({"step": steps, "process": "normalized_gd", "loss": 5e-4, "threshold": thr})
    flow = pd.DataFrame({"step": steps, "process": "flow", "loss": 1e-16, "threshold": np.nan})
    for df, name in ((ngd, "ngd"), (flow, "flow")):
        df["sharpness"] = np.nan
        df.loc[at, "sharpness"] = lam[name]
    ngd["dist_flow"], ngd["phi_dist_flow"], flow["dist_normalized_gd"] = np.nan, np.nan, np.nan
    ngd.loc[at, "dist_flow"], ngd.loc[at, "phi_dist_flow"] = dist, phi
    flow.loc[at, "dist_normalized_gd"] = dist
    flow["tau"] = np.where(at, lr**2 * steps, np.nan)
    cfg = {
        "problem": {"kind": "valley", "x0": 2.0, "y0": 0.3, "extra": 1},
        "rule": NormalizedGD(lr).describe(),
        "compare": {"flow": {"kind": "ProjectedLimitingFlow", "algorithm": "normalized_gd"}},
        "steps": 500,
        "probe_every": every,
    }
    run = _lockstep_run(tmp_path / "ngd", cfg, pd.concat([ngd, flow]).sort_values("step"))
    plots.plot_runs([run], tmp_path / "o.png")
    (fig,) = figures
    assert "normalized GD, lr = 0.02 beside flow (limiting flow of normalized GD)" in (
        fig._suptitle.get_text()
    )
    ax = _sharp_axes(fig)
    lo, hi = ax.get_ylim()
    assert lo <= min(lam["flow"].min(), lam["ngd"].min()) and hi >= thr[probes[1:]].max()
    assert hi < 12  # 302.7 is cut: lambda_1 and its threshold on a readable scale
    (label,) = [t for t in _legend(ax) if "2/lr_eff" in t]
    assert label.endswith("2/lr_eff = 2|∇L|/lr (302.7 at step 0: above the axis)")
    x, y = _line(ax, label)  # drawn at the probes only, the cut value left out
    np.testing.assert_array_equal(x, probes)
    np.testing.assert_allclose(y[1:], thr[probes[1:]])
    assert np.isnan(y[0])
    for name, words in (("normalized_gd", "normalized GD, lr = 0.02"), ("flow", None)):
        words = words or "limiting flow of normalized GD"
        _, y = _line(ax, f"{name} ({words}): $\\lambda_1$ at the probes")
        np.testing.assert_allclose(y, lam["ngd" if name == "normalized_gd" else "flow"])
    dist_ax = _axes(fig)["distances between the processes"]
    assert "τ" in dist_ax.get_xlabel() and dist_ax.get_yscale() == "log"
    x, y = _line(dist_ax, "|normalized_gd − flow|")
    np.testing.assert_allclose(x, lr**2 * probes)  # tau = lr^2 * step
    np.testing.assert_allclose(y, dist)
    x, y = _line(dist_ax, "|Φ(normalized_gd) − flow|")  # the 0 at step 0 has no log
    np.testing.assert_allclose(x, lr**2 * probes[1:])
    np.testing.assert_allclose(y, phi[1:])
    assert any(t.startswith(f"lr = {lr:g}") for t in _legend(dist_ax))


def test_central_flow_figure_names_processes_predicted_loss_and_distances(tmp_path, figures):
    steps, lr = np.arange(200), 0.1
    probes = steps[steps % 10 == 0]
    gd_loss = (1 + 0.2 * (-1.0) ** steps) / (1 + steps)  # oscillating, as GD at the edge
    rows = []
    for name, loss in (("gd", gd_loss), ("gf", 0.9 / (1 + steps)), ("cf", 0.95 / (1 + steps))):
        df = pd.DataFrame({"step": steps, "process": name, "loss": loss, "sharpness": np.nan})
        df.loc[df["step"].isin(probes), "sharpness"] = 20.0
        df["threshold"] = 2 / lr if name != "gf" else np.nan
        for other in ("gd", "gf", "cf"):
            if other != name:
                pair = sorted((name, other))
                df[f"dist_{other}"] = np.where(
                    np.isin(steps, probes), 1e-3 * (1 + len(pair[0]) + 2 * len(pair[1])), np.nan
                )
                df.loc[df["step"] > 0, f"dist_{other}"] *= 1 + steps[steps > 0] / 100
        if name == "cf":
            df["pred_loss"] = 1.0 / (1 + steps)
        rows.append(df)
    cfg = {
        "problem": MODEL,
        "rule": GD(lr).describe(),
        "compare": {"gf": {"kind": "GradientFlow"}, "cf": {"kind": "CentralFlow"}},
        "steps": 199,
        "probe_every": 10,
    }
    frame = pd.concat(rows).sort_values("step", kind="stable")
    run = _lockstep_run(tmp_path / "cf", cfg, frame)
    plots.plot_runs([run], tmp_path / "o.png")
    (fig,) = figures
    title = fig._suptitle.get_text()
    assert "GD, lr = 0.1 beside gf (gradient flow) and cf (central flow)" in title
    loss_ax = _axes(fig)["training loss"]
    for label in ("gd (GD, lr = 0.1)", "gf (gradient flow)", "cf (central flow)"):
        assert label in _legend(loss_ax)
        assert f"{label}: $\\lambda_1$ at the probes" in _legend(_sharp_axes(fig))
    x, y = _line(loss_ax, "cf (central flow): predicted time-average of gd's loss")
    np.testing.assert_allclose(y, 1.0 / (1 + x))
    x, y = _line(loss_ax, "gd (GD, lr = 0.1): loss averaged over 51 steps")
    np.testing.assert_allclose(y, np.convolve(gd_loss, np.ones(51) / 51, mode="valid"))
    np.testing.assert_array_equal(x, steps[25:-25])
    dist_ax = _axes(fig)["distances between the processes"]
    assert _legend(dist_ax) == ["|gd − gf|", "|gd − cf|", "|gf − cf|"]
    for a, b in (("gd", "gf"), ("gd", "cf"), ("gf", "cf")):
        x, y = _line(dist_ax, f"|{a} − {b}|")
        base = 1e-3 * (1 + len(min(a, b)) + 2 * len(max(a, b)))
        np.testing.assert_allclose(y, base * (1 + x / 100))
        np.testing.assert_array_equal(x, probes)
