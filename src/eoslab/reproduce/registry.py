"""The registry of reproducible experiments: ``eoslab reproduce NAME``.

It lists the experiments of `paper` (Arora et al.), `vgg` (their VGG experiment on Fashion-MNIST)
and `beyond` (the later works); those modules do not import it.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from ..errors import ConfigError
from . import beyond, eoss, paper, transformer, vgg
from ._common import Experiment

__all__ = ["Experiment", "get", "names", "run", "EXPERIMENTS"]

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        *paper.EXPERIMENTS,
        *vgg.EXPERIMENTS,
        *beyond.EXPERIMENTS,
        *transformer.EXPERIMENTS,
        *eoss.EXPERIMENTS,
    )
}


def names() -> list[str]:
    """The experiments' names, Arora et al.'s first."""
    return list(EXPERIMENTS)


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ConfigError("name", name, "one of " + ", ".join(EXPERIMENTS))
    return EXPERIMENTS[name]


def run(
    name: str, out: str | PathLike, quick: bool = False, data_dir: str | PathLike | None = None
) -> list[dict]:
    """Run the experiment ``name`` into directory ``out``; returns its table rows. ``data_dir``:
    where its on-disk dataset lives (only for experiments that read one: cifar-vgg,
    fashion-vgg)."""
    d = Path(data_dir).expanduser() if data_dir is not None else None
    return get(name)(Path(out), quick, d)
