"""Curvature of a loss at a point: HVPs, eigenpairs, trackers, traces, densities, stableness.

Every function takes either a callable ``loss(w)`` or an `eoslab.Objective`.
"""

from .density import SpectralDensity as SpectralDensity
from .density import spectral_density as spectral_density
from .eigen import METHODS as METHODS
from .eigen import EigResult as EigResult
from .eigen import bottom_eigenpairs as bottom_eigenpairs
from .eigen import top_eigenpairs as top_eigenpairs
from .hvp import grad_top_eigenvalue as grad_top_eigenvalue
from .hvp import hessian_dense as hessian_dense
from .hvp import hvp as hvp
from .hvp import hvp_block as hvp_block
from .stableness import Stableness as Stableness
from .stableness import stableness as stableness
from .trace import TraceEstimate as TraceEstimate
from .trace import hutchinson_trace as hutchinson_trace
from .tracker import EigenTracker as EigenTracker
from .tracker import align_vectors as align_vectors

__all__ = [
    "METHODS",
    "EigResult",
    "EigenTracker",
    "SpectralDensity",
    "Stableness",
    "TraceEstimate",
    "align_vectors",
    "bottom_eigenpairs",
    "grad_top_eigenvalue",
    "hessian_dense",
    "hutchinson_trace",
    "hvp",
    "hvp_block",
    "spectral_density",
    "stableness",
    "top_eigenpairs",
]
