"""Figures of runs (matplotlib, PNG): loss, accuracy, sharpness against its threshold,
lr x sharpness, cost.

Reads run directories only (``config.json``, ``manifest.json`` and the Parquet parts, by
`eoslab.rundir`); it never imports the runner. Several directories are overlaid, one colour per
run (per process).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import EoslabError
from ..rundir import read_config, read_metrics
from .compare import draw_distances, draw_predicted_loss, has_distances
from .output import pyplot, save_figure
from .run_info import read_run_info, threshold_label
from .series import Series, by_process, floats, probed

__all__ = ["plot_runs", "run_label", "write_run_figures"]

_DIVERGED = "tab:red"


def run_label(path: str | Path, process: str | None = None) -> str:
    """A short label: the directory, and the rule with its hyperparameters (or the process)."""
    path = Path(path)
    try:
        cfg = read_config(path).get("config", {})
        rule = dict(cfg.get("rule", {}))
        if process is not None and process != rule.get("kind"):
            return f"{path.name}: {process}"
        if "rule" not in cfg:  # a run made in Python names its processes
            return path.name
        name = rule.pop("kind", rule.pop("name", "?"))
        hyper = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in rule.items()
            if k in ("lr", "beta", "beta1")
        )
        return f"{path.name}: {name} {hyper}".strip()
    except (EoslabError, AttributeError):
        return path.name


def _series(dirs: Sequence[Path], colors: list[str]) -> list[Series]:
    """One series per process of each run, named by what it is (``cf (central flow)``, the
    optimizer with its hyperparameters); a lone series is unlabelled (the title names it)."""
    out = []
    for d in dirs:
        info = read_run_info(d)
        parts = by_process(read_metrics(d))
        for proc, part in parts:
            is_opt = proc is None or proc == info.rule.kind or len(parts) == 1
            c = colors[len(out) % len(colors)]
            label = info.process_label(proc or info.rule.kind or "?")
            if len(dirs) > 1:
                label = f"{d.name}: {label}"
            out.append(Series(proc, label, c, part, info, is_opt))
    if len(out) == 1:
        out[0].label = ""
    return out


def _named(s: Series, what: str) -> str:
    return f"{s.label}: {what}" if s.label else what


def _marker_size(n: int) -> float:
    return 5.0 if n <= 40 else 3.5 if n <= 150 else 2.0


def _constant(values: np.ndarray) -> float | None:
    """The value of an (almost) constant series, else None."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return None
    lo, hi = float(v.min()), float(v.max())
    return lo if hi - lo <= 1e-6 * max(abs(hi), 1e-30) else None


def _curvature(df: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The column compared with the threshold (preconditioned sharpness for adaptive rules)."""
    eff = probed(df, "eff_sharpness")
    return ("eff_sharpness", eff) if len(eff) else ("sharpness", probed(df, "sharpness"))


def _draw_loss(ax, s: Series) -> None:
    loss = floats(s.df["loss"]) if "loss" in s.df else np.array([])
    steps = s.df["step"].to_numpy()
    ok = np.isfinite(loss) & (loss > 0)
    few = ok.sum() <= 30
    ax.plot(
        steps[ok],
        loss[ok],
        color=s.color,
        lw=1.2,
        marker="o" if few else None,
        ms=4,
        label=s.label or None,
    )


def _draw_divergence(axes, series: list[Series]) -> None:
    """A vertical line at the step each diverged run stopped, and its last finite loss."""
    for s in series:
        if not (s.info.diverged and s.is_optimizer):
            continue
        step = s.info.stop_step
        if step is None and len(s.df):
            step = int(s.df["step"].iloc[-1])
        if step is None:
            continue
        who = f"{s.info.path.name} " if len(series) > 1 else ""
        for name, ax in axes.items():
            label = f"{who}diverged at step {step}" if name == "loss" else None
            ax.axvline(step, color=_DIVERGED, ls=":", lw=1.5, label=label)
            ax.text(
                step,
                0.5,
                f"{who}diverged ",
                transform=ax.get_xaxis_transform(),
                rotation=90,
                ha="right",
                va="center",
                color=_DIVERGED,
                fontsize=8,
            )
        loss = floats(s.df["loss"]) if "loss" in s.df else np.array([])
        ok = np.isfinite(loss) & (loss > 0)
        if ok.any():
            i = np.flatnonzero(ok)[-1]
            axes["loss"].plot(
                s.df["step"].to_numpy()[i], loss[i], "X", color=_DIVERGED, ms=9, zorder=5
            )


def _draw_sharpness(ax, s: Series, band_label: str | None) -> tuple[float, float, bool]:
    """Probed (preconditioned) sharpness as markers, with its certified band (labelled
    ``band_label``); returns its range and whether a band was drawn."""
    col, pr = _curvature(s.df)
    if not len(pr):
        return math.nan, math.nan, False
    x, y = pr["step"].to_numpy(), floats(pr[col])
    banded = False
    name = r"$\lambda_1(P^{-1}H)$" if col == "eff_sharpness" else r"$\lambda_1$"
    ax.plot(
        x,
        y,
        color=s.color,
        lw=0.8,
        marker="o",
        ms=_marker_size(len(x)),
        label=_named(s, f"{name} at the probes"),
    )
    if col == "sharpness" and "sharpness_error" in pr:
        err = floats(pr["sharpness_error"])
        ok = np.isfinite(err)
        if ok.any():
            ax.fill_between(
                x[ok],
                y[ok] - err[ok],
                y[ok] + err[ok],
                color=s.color,
                alpha=0.3,
                lw=0,
                label=band_label,
            )
            banded = True
            if ok.sum() == 1:  # a band of one probe has no width: an error bar
                ax.errorbar(x[ok], y[ok], yerr=err[ok], color=s.color, capsize=4, lw=1)
    return float(np.nanmin(y)), float(np.nanmax(y)), banded


def _band_label(series: list[Series]) -> str | None:
    """One legend entry for the certified bands: the largest bound, and whether the bands are
    thinner than the lines (below 0.5% of the values)."""
    worst, scale, found = 0.0, 0.0, False
    for s in series:
        col, pr = _curvature(s.df)
        if col != "sharpness" or "sharpness_error" not in pr or not len(pr):
            continue
        err = floats(pr["sharpness_error"])
        if np.isfinite(err).any():
            found = True
            worst = max(worst, float(np.nanmax(err)))
            scale = max(scale, float(np.nanmax(np.abs(floats(pr[col])))))
    if not found:
        return None
    thin = " (thinner than the line)" if worst < 0.005 * scale else ""
    owner = "" if len(series) == 1 else ", every series"
    most = " at most" if worst > 0 else ""
    return f"certified bound{owner}: ±{worst:.2g}{most}{thin}"


def _threshold_groups(series: list[Series]) -> list[tuple[str, str | None, pd.DataFrame]]:
    """Threshold lines to draw: ``(label, colour or None for black, rows)``; one line for the
    runs that share a constant threshold. A threshold is drawn at the steps its curvature was
    probed (normalized GD's 2/lr_eff changes every step: between probes it has no curve to meet)."""
    groups: dict[float, list[Series]] = {}
    varying = []
    for s in series:
        thr = probed(s.df, "threshold")
        at_probes = thr[thr["step"].isin(_curvature(s.df)[1]["step"])]
        thr = at_probes if len(at_probes) else thr
        if not len(thr):
            continue
        value = _constant(floats(thr["threshold"]))
        if value is None:
            varying.append((s, thr))
        else:
            groups.setdefault(float(f"{value:.6g}"), []).append(s)
    lines: list[tuple[str, str | None, pd.DataFrame]] = []
    many = len(groups) > 1
    for value, members in groups.items():
        owners = [m for m in members if m.is_optimizer] or members[:1]
        formulas = {m.info.rule.threshold_formula for m in owners}
        label = threshold_label(formulas.pop() if len(formulas) == 1 else None, value)
        steps = pd.concat([probed(m.df, "threshold") for m in members])
        if many:  # several thresholds: each in its first run's colour, named after its runs
            owner = next((m for m in members if m.is_optimizer), members[0])
            names = ", ".join(dict.fromkeys(m.info.path.name for m in members))
            lines.append((f"{names}: {label}", owner.color, steps))
        else:
            lines.append((label, None, steps))
    for s, thr in varying:
        color = s.color if s.label else None  # a lone series: its threshold in black
        lines.append((_named(s, threshold_label(s.info.rule.threshold_formula, None)), color, thr))
    return lines


def _draw_thresholds(ax, series: list[Series], lo: float, hi: float) -> None:
    """The thresholds, dashed and labelled with their values. The axis spans the curves
    (``lo`` to ``hi``) and the thresholds' values up to 5x ``hi``: a threshold above that at
    every probe is left off the axis, one above it at a few probes (normalized GD's 2/lr_eff at
    step 0, while the gradient is large) is cut there; its legend entry says which."""
    bottom, top, cut = lo, hi, False
    for label, color, rows in _threshold_groups(series):
        rows = rows.sort_values("step")
        x, y = rows["step"].to_numpy(), floats(rows["threshold"])
        c = color or "black"
        finite = np.isfinite(y)
        inside = finite & (y <= 5 * hi) if math.isfinite(hi) and hi > 0 else finite
        if inside.any():
            bottom, top = min(bottom, float(y[inside].min())), max(top, float(y[inside].max()))
        out = finite & ~inside
        if out.any():
            cut = True
            if not inside.any():
                label += " (above the axis)"
            elif out.sum() == 1:
                label += f" ({float(y[out][0]):.4g} at step {int(x[out][0])}: above the axis)"
            else:
                label += f" (up to {float(y[out].max()):.4g}: above the axis at {out.sum()} probes)"
        if len(x) == 1 or _constant(y) is not None:
            ax.axhline(float(np.nanmedian(y)), color=c, ls="--", lw=1.3, label=label)
            continue
        # a cut value breaks the line, and an arrow at the top edge says where it went
        ax.plot(x, np.where(out, np.nan, y), color=c, ls="--", lw=1.3, label=label)
        if inside.any():
            for xi, yi in list(zip(x[out], y[out], strict=True))[:3]:
                ax.annotate(
                    f"↑ {yi:.4g}",
                    (xi, 1.0),
                    xycoords=("data", "axes fraction"),
                    xytext=(2, -12),
                    textcoords="offset points",
                    color=c,
                    fontsize=8,
                )
    if cut and math.isfinite(bottom) and math.isfinite(top):  # far values would flatten curves
        pad = 0.06 * (top - bottom) if top > bottom else 0.06 * abs(top) or 1.0
        ax.set_ylim(bottom - pad, top + pad)


def _draw_product(ax, s: Series) -> float | None:
    """lr_eff x the curvature at the probes; returns the threshold's level if it is constant."""
    col, pr = _curvature(s.df)
    if not len(pr) or "lr_eff" not in pr:
        return None
    x = pr["step"].to_numpy()
    lr = floats(pr["lr_eff"])
    ax.plot(
        x,
        lr * floats(pr[col]),
        color=s.color,
        lw=0.8,
        marker="o",
        ms=_marker_size(len(x)),
        label=s.label or None,
    )
    level = lr * floats(pr["threshold"]) if "threshold" in pr else np.array([np.nan])
    return _constant(level)


def _draw_levels(ax, levels: dict[float, list[str]]) -> None:
    """The threshold's level on the lr x sharpness panel: one line per distinct value."""
    for value, cols in levels.items():
        c = "black" if len(levels) == 1 else cols[0]
        ax.axhline(
            value, color=c, ls="--", lw=1.3, label=f"lr_eff $\\times$ threshold = {value:.3g}"
        )


def _draw_count(ax, s: Series, col: str, *, percent: bool = False) -> None:
    pr = probed(s.df, col)
    if not len(pr):
        return
    x, y = pr["step"].to_numpy(), floats(pr[col])
    ax.plot(
        x,
        100 * y if percent else y,
        color=s.color,
        lw=0.8,
        marker="o",
        ms=_marker_size(len(x)),
        label=s.label or None,
    )


def _plain_log_ticks(ax) -> None:
    """A log axis spanning less than 1.5 decades: ticks at 1, 2, 3, 5 x 10^k written 0.3, 0.5."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo < 30:
        fmt = FuncFormatter(lambda v, _: f"{v:.3g}")
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
        ax.yaxis.set_major_formatter(fmt)
        ax.yaxis.set_minor_formatter(fmt)


def _empty_note(ax, text: str) -> None:
    if not ax.has_data():
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray")


def _title(series: list[Series], dirs: Sequence[Path]) -> str:
    infos = [read_run_info(d) for d in dirs]
    problems = list(dict.fromkeys(f"{i.problem}, loss {i.loss}" for i in infos))
    lines = []
    if len(infos) == 1:
        i = infos[0]
        every = {None: "", 1: ", probed every step"}
        probe = every.get(i.probe_every, f", probed every {i.probe_every} steps")
        lines.append(f"{i.title}{probe}")
    elif len(problems) == 1:
        rules = "; ".join(f"{i.path.name}: {i.rule.text}" for i in infos)
        lines += [problems[0], rules]
    else:
        lines += [f"{i.path.name}: {i.title}" for i in infos]
    for i in infos:
        if i.diverged:
            why = i.message.split(";")[0] or f"diverged at step {i.stop_step}"
            lines.append(f"{i.path.name}: {why}")
    return "\n".join(lines)


def plot_runs(dirs: Sequence[str | Path], out: str | Path, *, title: str | None = None) -> Path:
    r"""Write one PNG of the runs in ``dirs`` (one series per process) and return its path.

    Panels: training loss (log scale); training accuracy (when measured); the sharpness
    $\lambda_1$ (for adaptive rules the preconditioned $\lambda_1(P^{-1}H)$) at the probed steps,
    with its certified bound $\lambda_1 \pm$ ``sharpness_error`` as a band and the stability
    threshold dashed and labelled with its value (e.g. ``2/lr = 20``); the effective LR times
    the sharpness against the threshold's level (2 for GD); Hessian-vector products per probe.
    A threshold far above the curves at a few probes is cut off the axis (and its legend says
    where), so the curves keep a readable scale. Lockstep runs add the distances between their
    processes (against the flow time tau beside a limiting flow) and, beside a central flow,
    its predicted loss with the optimizer's loss averaged over 51 steps (`eoslab.report.compare`).
    A diverged run is marked by a vertical line at the step it stopped. The title names the
    problem (model, dataset, n), the loss, the rule with its hyperparameters and each process
    beside it (``title`` replaces it).
    """
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    dirs = [Path(d) for d in dirs]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    series = _series(dirs, colors)
    with_acc = any(len(probed(s.df, "accuracy")) for s in series)
    with_dist = has_distances(series)
    top = ["loss", *(["dist"] if with_dist else []), *(["acc"] if with_acc else [])]
    if len(top) == 3:
        layout = [top, ["sharp", "prod", "mv"]]
    elif len(top) == 2:
        layout = [[*top, "mv"], ["sharp", "sharp", "prod"]]
    else:
        layout = [["loss", "mv"], ["sharp", "prod"]]
    size = (17, 9.5) if len(layout[0]) == 3 else (13, 9)
    fig, axes = plt.subplot_mosaic(layout, figsize=size, layout="constrained")
    lo, hi = math.inf, -math.inf
    levels: dict[float, list[str]] = {}
    band = _band_label(series)
    for s in series:
        if not len(s.df):
            continue
        _draw_loss(axes["loss"], s)
        a, b, banded = _draw_sharpness(axes["sharp"], s, band)
        band = None if banded else band  # one legend entry for the bands
        lo, hi = min(lo, a) if math.isfinite(a) else lo, max(hi, b) if math.isfinite(b) else hi
        level = _draw_product(axes["prod"], s)
        if level is not None:
            levels.setdefault(float(f"{level:.6g}"), []).append(s.color)
        _draw_count(axes["mv"], s, "sharpness_matvecs")
        if with_acc:
            _draw_count(axes["acc"], s, "accuracy", percent=True)
    _draw_thresholds(axes["sharp"], series, lo, hi)
    _draw_levels(axes["prod"], levels)
    draw_predicted_loss(axes["loss"], series)
    if with_dist:  # in colours after the processes'
        k = len(series) % len(colors)
        draw_distances(axes["dist"], series, colors[k:] + colors[:k], prefix=len(dirs) > 1)
    _draw_divergence(axes, series)
    adaptive = any(_curvature(s.df)[0] == "eff_sharpness" for s in series if len(s.df))
    losses = list(dict.fromkeys(s.info.loss for s in series))
    axes["loss"].set(
        yscale="log", title="training loss", ylabel=f"training loss ({', '.join(losses)})"
    )
    sharp = "preconditioned sharpness $\\lambda_1(P^{-1}H)$" if adaptive else "sharpness"
    axes["sharp"].set(
        title=f"{sharp} at the probes and its stability threshold (dashed)",
        ylabel=("$\\lambda_1(P^{-1}H)$" if adaptive else "$\\lambda_1$ (top Hessian eigenvalue)")
        + ", units of 1/lr",
    )
    axes["prod"].set(
        title="effective LR $\\times$ sharpness against the threshold's level",
        ylabel="lr_eff $\\times$ " + ("$\\lambda_1(P^{-1}H)$" if adaptive else "$\\lambda_1$"),
    )
    axes["mv"].set(title="cost of each probe", ylabel="Hessian-vector products (count)")
    axes["mv"].yaxis.set_major_locator(MaxNLocator(integer=True))
    y0, y1 = axes["mv"].dataLim.intervaly
    if np.isfinite([y0, y1]).all() and y1 - y0 < 2:  # a constant count: whole numbers around it
        axes["mv"].set_ylim(max(0.0, math.floor(y0) - 1), math.ceil(y1) + 1)
    if with_acc:
        axes["acc"].set(title="training accuracy", ylabel="training accuracy (%)")
    _plain_log_ticks(axes["loss"])
    steps = [float(v) for s in series for v in s.df["step"]] if series else []
    by_step = {n: ax for n, ax in axes.items() if n != "dist"}  # distances may be against tau
    if steps and max(steps) - min(steps) < 2:  # one probe: an axis of a few whole steps
        for ax in by_step.values():
            ax.set_xlim(min(steps) - 1, max(steps) + 1)
    for ax in by_step.values():
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for name, ax in axes.items():
        ax.grid(alpha=0.3)
        _empty_note(ax, "no probes recorded" if name != "loss" else "no finite loss recorded")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, framealpha=0.85, loc="best")
    fig.suptitle(title if title is not None else _title(series, dirs), fontsize=11)
    return save_figure(fig, Path(out))


def write_run_figures(run_dir: str | Path) -> list[Path]:
    """The figures ``eoslab run`` writes for a run directory: ``figures/overview.png`` (see
    `plot_runs`). Returns their paths."""
    run_dir = Path(run_dir)
    return [plot_runs([run_dir], run_dir / "figures" / "overview.png")]
