"""PyTorch models in eoslab: certified, warm-started curvature inside a PyTorch training loop.

Needs the optional extra (``pip install 'eoslab[torch]'``). `TorchHessianOperator` is the Hessian
of an ``nn.Module`` + loss + data as an eoslab operator (every eoslab solver runs on it);
`SharpnessProbe` is what a training loop calls every few steps.
"""

try:
    import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(
        "eoslab.torch needs PyTorch: pip install 'eoslab[torch]' (or torch>=2.4)"
    ) from e

from .model import TorchModel as TorchModel
from .model import flat_parameters as flat_parameters
from .model import to_jax as to_jax
from .model import to_torch as to_torch
from .operator import TorchHessianOperator as TorchHessianOperator
from .operator import adam_preconditioner as adam_preconditioner
from .operator import adam_threshold as adam_threshold
from .probe import ProbeResult as ProbeResult
from .probe import SharpnessProbe as SharpnessProbe
from .probe import minibatch_sharpness as minibatch_sharpness
from .probe import rule_of as rule_of

__all__ = [
    "ProbeResult",
    "SharpnessProbe",
    "TorchHessianOperator",
    "TorchModel",
    "adam_preconditioner",
    "adam_threshold",
    "minibatch_sharpness",
    "flat_parameters",
    "rule_of",
    "to_jax",
    "to_torch",
]
