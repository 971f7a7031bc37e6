"""Model zoo: pure ``apply(params, x)`` functions with dict parameters, created by name.

>>> import jax
>>> from eoslab import models
>>> apply, params = models.create("mnist-mlp", jax.random.key(0), (28, 28), 10)
>>> apply(params, jax.numpy.zeros((5, 28, 28))).shape
(5, 10)
"""

from .cnn import CNN as CNN
from .cnn import cnn as cnn
from .layers import ACTIVATIONS as ACTIVATIONS
from .layers import num_params as num_params
from .linear import DeepLinear as DeepLinear
from .linear import deep_linear as deep_linear
from .mlp import MLP as MLP
from .mlp import mlp as mlp
from .registry import MODELS as MODELS
from .registry import ModelSpec as ModelSpec
from .registry import create as create
from .resnet import ResNet as ResNet
from .resnet import resnet as resnet
from .transformer import Transformer as Transformer
from .transformer import transformer as transformer
from .vgg import VGG as VGG
from .vgg import VGG11 as VGG11
from .vgg import vgg as vgg

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "MLP",
    "MODELS",
    "VGG",
    "VGG11",
    "DeepLinear",
    "ModelSpec",
    "ResNet",
    "Transformer",
    "cnn",
    "create",
    "deep_linear",
    "mlp",
    "num_params",
    "resnet",
    "transformer",
    "vgg",
]
