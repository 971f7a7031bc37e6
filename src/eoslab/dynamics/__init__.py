"""Processes: update rules and the theories' flows, each advancing a point step by step.

`Process` is the interface, a `CompiledProcess` (one `lax.scan` of steps) or a `HostProcess`
(its own host loop); `Optimizer(rule)` runs any update rule of `eoslab.rules` (full batch),
`MiniBatch(rule, batch_size)` runs it on mini-batches; the flows are `GradientFlow`,
`ProjectedLimitingFlow`, `RetractedLimitingFlow`, `CentralFlow`, `SDPCentralFlow`,
`RMSPropCentralFlow`, `ProjectedGD` and `SelfStabilization`.
"""

from . import rules as rules
from .central_flow import CentralFlow as CentralFlow
from .central_flow import RMSPropCentralFlow as RMSPropCentralFlow
from .central_flow import SDPCentralFlow as SDPCentralFlow
from .gradient_flow import GradientFlow as GradientFlow
from .limiting_flow import ProjectedLimitingFlow as ProjectedLimitingFlow
from .limiting_flow import RetractedLimitingFlow as RetractedLimitingFlow
from .minibatch import MiniBatch as MiniBatch
from .minibatch import MiniBatchState as MiniBatchState
from .optimizer import Optimizer as Optimizer
from .process import CompiledProcess as CompiledProcess
from .process import HostProcess as HostProcess
from .process import Process as Process
from .process import Row as Row
from .rules import Rule as Rule
from .rules import StepInfo as StepInfo
from .self_stabilization import ProjectedGD as ProjectedGD
from .self_stabilization import SelfStabilization as SelfStabilization

__all__ = [
    "CentralFlow",
    "CompiledProcess",
    "GradientFlow",
    "HostProcess",
    "MiniBatch",
    "MiniBatchState",
    "Optimizer",
    "Process",
    "ProjectedGD",
    "ProjectedLimitingFlow",
    "RMSPropCentralFlow",
    "RetractedLimitingFlow",
    "Row",
    "Rule",
    "SDPCentralFlow",
    "SelfStabilization",
    "StepInfo",
    "rules",
]
