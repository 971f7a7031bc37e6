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
from .manifold import TangentProjector as TangentProjector
from .manifold import tangent_projector as tangent_projector
from .phi import PhiResult as PhiResult
from .phi import gradient_flow as gradient_flow
from .phi import phi as phi
from .phi import phi_result as phi_result
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
