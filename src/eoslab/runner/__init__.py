"""The one loop: processes in lockstep, probes, stopping, the run store, progress."""

from .accuracy import AccuracyProbe as AccuracyProbe
from .accuracy import accuracy_probe as accuracy_probe
from .loop import run as run
from .probes import ProbeFn as ProbeFn
from .probes import Probes as Probes
from .records import RESUMABLE as RESUMABLE
from .records import STATUSES as STATUSES
from .records import Run as Run
from .records import Stop as Stop
from .records import load_run as load_run
from .store import RunExistsError as RunExistsError
from .store import RunStore as RunStore
from .train import train as train

__all__ = [
    "AccuracyProbe",
    "RESUMABLE",
    "STATUSES",
    "ProbeFn",
    "Probes",
    "Run",
    "RunExistsError",
    "RunStore",
    "Stop",
    "accuracy_probe",
    "load_run",
    "run",
    "train",
]
