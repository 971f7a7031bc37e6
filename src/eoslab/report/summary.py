"""`write_report`: a run directory's figures and a Markdown + HTML summary, from its store alone."""

from __future__ import annotations

import contextlib
import html
import json
import math
import warnings
from pathlib import Path

import pandas as pd

from ..errors import DamagedRunError, DamagedRunWarning
from ..runlock import hold
from .plots import plot_runs, read_run_metrics

__all__ = ["final_rows", "write_report"]


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return "" if math.isnan(x) else f"{x:.6g}"
    return str(x)


def final_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per process: its last row, and its last probed sharpness with the certified bound (and
    the training accuracy there, when measured)."""
    procs = list(dict.fromkeys(metrics["process"])) if "process" in metrics else [None]
    rows = []
    for name in procs:
        part = metrics if name is None else metrics[metrics["process"] == name]
        last = part.iloc[-1]
        row = {"process": name or "-", "step": int(last["step"]), "loss": float(last["loss"])}
        probed = part[part["sharpness"].notna()] if "sharpness" in part else part.iloc[0:0]
        if len(probed):
            p = probed.iloc[-1]
            row["sharpness"] = float(p["sharpness"])
            row["certified bound"] = float(p.get("sharpness_error", math.nan))
            row["at step"] = int(p["step"])
            acc = p.get("accuracy", math.nan)
            if acc is not None and not pd.isna(acc):
                row["accuracy"] = float(acc)
        if "threshold" in last:
            row["threshold"] = float(last["threshold"])
        rows.append(row)
    return pd.DataFrame(rows)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``figures/overview.png``, ``report.md`` and ``report.html`` for a run directory
    (default: into it) and return the Markdown file's path. Reads the store only; writing into
    the run directory, it holds the directory's one-writer lock (`RunInUseError` while a run or
    another report writes it)."""
    run_dir = Path(run_dir)
    out = run_dir if out is None else Path(out)
    inside = run_dir.resolve() in (out.resolve(), *out.resolve().parents)
    is_run = (run_dir / "config.json").is_file()
    with hold(run_dir, "report") if inside and is_run else contextlib.nullcontext():
        return _write_report(run_dir, out)


def _write_report(run_dir: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    try:
        record = json.loads((run_dir / "config.json").read_bytes())
    except (ValueError, OSError) as exc:
        raise DamagedRunError(f"{run_dir}/config.json is damaged ({type(exc).__name__})") from None
    try:
        manifest = json.loads((run_dir / "manifest.json").read_bytes())
    except (ValueError, OSError):
        warnings.warn(
            f"{run_dir}/manifest.json is damaged; the status is unknown",
            DamagedRunWarning,
            stacklevel=2,
        )
        manifest = {"status": "unknown"}
    metrics = read_run_metrics(run_dir)
    fig = plot_runs([run_dir], out / "figures" / "overview.png")
    table = final_rows(metrics) if len(metrics) else pd.DataFrame()
    cfg = record.get("config", {})
    lines = [
        f"# eoslab run: {run_dir.name}",
        "",
        f"- status: **{manifest.get('status', 'unknown')}**: {manifest.get('message', '')}",
        f"- eoslab {record.get('eoslab_version', '?')}, created {record.get('created', '?')}",
    ]
    if isinstance(cfg, dict) and cfg.get("description"):
        lines.append(f"- {cfg['description']}")
    lines += ["", "## Final values", ""]
    if len(table):
        cols = list(table.columns)
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for _, r in table.iterrows():
            lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    else:
        lines.append("(no metrics recorded)")
    rel = fig.relative_to(out) if fig.is_relative_to(out) else fig
    lines += ["", "## Figures", "", f"![overview]({rel})", "", "## Config", "", "```json"]
    lines += [json.dumps(cfg, indent=2), "```", ""]
    md = out / "report.md"
    md.write_text("\n".join(lines))
    body = table.to_html(index=False, na_rep="", float_format=lambda x: f"{x:.6g}")
    page = (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(run_dir.name)}</title>"
        f"<h1>eoslab run: {html.escape(run_dir.name)}</h1>"
        f"<p>status: <b>{html.escape(str(manifest.get('status', 'unknown')))}</b>: "
        f"{html.escape(str(manifest.get('message', '')))}</p>{body}"
        f"<p><img src='{html.escape(str(rel))}' style='max-width:100%'></p>"
        f"<pre>{html.escape(json.dumps(cfg, indent=2))}</pre>"
    )
    (out / "report.html").write_text(page)
    return md
