"""Named models: `MODELS` (name -> `ModelSpec`) and ``create(name, key, input_shape,
num_classes, **options) -> (apply, params)``."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from jaxtyping import Array

from ..errors import ConfigError
from .cnn import cnn
from .linear import deep_linear
from .mlp import mlp
from .resnet import resnet
from .transformer import transformer
from .vgg import vgg
from .vit import vit

__all__ = ["MODELS", "ModelSpec", "create", "int_option_names"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model family and its default options; ``create`` lets every option be overridden."""

    factory: Callable[..., tuple[Callable, Any]]
    options: dict
    description: str


def _fc(act: str) -> ModelSpec:
    return ModelSpec(
        mlp,
        {"widths": (200, 200), "activation": act},
        f"fully connected, widths 200,200, {act} (Cohen et al. 2021)",
    )


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(mlp, {}, "fully connected; options widths, activation, bias, head_init_std"),
    **{f"fc-{a}": _fc(a) for a in ("relu", "elu", "tanh", "hardtanh", "softplus")},
    **{
        f"fc-tanh-depth{d}": ModelSpec(
            mlp,
            {"widths": (200,) * d, "activation": "tanh"},
            f"fully connected, {d} hidden layer(s) of width 200, tanh",
        )
        for d in (1, 2, 3, 4)
    },
    **{
        f"cnn-{a}": ModelSpec(
            cnn,
            {"widths": (32, 32), "activation": a, "pool": "max"},
            f"2 conv3x3 layers of width 32, {a}, 2x2 max pool, linear head",
        )
        for a in ("relu", "elu", "tanh")
    },
    **{
        f"cnn-avgpool-{a}": ModelSpec(
            cnn,
            {"widths": (32, 32), "activation": a, "pool": "avg"},
            f"2 conv3x3 layers of width 32, {a}, 2x2 average pool",
        )
        for a in ("relu", "elu", "tanh")
    },
    "vgg11": ModelSpec(
        vgg,
        {"activation": "relu", "pool": "max", "norm": "none"},
        "VGG-11, ReLU, max pool, no BatchNorm, no dropout, 512->k head",
    ),
    "vgg11-bn": ModelSpec(
        vgg,
        {"activation": "relu", "pool": "max", "norm": "batch"},
        "VGG-11 with full-batch BatchNorm (batch statistics, no running averages)",
    ),
    "vgg11-av": ModelSpec(
        vgg,
        {"activation": "gelu", "pool": "avg", "norm": "none", "head_init_std": 0.01},
        "VGG-11-AV: 2x2 avg pool, GELU, no BN, 512->k head ~ N(0, 0.01^2), "
        "zero bias (freeze it with frozen=('head',))",
    ),
    "resnet20": ModelSpec(
        resnet,
        {"depth": 20, "norm": "group"},
        "CIFAR ResNet-20, GroupNorm (norm='layer' or 'batch' available)",
    ),
    "resnet32": ModelSpec(
        resnet,
        {"depth": 32, "norm": "group"},
        "CIFAR ResNet-32, GroupNorm (norm='layer' or 'batch' available)",
    ),
    "deep-linear": ModelSpec(
        deep_linear,
        {"layers": 20, "width": 50, "bias": False},
        "deep linear net, 20 layers of width 50, no bias",
    ),
    "tanh-regression": ModelSpec(
        mlp,
        {"widths": (100,), "activation": "tanh"},
        "1-hidden-layer tanh net, width 100, for regression",
    ),
    "mnist-mlp": ModelSpec(
        mlp, {"widths": (128,), "activation": "gelu"}, "MNIST net 784-128-10 with GELU"
    ),
    "transformer": ModelSpec(
        transformer,
        {"d_model": 32, "n_heads": 2, "n_layers": 2, "activation": "gelu"},
        "pre-LN causal decoder, d_model 32, 2 heads, 2 layers, GELU, learned positions; "
        "input_shape (T,) token ids, num_classes the vocabulary, outputs (N, T, V)",
    ),
    "gpt2-small": ModelSpec(
        transformer,
        {
            "d_model": 768,
            "n_heads": 12,
            "n_layers": 12,
            "activation": "gelu",
            "embed_std": 0.02,
            "max_len": 1024,
            "vocab": 50257,
            "tie_embeddings": True,
            "scan_layers": True,
        },
        "GPT-2 small: pre-LN causal decoder, d_model 768, 12 heads, 12 layers, vocabulary "
        "50,257, 1,024 positions, logits off the tied token embeddings (124,439,808 parameters); "
        "the blocks stacked under one lax.scan",
    ),
    "vit-tiny": ModelSpec(
        vit,
        {"patch": 4, "d_model": 192, "n_heads": 3, "n_layers": 12, "scan_layers": True},
        "ViT-Tiny/4 for 32x32 images: 64 patches, d_model 192, 3 heads, 12 layers, mean pool "
        "(5,362,378 parameters on CIFAR-10); the blocks stacked under one lax.scan",
    ),
}


def _options_of(factory: Callable) -> list[str]:
    sig = inspect.signature(factory)
    return [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def int_option_names(name: str) -> list[str] | None:
    """The integer options (annotated ``int`` or ``int | None``) `create` accepts for model
    ``name``; None for an unknown name."""
    if name not in MODELS:
        return None
    sig = inspect.signature(MODELS[name].factory)
    return [
        p.name
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and str(p.annotation) in ("int", "int | None")
    ]


def create(
    name: str,
    key: Array,
    input_shape: tuple[int, ...],
    num_classes: int,
    **options: Any,
) -> tuple[Callable[[Any, Array], Array], Any]:
    """Build the model ``name``: returns a pure ``apply(params, x)`` and its initial ``params``.

    ``apply`` maps a batch ``x`` of shape ``(N, *input_shape)`` to outputs ``(N, num_classes)``
    (``"transformer"``: token ids ``(N, T)`` to logits ``(N, T, num_classes)``, one per position);
    ``params`` is a dict pytree whose top-level keys name the parameter groups (the linear output
    layer is always ``"head"``). ``options`` override the preset's defaults.

    Raises:
        ConfigError: unknown name or option, or an option value the family does not accept.
    """
    if name not in MODELS:
        raise ConfigError("model", name, "one of " + ", ".join(map(repr, sorted(MODELS))))
    spec = MODELS[name]
    accepted = _options_of(spec.factory)
    for opt in options:
        if opt not in accepted:
            raise ConfigError(
                f"model option {opt!r}",
                options[opt],
                f"an option of {name!r}: " + ", ".join(accepted),
            )
    shape = tuple(input_shape)
    if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ConfigError("input_shape", input_shape, "a tuple of positive ints")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError("num_classes", num_classes, "an int >= 1")
    return spec.factory(key, shape, num_classes, **{**spec.options, **options})
