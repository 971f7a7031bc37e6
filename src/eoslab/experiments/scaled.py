"""Presets at the field's scale (issue 28): CIFAR-10 ResNet-20, VGG-11 and ViT-Tiny, and GPT-2
small on a token stream, each with a ``-tiny`` variant of the same code path that runs in
seconds on a CPU (the tests run those).

Data: CIFAR-10 from ``--problem.data-dir`` (python or binary batches) and, for ``gpt-small``, a
text file (``text.txt`` or ``input.txt``) read as bytes (byte-level tokens: no GPT-2 BPE table
is needed offline; the model keeps GPT-2's 50,257-token vocabulary, of which bytes use 256).
Where the files are absent, every preset here runs on a synthetic stand-in of the same shapes
(``if_missing="synthetic"``): it warns, and the run's manifest says ``synthetic_data: true``.

The learning rates are starting points, not tuned on a GPU yet; ``eoslab memory PRESET`` tells
what each step and probe needs in memory before a run starts.
"""

from __future__ import annotations

from ..dynamics.rules import GD, Adam
from ..runner import Probes
from .config import Experiment, ModelProblem

__all__ = ["SCALED_PRESETS", "TINY_OF"]


def _cifar(model: str, n: int, **options: int) -> ModelProblem:
    return ModelProblem(
        model=model,
        dataset="cifar10",
        n=n,
        loss="cross_entropy",
        if_missing="synthetic",
        model_options=options,
    )


def _tokens(n: int, **options: int) -> ModelProblem:
    return ModelProblem(
        model="gpt2-small",
        dataset="text-T256",
        n=n,
        loss="cross_entropy",
        if_missing="synthetic",
        model_options=options,
    )


_SYNTH = " (synthetic stand-in of the same shapes where the files are absent)"
_CIFAR_NETS = {
    "resnet20-cifar": ("resnet20", "CIFAR ResNet-20 (GroupNorm, 269,722 parameters)", 0.05),
    "vgg11-cifar": ("vgg11", "VGG-11 (ReLU, max pool, no BN, 9,225,610 parameters)", 0.02),
}
_TINY_OPTIONS = {"resnet20-cifar": {"depth": 8}, "vgg11-cifar": {"width": 4}}

SCALED_PRESETS: dict[str, Experiment] = {}
for _name, (_model, _what, _lr) in _CIFAR_NETS.items():
    SCALED_PRESETS[_name] = Experiment(
        problem=_cifar(_model, 5000),
        rule=GD(lr=_lr),
        steps=2000,
        probe_every=10,
        description=f"Full-batch GD lr {_lr:g}, {_what}, 5,000 CIFAR-10 images, cross-entropy"
        + _SYNTH
        + "; 50k: --problem.n 50000.",
    )
    SCALED_PRESETS[f"{_name}-sgd"] = Experiment(
        problem=_cifar(_model, 50000),
        rule=GD(lr=_lr),
        batch_size=128,
        steps=5000,
        probe_every=100,
        description=f"SGD lr {_lr:g}, batches of 128, {_what}, all 50,000 CIFAR-10 images, "
        "full-batch sharpness and batch sharpness every 100 steps" + _SYNTH + ".",
    )
    SCALED_PRESETS[f"{_name}-tiny"] = Experiment(
        problem=_cifar(_model, 64, **_TINY_OPTIONS[_name]),
        rule=GD(lr=_lr),
        steps=10,
        probe_every=5,
        description=f"{_name}'s code path in seconds: 64 images, a small {_model} "
        f"({_TINY_OPTIONS[_name]}), 10 GD steps" + _SYNTH + ".",
    )

SCALED_PRESETS["vit-tiny-cifar"] = Experiment(
    problem=_cifar("vit-tiny", 5000),
    rule=GD(lr=0.05),
    steps=2000,
    probe_every=10,
    description="Full-batch GD lr 0.05, ViT-Tiny/4 (64 patches, d 192, 12 layers, 3 heads, "
    "5,362,378 parameters), 5,000 CIFAR-10 images, cross-entropy" + _SYNTH + ".",
)
SCALED_PRESETS["vit-tiny-cifar-tiny"] = Experiment(
    problem=_cifar("vit-tiny", 64, patch=8, d_model=16, n_heads=2, n_layers=1),
    rule=GD(lr=0.05),
    steps=10,
    probe_every=5,
    description="vit-tiny-cifar's code path in seconds: 64 images, a ViT with 8x8 patches, "
    "d 16, 1 layer, 10 GD steps" + _SYNTH + ".",
)
SCALED_PRESETS["gpt-small"] = Experiment(
    problem=_tokens(256),
    rule=Adam(lr=6e-4),
    steps=1000,
    probe_every=50,
    probes=Probes(alignment=False),
    description="GPT-2 small (12 layers, d 768, 12 heads, vocabulary 50,257, 124,439,808 "
    "parameters) on 256 windows of 256 byte tokens of a text file, full-batch Adam lr 6e-4; "
    "sharpness and preconditioned sharpness every 50 steps" + _SYNTH + ".",
)
SCALED_PRESETS["gpt-small-gd"] = Experiment(
    problem=_tokens(256),
    rule=GD(lr=0.1),
    steps=1000,
    probe_every=50,
    probes=Probes(alignment=False),
    description="gpt-small with full-batch GD lr 0.1 instead of Adam" + _SYNTH + ".",
)
SCALED_PRESETS["gpt-small-tiny"] = Experiment(
    problem=_tokens(8, d_model=32, n_heads=2, n_layers=2, vocab=256, max_len=256),
    rule=Adam(lr=1e-3),
    steps=10,
    probe_every=5,
    probes=Probes(alignment=False),
    description="gpt-small's code path in seconds: 8 windows of 256 byte tokens, d 32, 2 "
    "layers, vocabulary 256, tied embeddings, 10 Adam steps" + _SYNTH + ".",
)
del _name, _model, _what, _lr

#: The tiny variant of each full-size preset (what `make test` runs).
TINY_OF = {
    name: f"{name}-tiny"
    for name in ("resnet20-cifar", "vgg11-cifar", "vit-tiny-cifar", "gpt-small")
}
TINY_OF.update({"resnet20-cifar-sgd": "resnet20-cifar-tiny", "vgg11-cifar-sgd": "vgg11-cifar-tiny"})
TINY_OF["gpt-small-gd"] = "gpt-small-tiny"
