"""Model zoo: pure ``apply(params, x)`` functions with dict parameters, created by name.

``create(name, key, input_shape, num_classes, **options)`` is the one way to build a model: it
returns the architecture (``MLP``, ``CNN``, ``VGG``, ``ResNet``, ``Transformer``, ``DeepLinear``:
hashable ``apply`` callables) and its initial parameters. ``MODELS`` lists the names and options.

>>> import jax
>>> from eoslab import models
>>> apply, params = models.create("mnist-mlp", jax.random.key(0), (28, 28), 10)
>>> apply(params, jax.numpy.zeros((5, 28, 28))).shape
(5, 10)
"""

from .cnn import CNN as CNN
from .layers import ACTIVATIONS as ACTIVATIONS
from .layers import num_params as num_params
from .linear import DeepLinear as DeepLinear
from .mlp import MLP as MLP
from .registry import MODELS as MODELS
from .registry import ModelSpec as ModelSpec
from .registry import create as create
from .resnet import ResNet as ResNet
from .transformer import Transformer as Transformer
from .vgg import VGG as VGG
from .vgg import VGG11 as VGG11
from .vit import ViT as ViT

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "MLP",
    "MODELS",
    "VGG",
    "VGG11",
    "ViT",
    "DeepLinear",
    "ModelSpec",
    "ResNet",
    "Transformer",
    "create",
    "num_params",
]
