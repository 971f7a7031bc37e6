"""Typed experiment configs, named presets, and the builder that turns them into objects."""

from .build import Built as Built
from .build import build as build
from .config import (  # noqa: F401
    GD as GD,
)
from .config import (
    Adam as Adam,
)
from .config import (
    Experiment as Experiment,
)
from .config import (
    HeavyBall as HeavyBall,
)
from .config import (
    ModelProblem as ModelProblem,
)
from .config import (
    Nesterov as Nesterov,
)
from .config import (
    NormalizedGD as NormalizedGD,
)
from .config import (
    ProbeConfig as ProbeConfig,
)
from .config import (
    QuadraticProblem as QuadraticProblem,
)
from .config import (
    RMSProp as RMSProp,
)
from .config import (
    SqrtLossGD as SqrtLossGD,
)
from .config import (
    StopConfig as StopConfig,
)
from .config import (
    ToyMLPProblem as ToyMLPProblem,
)
from .config import (
    from_dict as from_dict,
)
from .config import (
    to_dict as to_dict,
)
from .presets import DEFAULT_PRESET as DEFAULT_PRESET
from .presets import PRESETS as PRESETS
from .presets import get_preset as get_preset

__all__ = [
    "DEFAULT_PRESET",
    "GD",
    "PRESETS",
    "Adam",
    "Built",
    "Experiment",
    "HeavyBall",
    "ModelProblem",
    "Nesterov",
    "NormalizedGD",
    "ProbeConfig",
    "QuadraticProblem",
    "RMSProp",
    "SqrtLossGD",
    "StopConfig",
    "ToyMLPProblem",
    "build",
    "from_dict",
    "get_preset",
    "to_dict",
]
