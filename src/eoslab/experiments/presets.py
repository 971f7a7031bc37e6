"""Named experiments (Cohen et al. 2021's core figure and its variants, lockstep comparisons with
the theories' flows), as typed configs.

Most presets train the fully-connected tanh net (widths 200, 200) on 4,000 MNIST-1D examples with
MSE (``mse_half``), full batch; ``sgd-eoss`` runs it with SGD on batches of 32 and ``transformer``
trains a small causal transformer on a synthetic sort task. Pick one with ``eoslab run NAME`` and
override any field (``--rule.lr 0.2``, ``--steps 500``, ``--compare.cf.substeps 8``); ``eoslab
list`` prints them.
"""

from __future__ import annotations

from ..dynamics.central_flow import CentralFlow
from ..dynamics.gradient_flow import GradientFlow
from ..dynamics.limiting_flow import ProjectedLimitingFlow
from ..dynamics.rules import GD, NormalizedGD, SqrtLossGD
from ..errors import ConfigError
from ..runner import Probes
from .config import (
    Experiment,
    ModelProblem,
    QuadraticProblem,
    ToyMLPProblem,
    ValleyProblem,
)
from .scaled import SCALED_PRESETS

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
    "sgd-eoss": Experiment(
        problem=_NET,
        rule=GD(lr=0.1),
        batch_size=32,
        steps=2000,
        probe_every=50,
        description="SGD, batches of 32, lr 0.1 (eos-gd's net and lr; Andreyev & Beneventano's "
        "edge of stochastic stability): the full-batch sharpness levels off at ~11, well below "
        "the 2/lr = 20 GD settles at, with the batch sharpness E_B[g_B^T H_B g_B/|g_B|^2] "
        "measured beside it (~4-5 from step ~800; ~5 minutes on 2 CPU cores).",
    ),
    "transformer": Experiment(
        problem=ModelProblem(
            model="transformer", dataset="sort-L8-V32", n=1024, loss="cross_entropy"
        ),
        rule=GD(lr=0.3),
        steps=600,
        probe_every=10,
        description="Full-batch GD lr 0.3 on sorting 8 tokens of 32 (1,024 sequences) with a "
        "pre-LN causal transformer (d_model 32, 2 layers, cross-entropy): progressive sharpening "
        "from 0.44 to 2/lr = 6.7 by step ~210, then the edge of stability: a catapult, then the "
        "loss falls non-monotonically while the sharpness stays at 7-11, above 2/lr "
        "(~10 minutes on 2 CPU cores).",
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
    "gd-central-flow": Experiment(
        problem=ModelProblem(model="fc-tanh", dataset="mnist1d", n=1000, loss="mse_half"),
        rule=GD(lr=0.1),
        compare={"gf": GradientFlow(lr=0.1), "cf": CentralFlow(lr=0.1)},
        steps=1500,
        probe_every=10,
        description="GD, gradient flow and GD's central flow in lockstep from one start (1,000 "
        "MNIST-1D examples): GD leaves gradient flow once it reaches 2/lr, the central flow "
        "stays with it and predicts its time-averaged loss.",
    ),
    "ngd-limiting-flow": Experiment(
        problem=ValleyProblem(x0=2.0, y0=0.3, extra=1),
        rule=NormalizedGD(lr=0.02),
        compare={"flow": ProjectedLimitingFlow(algorithm="normalized_gd", lr=0.02)},
        steps=2500,
        probe_every=50,
        probes=Probes(k=2, tol=1e-6, phi=True),
        dtype="float64",
        description="Normalized GD beside its limiting flow dX/dtau = -1/4 P grad log lambda_1 on "
        "the paper's valley (1 + x^2) y^2 + 0.3 z^2 (tau = lr^2 t = 1): Phi(x_t) follows X(tau) "
        "to O(lr) while the sharpness falls (seconds).",
    ),
    **SCALED_PRESETS,  # CIFAR-10 and GPT-2 small at the field's scale (scaled.py)
}


def get_preset(name: str) -> Experiment:
    """The preset called ``name``."""
    if name not in PRESETS:
        raise ConfigError("preset", name, "one of " + ", ".join(PRESETS))
    return PRESETS[name]
