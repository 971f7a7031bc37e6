"""Named experiments (Cohen et al. 2021's core figure and its variants), as typed configs.

Every preset trains the fully-connected tanh net (widths 200, 200) on 4,000 MNIST-1D examples with
MSE (``mse_half``), full batch; they differ in the update rule. Pick one with ``eoslab run NAME``
and override fields (``--lr``, ``--steps``); ``eoslab list`` prints them.
"""

from __future__ import annotations

from .config import (
    GD,
    Experiment,
    ModelProblem,
    NormalizedGD,
    QuadraticProblem,
    SqrtLossGD,
    ToyMLPProblem,
)

__all__ = ["PRESETS", "DEFAULT_PRESET", "get_preset"]

_NET = ModelProblem(model="fc-tanh", dataset="mnist1d", n=4000, loss="mse_half")

DEFAULT_PRESET = "eos-gd"

PRESETS: dict[str, Experiment] = {
    "eos-gd": Experiment(
        problem=_NET,
        rule=GD(lr=0.1),
        steps=2500,
        probe_every=10,
        description="GD lr 0.1: progressive sharpening from ~7 to 2/lr = 20 by step ~1,000, "
        "then the edge of stability (sharpness hovers at 20, the loss keeps falling).",
    ),
    **{
        f"gd-lr{lr:g}": Experiment(
            problem=_NET,
            rule=GD(lr=lr),
            steps=steps,
            probe_every=10,
            description=f"GD lr {lr:g} (threshold 2/lr = {2 / lr:g}); Cohen et al.'s core figure.",
        )
        for lr, steps in ((0.02, 4000), (0.05, 3000), (0.1, 2500), (0.2, 2000))
    },
    "normalized-gd": Experiment(
        problem=_NET,
        rule=NormalizedGD(lr=0.003),
        steps=2500,
        probe_every=10,
        description="Normalized GD (steps of length lr): the effective LR is lr/|g|; sharpness "
        "rises to 2/lr_eff = 2|g|/lr by step ~1,100, then sticks to it.",
    ),
    "sqrt-loss-gd": Experiment(
        problem=_NET,
        rule=SqrtLossGD(lr=0.15),
        steps=2500,
        probe_every=10,
        description="GD on sqrt(L): effective LR lr/(2 sqrt L) grows as L falls; sharpness "
        "rises to 2/lr_eff = 4 sqrt(L)/lr by step ~650, then falls along with it.",
    ),
    "quadratic-diverge": Experiment(
        problem=QuadraticProblem(dim=10, top=25.0, bottom=1.0),
        rule=GD(lr=0.1),
        steps=1000,
        probe_every=10,
        description="GD on a quadratic with lr * lambda_1 = 2.5 > 2: diverges (a check).",
    ),
    "toy": Experiment(
        problem=ToyMLPProblem(),
        rule=GD(lr=0.5),
        steps=500,
        probe_every=10,
        description="A tiny synthetic tanh net (seconds): a smoke test of the whole pipeline.",
    ),
}


def get_preset(name: str) -> Experiment:
    from ..errors import ConfigError

    if name not in PRESETS:
        raise ConfigError("preset", name, "one of " + ", ".join(PRESETS))
    return PRESETS[name]
