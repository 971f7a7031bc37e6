"""Shared pieces of the reproductions: the `Experiment` record and the rows of a
predicted-vs-measured table (written by `eoslab.report.tables`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError

__all__ = ["Experiment", "row"]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One paper experiment: ``run(out, quick)`` writes figures and a predicted-vs-measured table
    under ``out`` and returns the table's rows (dicts with ``quantity``, ``predicted``,
    ``measured``, ``tolerance``, ``ok``). An experiment that reads on-disk ``datasets`` is called
    ``run(out, quick, data_dir)`` (``data_dir`` None: the default places, see `eoslab.data`)."""

    name: str
    source: str  # which paper / figure
    description: str
    run: Callable[..., list[dict]]
    needs: str = ""  # data that must be present (for the full variant), if any
    datasets: tuple[str, ...] = ()  # the on-disk datasets it reads (``--data-dir``)

    def __call__(self, out: Path, quick: bool, data_dir: Path | None = None) -> list[dict]:
        """Run it into ``out``; ``data_dir`` only for an experiment that reads ``datasets``."""
        if self.datasets:
            return self.run(Path(out), quick, data_dir)
        if data_dir is not None:
            raise ConfigError(
                "data_dir", str(data_dir), f"None ({self.name} reads no dataset from disk)"
            )
        return self.run(Path(out), quick)


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
