"""The theories' predictions, computed: Phi, the tangent projector, the limiting flows, central
flows, self-stabilization, EoS diagnostics and the preconditioned sharpness.

The functions that run a trajectory (`iterate`, `limiting_flow`, `lockstep`, `central_flow`,
`rmsprop_central_flow`, `self_stabilization`, `gd_lockstep`, `track_preconditioned_sharpness`) are
front doors to the one loop, `eoslab.runner.run`, over the processes of `eoslab.dynamics`.
Formulas: ``docs/theory.md``.
"""

from ..dynamics.manifold import TangentProjector as TangentProjector
from ..dynamics.manifold import tangent_projector as tangent_projector
from ..dynamics.phi import PhiResult as PhiResult
from ..dynamics.phi import gradient_flow as gradient_flow
from ..dynamics.phi import phi as phi
from ..dynamics.phi import phi_result as phi_result
from ..dynamics.sdcp import solve_sdcp as solve_sdcp
from .adaptive import PreconditionedSharpness as PreconditionedSharpness
from .adaptive import preconditioned_sharpness as preconditioned_sharpness
from .adaptive import track_preconditioned_sharpness as track_preconditioned_sharpness
from .central_flow import CentralFlowResult as CentralFlowResult
from .central_flow import RMSPropCentralFlowResult as RMSPropCentralFlowResult
from .central_flow import central_flow as central_flow
from .central_flow import central_flow_prediction as central_flow_prediction
from .central_flow import rmsprop_central_flow as rmsprop_central_flow
from .diagnostics import eos_diagnostics as eos_diagnostics
from .flows import ALGORITHMS as ALGORITHMS
from .flows import LimitingFlow as LimitingFlow
from .flows import flow_constant as flow_constant
from .flows import limiting_flow as limiting_flow
from .lockstep import Lockstep as Lockstep
from .lockstep import lockstep as lockstep
from .self_stabilization import SelfStabilizationResult as SelfStabilizationResult
from .self_stabilization import StabilityQuantities as StabilityQuantities
from .self_stabilization import gd_lockstep as gd_lockstep
from .self_stabilization import moving_average as moving_average
from .self_stabilization import predicted_xy as predicted_xy
from .self_stabilization import self_stabilization as self_stabilization
from .self_stabilization import stability_quantities as stability_quantities
from .self_stabilization import stable_projection as stable_projection
from .trajectory import Iterates as Iterates
from .trajectory import iterate as iterate

__all__ = [
    "ALGORITHMS",
    "CentralFlowResult",
    "Iterates",
    "LimitingFlow",
    "Lockstep",
    "PhiResult",
    "PreconditionedSharpness",
    "RMSPropCentralFlowResult",
    "SelfStabilizationResult",
    "StabilityQuantities",
    "TangentProjector",
    "central_flow",
    "central_flow_prediction",
    "eos_diagnostics",
    "flow_constant",
    "gd_lockstep",
    "gradient_flow",
    "iterate",
    "limiting_flow",
    "lockstep",
    "moving_average",
    "phi",
    "phi_result",
    "predicted_xy",
    "preconditioned_sharpness",
    "rmsprop_central_flow",
    "self_stabilization",
    "solve_sdcp",
    "stability_quantities",
    "stable_projection",
    "tangent_projector",
    "track_preconditioned_sharpness",
]
