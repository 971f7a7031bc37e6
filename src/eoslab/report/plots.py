"""Figures of runs (matplotlib, PNG): loss, sharpness against its threshold, lr x sharpness, cost.

Reads run directories only (``config.json`` and the Parquet parts); it never imports the runner.
Several directories are overlaid, one colour per run.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DamagedRunWarning

__all__ = ["plot_runs", "read_run_metrics", "run_label"]


def read_run_metrics(path: str | Path) -> pd.DataFrame:
    """All Parquet parts of a run directory, one row per step and process (plain pandas)."""
    parts = sorted((Path(path) / "metrics").glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame({"step": []})
    frames = []
    for p in parts:
        try:
            frames.append(pd.read_parquet(p))
        except Exception as exc:  # noqa: BLE001 - a damaged part is left out, and said so
            warnings.warn(
                f"{p} is damaged ({type(exc).__name__}); plotted without its rows",
                DamagedRunWarning,
                stacklevel=2,
            )
    if not frames:
        return pd.DataFrame({"step": []})
    df = pd.concat(frames, ignore_index=True)
    keys = ["process", "step"] if "process" in df else ["step"]
    df = df.drop_duplicates(keys, keep="last").sort_values("step", kind="stable")
    return df.reset_index(drop=True)


def _by_process(df: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    if "process" not in df or df["process"].nunique() <= 1:
        return [(None, df)]
    return [(str(n), df[df["process"] == n]) for n in dict.fromkeys(df["process"])]


def run_label(path: str | Path, process: str | None = None) -> str:
    """A short label: the directory, and the rule with its hyperparameters (or the process)."""
    path = Path(path)
    try:
        cfg = json.loads((path / "config.json").read_text()).get("config", {})
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
    except (OSError, ValueError, AttributeError):
        return path.name


def _probed(df: pd.DataFrame, col: str) -> pd.DataFrame:
    if col not in df:
        return df.iloc[0:0]
    return df[df[col].notna()]


def plot_runs(dirs: Sequence[str | Path], out: str | Path, *, title: str | None = None) -> Path:
    """Write one PNG with four panels for the runs in ``dirs`` and return its path.

    Each process of a multi-process run is its own series. Panels: training loss (log scale);
    sharpness (the preconditioned one for adaptive rules) with its stability threshold dashed;
    effective LR x sharpness with the threshold's level (2 for GD);
    Hessian-vector products per probe.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    ax_loss, ax_sharp, ax_prod, ax_mv = axes.ravel()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    series = []
    for d in dirs:
        for proc, part in _by_process(read_run_metrics(d)):
            series.append((run_label(d, proc), part))
    for i, (label, df) in enumerate(series):
        c = colors[i % len(colors)]
        if len(df) == 0:
            continue
        fin = df[np.isfinite(df["loss"]) & (df["loss"] > 0)]
        ax_loss.plot(fin["step"], fin["loss"], color=c, lw=1.2, label=label)
        eff = _probed(df, "eff_sharpness")
        curv_col = "eff_sharpness" if len(eff) else "sharpness"
        pr = _probed(df, curv_col)
        if len(pr):
            name = "preconditioned sharpness" if curv_col == "eff_sharpness" else "sharpness"
            ax_sharp.plot(pr["step"], pr[curv_col], color=c, lw=1.5, label=f"{label} ({name})")
            ax_prod.plot(pr["step"], pr["lr_eff"] * pr[curv_col], color=c, lw=1.5, label=label)
            ax_prod.plot(pr["step"], pr["lr_eff"] * pr["threshold"], color=c, lw=1, ls="--")
            if "sharpness_matvecs" in pr:
                ax_mv.plot(
                    pr["step"], pr["sharpness_matvecs"].astype(float), color=c, lw=1, label=label
                )
        thr = df[np.isfinite(df["threshold"])]
        if len(thr):
            ax_sharp.plot(thr["step"], thr["threshold"], color=c, lw=1, ls="--", label="threshold")
            top = float(np.nanmax(pr[curv_col])) if len(pr) else 0.0
            if top > 0 and np.nanmedian(thr["threshold"]) > 5 * top:
                ax_sharp.set_ylim(0, 1.5 * top)  # a far-off threshold would flatten the curve
    ax_loss.set_yscale("log")
    ax_loss.set_title("training loss")
    ax_sharp.set_title("sharpness $\\lambda_1$ and its stability threshold (dashed)")
    ax_prod.set_title("effective LR $\\times$ sharpness (dashed: the threshold's level)")
    ax_mv.set_title("Hessian-vector products per probe")
    for ax in axes.ravel():
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    ax_sharp.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
