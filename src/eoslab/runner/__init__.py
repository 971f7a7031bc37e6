"""The experiment loop: compiled steps between probes, stopping rules, the run store, progress."""

from .store import RunExistsError as RunExistsError
from .store import RunStore as RunStore
from .train import Probes as Probes
from .train import Run as Run
from .train import Stop as Stop
from .train import load_run as load_run
from .train import train as train

__all__ = ["Probes", "Run", "RunExistsError", "RunStore", "Stop", "load_run", "train"]
