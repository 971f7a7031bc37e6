"""``eoslab reproduce NAME``: the experiments of the papers, each writing figures and a
predicted-vs-measured table (``docs/theory.md``, "Reproductions and their checks")."""

from .registry import EXPERIMENTS as EXPERIMENTS
from .registry import Experiment as Experiment
from .registry import get as get
from .registry import names as names
from .registry import run as run

__all__ = ["EXPERIMENTS", "Experiment", "get", "names", "run"]
