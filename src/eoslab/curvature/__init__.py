"""Curvature of a loss at a point: HVPs, eigenpairs, trackers, traces, densities, stableness.

Every function takes either a callable ``loss(w)`` or an `eoslab.Objective`.
"""

from .eigen import METHODS as METHODS
from .eigen import EigResult as EigResult
from .eigen import bottom_eigenpairs as bottom_eigenpairs
from .eigen import top_eigenpairs as top_eigenpairs
from .hvp import grad_top_eigenvalue as grad_top_eigenvalue
from .hvp import hessian_dense as hessian_dense
from .hvp import hvp as hvp
from .hvp import hvp_block as hvp_block

__all__ = [
    "METHODS",
    "EigResult",
    "bottom_eigenpairs",
    "grad_top_eigenvalue",
    "hessian_dense",
    "hvp",
    "hvp_block",
    "top_eigenpairs",
]
