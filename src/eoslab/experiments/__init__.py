"""Typed experiment configs, named presets, the builder and `execute`."""

from .build import Built as Built
from .build import build as build
from .config import CompareProcess as CompareProcess
from .config import Experiment as Experiment
from .config import ModelProblem as ModelProblem
from .config import Problem as Problem
from .config import QuadraticProblem as QuadraticProblem
from .config import ToyMLPProblem as ToyMLPProblem
from .config import ValleyProblem as ValleyProblem
from .config import from_dict as from_dict
from .config import to_dict as to_dict
from .execute import execute as execute
from .presets import DEFAULT_PRESET as DEFAULT_PRESET
from .presets import PRESETS as PRESETS
from .presets import get_preset as get_preset

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "Built",
    "CompareProcess",
    "Experiment",
    "ModelProblem",
    "Problem",
    "QuadraticProblem",
    "ToyMLPProblem",
    "ValleyProblem",
    "build",
    "execute",
    "from_dict",
    "get_preset",
    "to_dict",
]
