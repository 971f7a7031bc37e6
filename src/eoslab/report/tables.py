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

__all__ = [
    "COLUMNS",
    "markdown_cell",
    "markdown_table",
    "read_table",
    "table_markdown",
    "write_frame",
    "write_table",
]

COLUMNS = ("quantity", "predicted", "measured", "error", "tolerance", "kind", "ok")
"""The columns of a predicted-vs-measured table, in order."""


def markdown_cell(value: object) -> str:
    r"""``value`` as the text of one Markdown table cell: a backslash is written ``\\`` and a
    pipe ``\|`` (a bare ``|`` would end the cell: ``|Phi(x) - X|`` would split the row), a line
    break a space."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.splitlines())


def markdown_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> list[str]:
    """The lines of a Markdown (GitHub) table, every cell escaped by `markdown_cell`."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(markdown_cell(c) for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def table_markdown(rows: Sequence[dict], title: str) -> str:
    """The Markdown text of a predicted-vs-measured table (numbers to 6 significant digits)."""
    body = [
        (
            r["quantity"],
            f"{r['predicted']:.6g}",
            f"{r['measured']:.6g}",
            f"{r['error']:.2e} ({r['kind']})",
            f"{r['tolerance']:.1e}",
            "yes" if r["ok"] else "NO",
        )
        for r in rows
    ]
    header = ("quantity", "predicted", "measured", "error", "tolerance", "ok")
    return "\n".join([f"# {title}", "", *markdown_table(header, body)]) + "\n"


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
