"""The registry of reproducible experiments: ``eoslab reproduce NAME``.

It lists the experiments of `paper` (Arora et al.) and `beyond` (the later works); those modules
do not import it.
"""

from __future__ import annotations

from ..errors import ConfigError
from . import beyond, paper
from ._common import Experiment

__all__ = ["Experiment", "get", "names", "EXPERIMENTS"]

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (*paper.EXPERIMENTS, *beyond.EXPERIMENTS)}


def names() -> list[str]:
    """The experiments' names, Arora et al.'s first."""
    return list(EXPERIMENTS)


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ConfigError("name", name, "one of " + ", ".join(EXPERIMENTS))
    return EXPERIMENTS[name]
