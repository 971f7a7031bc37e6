"""Writing figures and text files: matplotlib on the Agg backend, atomic replaces."""

from __future__ import annotations

import os
from pathlib import Path

from ..runlock import hold_run_of

__all__ = ["pyplot", "save_figure", "write_text"]


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (figures are only saved).

    Imported on first use, so listing or running experiments without figures never loads it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG (120 dpi, tight box) atomically and close it; into a run
    directory only holding its one-writer lock (`eoslab.runlock`: refused while a run writes it).
    """
    plt = pyplot()
    path = Path(path)
    try:
        with hold_run_of(path, "figure"):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + ".tmp.png")
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
            os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path
