"""Input-shape handling shared by the convolutional families."""

from __future__ import annotations

from ..errors import ConfigError


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(H, W, C)`` from an input shape ``(H, W)`` (one channel added) or ``(H, W, C)``."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        return (shape[0], shape[1], 1)
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    raise ConfigError("input_shape", input_shape, "(H, W) or (H, W, C) for a convolutional model")
