"""Shape checks shared by the model families: image input shapes and layer widths."""

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


def check_widths(widths, field: str = "widths") -> tuple[int, ...]:
    """``widths`` as a tuple of positive ints (hidden units or channels per layer)."""
    try:
        ws = tuple(int(w) for w in widths)
    except TypeError as exc:
        raise ConfigError(field, widths, "a sequence of positive ints") from exc
    if any(w <= 0 for w in ws) or any(int(w) != w for w in widths):
        raise ConfigError(field, widths, "a sequence of positive ints")
    return ws
