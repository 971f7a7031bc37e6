"""eoslab: gradient descent at the Edge of Stability, measured exactly (JAX).

Public names are re-exported here; import from ``eoslab`` or its subpackages, not private modules.
"""

from . import curvature as curvature
from . import data as data
from . import losses as losses
from . import models as models
from . import theory as theory
from ._version import __version__ as __version__
from .dynamics import eos_diagnostics as eos_diagnostics
from .dynamics import phi as phi
from .dynamics import rules as rules
from .dynamics import tangent_projector as tangent_projector
from .errors import ConfigError as ConfigError
from .errors import DivergenceError as DivergenceError
from .errors import EoslabError as EoslabError
from .errors import UnsafeFileError as UnsafeFileError
from .objective import Objective as Objective
from .runner import Run as Run
from .runner import load_run as load_run
from .runner import train as train
from .theory import limiting_flow as limiting_flow

# Subpackages that pull in heavy dependencies (matplotlib, pandas, cvxpy, scikit-learn, the
# datasets) are imported on first use, so ``import eoslab`` stays light; ``eoslab.reproduce``
# and ``from eoslab import report`` work as usual.
_LAZY_SUBMODULES = ("experiments", "report", "reproduce")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'eoslab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


__all__ = [
    "ConfigError",
    "DivergenceError",
    "EoslabError",
    "Objective",
    "Run",
    "UnsafeFileError",
    "__version__",
    "curvature",
    "eos_diagnostics",
    "experiments",
    "limiting_flow",
    "phi",
    "report",
    "reproduce",
    "tangent_projector",
    "theory",
    "data",
    "load_run",
    "losses",
    "models",
    "rules",
    "train",
]
