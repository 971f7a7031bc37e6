"""Processes: update rules and the theories' flows, each advancing a point step by step, and the
theories' point-wise math they rest on.

`Process` is the interface, a `CompiledProcess` (one `lax.scan` of steps) or a `HostProcess`
(its own host loop); `Optimizer(rule)` runs any update rule of `eoslab.rules` (full batch),
`MiniBatch(rule, batch_size)` runs it on mini-batches; the flows are `GradientFlow`,
`ProjectedLimitingFlow`, `RetractedLimitingFlow`, `CentralFlow`, `SDPCentralFlow`,
`RMSPropCentralFlow`, `ProjectedGD` and `SelfStabilization`. The math: $\\Phi$ (`phi`), the
tangent projector, the SDCP, the stability quantities and the stable projection, the 2-D model
of self-stabilization and the EoS diagnostics. Formulas: ``docs/theory.md``.
"""

from . import rules as rules
from .central_flow import CentralFlow as CentralFlow
from .central_flow import RMSPropCentralFlow as RMSPropCentralFlow
from .central_flow import SDPCentralFlow as SDPCentralFlow
from .diagnostics import eos_diagnostics as eos_diagnostics
from .gradient_flow import GradientFlow as GradientFlow
from .limiting_flow import ALGORITHMS as ALGORITHMS
from .limiting_flow import LimitingFlow as LimitingFlow
from .limiting_flow import ProjectedLimitingFlow as ProjectedLimitingFlow
from .limiting_flow import RetractedLimitingFlow as RetractedLimitingFlow
from .limiting_flow import flow_constant as flow_constant
from .manifold import TangentProjector as TangentProjector
from .manifold import tangent_projector as tangent_projector
from .minibatch import MiniBatch as MiniBatch
from .minibatch import MiniBatchState as MiniBatchState
from .optimizer import Optimizer as Optimizer
from .phi import PhiResult as PhiResult
from .phi import phi as phi
from .phi import phi_result as phi_result
from .process import CompiledProcess as CompiledProcess
from .process import HostProcess as HostProcess
from .process import Process as Process
from .process import Row as Row
from .rules import Rule as Rule
from .rules import StepInfo as StepInfo
from .sdcp import solve_sdcp as solve_sdcp
from .self_stabilization import ProjectedGD as ProjectedGD
from .self_stabilization import SelfStabilization as SelfStabilization
from .self_stabilization import StabilityQuantities as StabilityQuantities
from .self_stabilization import predicted_xy as predicted_xy
from .self_stabilization import stability_quantities as stability_quantities
from .self_stabilization import stable_projection as stable_projection

__all__ = [
    "ALGORITHMS",
    "CentralFlow",
    "CompiledProcess",
    "GradientFlow",
    "HostProcess",
    "LimitingFlow",
    "MiniBatch",
    "MiniBatchState",
    "Optimizer",
    "PhiResult",
    "Process",
    "ProjectedGD",
    "ProjectedLimitingFlow",
    "RMSPropCentralFlow",
    "RetractedLimitingFlow",
    "Row",
    "Rule",
    "SDPCentralFlow",
    "SelfStabilization",
    "StabilityQuantities",
    "StepInfo",
    "TangentProjector",
    "eos_diagnostics",
    "flow_constant",
    "phi",
    "phi_result",
    "predicted_xy",
    "rules",
    "solve_sdcp",
    "stability_quantities",
    "stable_projection",
    "tangent_projector",
]
