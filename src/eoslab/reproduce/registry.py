"""The registry of reproducible experiments: ``eoslab reproduce NAME``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError

__all__ = ["Experiment", "register", "get", "names", "EXPERIMENTS"]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One paper experiment: ``run(out, quick)`` writes figures and a predicted-vs-measured table
    under ``out`` and returns the table's rows (dicts with ``quantity``, ``predicted``,
    ``measured``, ``tolerance``, ``ok``)."""

    name: str
    source: str  # which paper / figure
    description: str
    run: Callable[[Path, bool], list[dict]]
    needs: str = ""  # data that must be present for the full variant, if any


EXPERIMENTS: dict[str, Experiment] = {}


def register(name: str, source: str, description: str, needs: str = ""):
    """Decorator adding ``run(out: Path, quick: bool) -> list[dict]`` to the registry."""

    def deco(fn):
        EXPERIMENTS[name] = Experiment(name, source, description, fn, needs)
        return fn

    return deco


def names() -> list[str]:
    _load_all()
    return list(EXPERIMENTS)


def get(name: str) -> Experiment:
    _load_all()
    if name not in EXPERIMENTS:
        raise ConfigError("name", name, "one of " + ", ".join(EXPERIMENTS))
    return EXPERIMENTS[name]


def _load_all() -> None:
    # Importing the modules registers their experiments (kept lazy: matplotlib etc.).
    from . import (
        beyond,  # noqa: F401
        paper,  # noqa: F401
    )
