"""Update rules (and, later, flows) as pure step functions on flat parameter vectors."""

from . import rules as rules
from .rules import Rule as Rule
from .rules import StepInfo as StepInfo

__all__ = ["Rule", "StepInfo", "rules"]
