"""`write_report`: a run directory's figures and a Markdown + HTML summary, from its store alone."""

from __future__ import annotations

import contextlib
import html
import json
import math
import warnings
from pathlib import Path

import pandas as pd

from ..errors import DamagedRunWarning
from ..rundir import read_config, read_manifest, read_metrics
from ..runlock import hold
from .plots import plot_runs
from .run_info import describe_config
from .tables import markdown_table

__all__ = ["final_rows", "summary_lines", "write_report"]


def _fmt(x: object) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return ""
        return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:.6g}"
    return str(x)


def final_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per process, each value with the step it was measured at: ``last step`` and the
    ``loss`` there; ``probed at step`` (its last probe) and there the ``sharpness`` (for an
    adaptive rule also ``preconditioned sharpness``, compared with its threshold), its
    ``certified bound``, the ``threshold`` and the ``accuracy`` (columns left empty when not
    measured)."""
    procs = list(dict.fromkeys(metrics["process"])) if "process" in metrics else [None]
    rows = []
    for name in procs:
        part = metrics if name is None else metrics[metrics["process"] == name]
        last = part.iloc[-1]
        row = {"process": name or "-", "last step": int(last["step"]), "loss": float(last["loss"])}
        probed = part[part["sharpness"].notna()] if "sharpness" in part else part.iloc[0:0]
        if len(probed):
            p = probed.iloc[-1]
            row["probed at step"] = int(p["step"])
            row["sharpness"] = float(p["sharpness"])
            eff = _number(p.get("eff_sharpness"))
            if not math.isnan(eff):
                row["preconditioned sharpness"] = eff
            row["certified bound"] = _number(p.get("sharpness_error"))
            row["threshold"] = _number(p.get("threshold"))
            acc = _number(p.get("accuracy"))
            if not math.isnan(acc):
                row["accuracy"] = acc
        rows.append(row)
    return pd.DataFrame(rows)


def _number(x: object) -> float:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return v


def summary_lines(metrics: pd.DataFrame) -> list[str]:
    """One line per process for a terminal, each value with its step: ``gd: loss 0.406 at step
    60; sharpness 6.293 at step 60 (its last probe), threshold 10``."""
    lines = []
    for r in final_rows(metrics).to_dict("records") if len(metrics) else []:
        line = f"{r['process']}: loss {r['loss']:.6g} at step {r['last step']}"
        if "probed at step" in r and not pd.isna(r["probed at step"]):
            eff = r.get("preconditioned sharpness", math.nan)
            what, value = (
                ("preconditioned sharpness", eff)
                if not pd.isna(eff)
                else ("sharpness", r["sharpness"])
            )
            line += f"; {what} {value:.4g} at step {int(r['probed at step'])} (its last probe)"
            if not pd.isna(r.get("threshold", math.nan)):
                line += f", threshold {r['threshold']:.4g}"
        lines.append(line)
    return lines


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
    record = read_config(run_dir)
    manifest = read_manifest(run_dir)
    if "damaged" in manifest:
        warnings.warn(
            f"{run_dir}/manifest.json is damaged; the status is unknown",
            DamagedRunWarning,
            stacklevel=2,
        )
    metrics = read_metrics(run_dir)
    fig = plot_runs([run_dir], out / "figures" / "overview.png")
    table = final_rows(metrics) if len(metrics) else pd.DataFrame()
    cfg = record.get("config", {})
    cfg = cfg if isinstance(cfg, dict) else {}
    lines = [
        f"# eoslab run: {run_dir.name}",
        "",
        f"- ran: {describe_config(cfg)}",
        f"- status: **{manifest.get('status', 'unknown')}**: {manifest.get('message', '')}",
        f"- eoslab {record.get('eoslab_version', '?')}, created {record.get('created', '?')}",
    ]
    if cfg.get("description"):
        lines.append(f"- description: {cfg['description']}")
    lines += ["", "## Final values", ""]
    if len(table):
        lines += [
            "Each process's loss at its last step; the sharpness, its certified bound, the "
            "threshold and the accuracy at its last probe (the step in *probed at step*).",
            "",
        ]
        cols = list(table.columns)
        lines += markdown_table(cols, [[_fmt(r[c]) for c in cols] for _, r in table.iterrows()])
    else:
        lines.append("(no metrics recorded)")
    rel = fig.relative_to(out) if fig.is_relative_to(out) else fig
    lines += ["", "## Figures", "", f"![overview]({rel})", "", "## Config", "", "```json"]
    lines += [json.dumps(cfg, indent=2), "```", ""]
    md = out / "report.md"
    md.write_text("\n".join(lines))
    cols = list(table.columns)
    cells = [[_fmt(r[c]) for c in cols] for _, r in table.iterrows()]
    body = "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
    for row in cells:
        body += "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>"
    body += "</table>"
    page = (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(run_dir.name)}</title>"
        f"<h1>eoslab run: {html.escape(run_dir.name)}</h1>"
        f"<p>ran: {html.escape(describe_config(cfg))}</p>"
        f"<p>status: <b>{html.escape(str(manifest.get('status', 'unknown')))}</b>: "
        f"{html.escape(str(manifest.get('message', '')))}</p>{body}"
        f"<p><img src='{html.escape(str(rel))}' style='max-width:100%'></p>"
        f"<pre>{html.escape(json.dumps(cfg, indent=2))}</pre>"
    )
    (out / "report.html").write_text(page)
    return md
