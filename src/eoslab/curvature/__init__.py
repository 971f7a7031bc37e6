"""Curvature at a point: operators, eigenpairs, trackers, traces, densities, stableness.

Every solver takes an operator (an `AbstractOperator`: `HessianOperator` $\\nabla^2L(w)$, a
`PreconditionedOperator` $P^{-1/2}HP^{-1/2}$, a `GaussNewtonOperator` $J^\\top H_\\ell J$, or a
subclass of your own), or a loss (a callable ``loss(w)`` or an `eoslab.Objective`) and a point
``w``; an `Objective` alone means its ``w0``.
Products are the operator's own: ``op.mv(v)``, ``op.mm(V)``, ``op.as_matrix()``,
``op.linearize()``. Eigenpairs come from one entry point, `top_eigenpairs` (and
`bottom_eigenpairs`), with a solver Module (`Lanczos`, `LOBPCG`, `Power`) and one result type,
`EigResult`.
"""

from .batch_sharpness import BatchEstimate as BatchEstimate
from .batch_sharpness import batch_lambda_max as batch_lambda_max
from .batch_sharpness import batch_sharpness as batch_sharpness
from .batch_sharpness import gradient_noise_interaction as gradient_noise_interaction
from .density import SpectralDensity as SpectralDensity
from .density import spectral_density as spectral_density
from .eigen import LOBPCG as LOBPCG
from .eigen import AbstractEigenSolver as AbstractEigenSolver
from .eigen import EigResult as EigResult
from .eigen import Lanczos as Lanczos
from .eigen import Power as Power
from .eigen import bottom_eigenpairs as bottom_eigenpairs
from .eigen import top_eigenpairs as top_eigenpairs
from .eigenvalue_gradient import grad_top_eigenvalue as grad_top_eigenvalue
from .lanczos import krylov_top as krylov_top
from .operator import AbstractOperator as AbstractOperator
from .operator import GaussNewtonOperator as GaussNewtonOperator
from .operator import HessianOperator as HessianOperator
from .operator import PreconditionedOperator as PreconditionedOperator
from .operator import as_operator as as_operator
from .proxies import BlockOperator as BlockOperator
from .proxies import CriticalEstimate as CriticalEstimate
from .proxies import critical_sharpness as critical_sharpness
from .proxies import directional_sharpness as directional_sharpness
from .proxies import layer_sharpness as layer_sharpness
from .proxies import parameter_groups as parameter_groups
from .proxies import trace_per_parameter as trace_per_parameter
from .stableness import Stableness as Stableness
from .stableness import stableness as stableness
from .trace import TraceEstimate as TraceEstimate
from .trace import hutchinson_trace as hutchinson_trace
from .tracker import EigenTracker as EigenTracker
from .tracker import align_vectors as align_vectors

__all__ = [
    "AbstractEigenSolver",
    "AbstractOperator",
    "BatchEstimate",
    "BlockOperator",
    "CriticalEstimate",
    "EigResult",
    "EigenTracker",
    "GaussNewtonOperator",
    "HessianOperator",
    "LOBPCG",
    "Lanczos",
    "Power",
    "PreconditionedOperator",
    "SpectralDensity",
    "Stableness",
    "TraceEstimate",
    "align_vectors",
    "as_operator",
    "batch_lambda_max",
    "batch_sharpness",
    "bottom_eigenpairs",
    "critical_sharpness",
    "directional_sharpness",
    "gradient_noise_interaction",
    "grad_top_eigenvalue",
    "hutchinson_trace",
    "krylov_top",
    "layer_sharpness",
    "parameter_groups",
    "spectral_density",
    "stableness",
    "top_eigenpairs",
    "trace_per_parameter",
]
