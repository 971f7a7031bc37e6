"""The one loop: processes in lockstep, probes, stopping, the run store, progress."""

from .accuracy import Accuracy as Accuracy
from .batch_probe import BatchSharpness as BatchSharpness
from .loop import run as run
from .probe import At as At
from .probe import GroupProbe as GroupProbe
from .probe import HostProbe as HostProbe
from .probe import Probe as Probe
from .probe import ScanProbe as ScanProbe
from .probes import Probes as Probes
from .proxy_probes import CriticalSharpness as CriticalSharpness
from .proxy_probes import DirectionalSharpness as DirectionalSharpness
from .proxy_probes import GaussNewtonSharpness as GaussNewtonSharpness
from .proxy_probes import LayerSharpness as LayerSharpness
from .proxy_probes import TracePerParameter as TracePerParameter
from .records import RESUMABLE as RESUMABLE
from .records import STATUSES as STATUSES
from .records import Run as Run
from .records import Stop as Stop
from .records import load_run as load_run
from .store import RunExistsError as RunExistsError
from .store import RunStore as RunStore
from .train import train as train

__all__ = [
    "Accuracy",
    "At",
    "BatchSharpness",
    "CriticalSharpness",
    "DirectionalSharpness",
    "GaussNewtonSharpness",
    "GroupProbe",
    "HostProbe",
    "LayerSharpness",
    "RESUMABLE",
    "STATUSES",
    "Probe",
    "Probes",
    "Run",
    "RunExistsError",
    "RunStore",
    "ScanProbe",
    "Stop",
    "TracePerParameter",
    "load_run",
    "run",
    "train",
]
