"""``eoslab reproduce NAME``: the experiments of the papers, each writing figures and a
predicted-vs-measured table (``docs/theory.md``, "Reproductions and their checks")."""

from pathlib import Path

from .registry import EXPERIMENTS as EXPERIMENTS
from .registry import Experiment as Experiment
from .registry import get as get
from .registry import names as names

__all__ = ["EXPERIMENTS", "Experiment", "get", "names", "run"]


def run(name: str, out, quick: bool = False) -> list[dict]:
    """Run the experiment ``name`` into directory ``out``; returns its table rows."""
    return get(name).run(Path(out), quick)
