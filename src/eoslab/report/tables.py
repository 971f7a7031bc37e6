"""Tables: the predicted-vs-measured table of a reproduction (``table.md``, ``table.csv``) and
the data frames written beside its figures.

A table row is a dict with ``quantity``, ``predicted``, ``measured``, ``error``, ``tolerance``,
``kind`` and ``ok`` (made by `eoslab.reproduce`); this module only writes and reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .output import write_text

__all__ = ["COLUMNS", "read_table", "table_markdown", "write_frame", "write_table"]

COLUMNS = ("quantity", "predicted", "measured", "error", "tolerance", "kind", "ok")
"""The columns of a predicted-vs-measured table, in order."""


def table_markdown(rows: Sequence[dict], title: str) -> str:
    """The Markdown text of a predicted-vs-measured table (numbers to 6 significant digits)."""
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
    return "\n".join(lines) + "\n"


def write_table(out: Path, rows: Sequence[dict], title: str) -> Path:
    """Writes ``table.md`` and ``table.csv`` (full precision) under ``out`` atomically; returns
    the Markdown path."""
    out = Path(out)
    md = write_text(out / "table.md", table_markdown(rows, title))
    write_text(out / "table.csv", pd.DataFrame(list(rows)).to_csv(index=False))
    return md


def read_table(out: Path) -> pd.DataFrame:
    """The ``table.csv`` written by `write_table` under ``out``."""
    return pd.read_csv(Path(out) / "table.csv")


def write_frame(df: pd.DataFrame, path: Path) -> Path:
    """Write a data frame as CSV (no index) atomically."""
    return write_text(Path(path), df.to_csv(index=False))
