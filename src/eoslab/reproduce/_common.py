"""Shared pieces of the reproductions: tables of predicted vs measured numbers, figure output."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (figures are only saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def enable_x64() -> None:
    """The theory checks run in float64 (JAX's 64-bit mode, switched on for this process)."""
    import jax

    if not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)


def row(
    quantity: str,
    predicted: float,
    measured: float,
    tolerance: float,
    *,
    relative: bool = False,
    at_least: bool = False,
    at_most: bool = False,
) -> dict:
    """One line of a predicted-vs-measured table.

    ``ok`` when ``|measured - predicted| <= tolerance`` (relative to ``|predicted|`` with
    ``relative``), or, for a one-sided prediction, ``measured >= predicted - tolerance``
    (``at_least``) or ``measured <= predicted + tolerance`` (``at_most``).
    """
    diff = measured - predicted
    if at_least:
        err, kind = max(-diff, 0.0), "at least"
    elif at_most:
        err, kind = max(diff, 0.0), "at most"
    else:
        err, kind = abs(diff), "absolute"
    if relative:
        err, kind = err / max(abs(predicted), 1e-300), "relative"
    ok = bool(math.isfinite(measured) and err <= tolerance)
    return {
        "quantity": quantity,
        "predicted": float(predicted),
        "measured": float(measured),
        "error": float(err),
        "tolerance": float(tolerance),
        "kind": kind,
        "ok": ok,
    }


def write_table(out: Path, rows: list[dict], title: str) -> Path:
    """Writes ``table.md`` and ``table.csv`` atomically; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    lines = [
        f"# {title}",
        "",
        "| quantity | predicted | measured | error | tolerance | ok |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['quantity']} | {r['predicted']:.6g} | {r['measured']:.6g} | "
            f"{r['error']:.2e} ({r['kind']}) | {r['tolerance']:.1e} | "
            f"{'yes' if r['ok'] else 'NO'} |"
        )
    md = out / "table.md"
    for path, text in ((md, "\n".join(lines) + "\n"), (out / "table.csv", df.to_csv(index=False))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return md


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path
