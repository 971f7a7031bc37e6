r"""Synthetic stand-ins for on-disk image datasets: the same shapes, sizes and label range.

``cifar10-synthetic`` holds 50,000 + 10,000 uint8 images ``(32, 32, 3)`` and labels 0..9: image
$i$ of class $c_i$ is $\mathrm{template}_{c_i} + \mathrm{noise}_i$, with ten smooth class
templates (8x8 random patterns upsampled 4x, values 0..191) and uniform noise 0..63, all drawn
from a fixed seed. It stands in for CIFAR-10 where the files are absent: the memory, compile and
step times of a run on it are those of a run on CIFAR-10, its dynamics are not.
"""

from __future__ import annotations

import functools

import numpy as np

from .specs import DatasetSpec, RawData

__all__ = ["SPECS", "synthetic_images"]


def synthetic_images(
    n: int, shape: tuple[int, int, int], classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images of ``shape`` and their labels, as the module docstring says."""
    h, w, c = shape
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 192, size=(classes, max(1, h // 4), max(1, w // 4), c), dtype=np.uint8)
    templates = np.repeat(np.repeat(low, 4, axis=1), 4, axis=2)[:, :h, :w, :]
    y = rng.integers(0, classes, size=n)
    x = templates[y] + rng.integers(0, 64, size=(n, h, w, c), dtype=np.uint8)
    return x, y


@functools.cache
def _cifar10_synthetic() -> RawData:
    x, y = synthetic_images(60000, (32, 32, 3), 10)
    return x[:50000], y[:50000], x[50000:], y[50000:]


SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "cifar10-synthetic",
        "generated (eoslab.data.synthetic_images)",
        50000,
        10000,
        (32, 32, 3),
        10,
        lambda _: _cifar10_synthetic(),
        lambda _: "built in",
        description="synthetic stand-in for CIFAR-10: class templates plus noise, same shapes",
    ),
)
