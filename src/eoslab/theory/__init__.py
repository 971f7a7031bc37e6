"""The paper's theory, computable: Phi, the tangent projector, the limiting flows, EoS diagnostics.

Arora, Li, Panigrahi, "Understanding Gradient Descent on Edge of Stability in Deep Learning"
(ICML 2022); formulas in ``shared/docs/theory.md`` of the project.
"""

from .diagnostics import eos_diagnostics as eos_diagnostics
from .flows import ALGORITHMS as ALGORITHMS
from .flows import LimitingFlow as LimitingFlow
from .flows import flow_constant as flow_constant
from .flows import limiting_flow as limiting_flow
from .lockstep import Lockstep as Lockstep
from .lockstep import lockstep as lockstep
from ..dynamics.manifold import TangentProjector as TangentProjector
from ..dynamics.manifold import tangent_projector as tangent_projector
from ..dynamics.phi import PhiResult as PhiResult
from ..dynamics.phi import gradient_flow as gradient_flow
from ..dynamics.phi import phi as phi
from ..dynamics.phi import phi_result as phi_result
from .trajectory import Iterates as Iterates
from .trajectory import iterate as iterate

__all__ = [
    "ALGORITHMS",
    "Iterates",
    "LimitingFlow",
    "Lockstep",
    "PhiResult",
    "TangentProjector",
    "eos_diagnostics",
    "flow_constant",
    "gradient_flow",
    "iterate",
    "limiting_flow",
    "lockstep",
    "phi",
    "phi_result",
    "tangent_projector",
]
from .central_flow import CentralFlow as CentralFlow
from .central_flow import PreconditionedSharpness as PreconditionedSharpness
from .central_flow import RMSPropCentralFlow as RMSPropCentralFlow
from .central_flow import adam_threshold as adam_threshold
from .central_flow import central_flow as central_flow
from .central_flow import central_flow_prediction as central_flow_prediction
from .central_flow import heavy_ball_threshold as heavy_ball_threshold
from .central_flow import preconditioned_sharpness as preconditioned_sharpness
from .central_flow import rmsprop_central_flow as rmsprop_central_flow
from .central_flow import solve_sdcp as solve_sdcp
from .central_flow import track_preconditioned_sharpness as track_preconditioned_sharpness
from .self_stabilization import SelfStabilization as SelfStabilization
from .self_stabilization import StabilityQuantities as StabilityQuantities
from .self_stabilization import gd_lockstep as gd_lockstep
from .self_stabilization import moving_average as moving_average
from .self_stabilization import predicted_xy as predicted_xy
from .self_stabilization import self_stabilization as self_stabilization
from .self_stabilization import stability_quantities as stability_quantities
from .self_stabilization import stable_projection as stable_projection

__all__ += [
    "CentralFlow",
    "PreconditionedSharpness",
    "RMSPropCentralFlow",
    "SelfStabilization",
    "StabilityQuantities",
    "adam_threshold",
    "central_flow",
    "central_flow_prediction",
    "gd_lockstep",
    "heavy_ball_threshold",
    "moving_average",
    "predicted_xy",
    "preconditioned_sharpness",
    "rmsprop_central_flow",
    "self_stabilization",
    "solve_sdcp",
    "stability_quantities",
    "stable_projection",
    "track_preconditioned_sharpness",
]
