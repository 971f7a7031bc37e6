r"""Objectives that are means over examples, rewritten as weighted sums.

A *mean objective* is one built by `Objective.from_model` whose loss is a mean over the rows of
the batch of a per-example loss, on a model that treats examples independently:

$$L(w) = \frac1N \sum_{i=1}^N \ell\big(f(\theta(w), x_i), y_i\big)
       \quad(\text{or } \sqrt{\cdot - L_{\min}} \text{ of it}).$$

Accepted losses: `eoslab.losses.mse_half`, ``mse_sum``, ``cross_entropy``, any callable with the
attribute ``mean_over_examples = True``, and `eoslab.losses.SqrtLoss` of one of those (the square
root is taken after the mean). Refused: other losses (a mean cannot be checked from the outside),
objectives not built by ``from_model``, and models with full-batch BatchNorm (``norm="batch"``:
the batch statistics couple the examples).

Such an objective is rewritten as $L(w) = \sum_i m_i\,\ell_i(w)$ with weights $m_i = 1/N$ for
real examples and $m_i = 0$ for padding, which is what micro-batching and padded sharding need.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .errors import ConfigError
from .losses import SqrtLoss, cross_entropy, mse_half, mse_sum, safe_sqrt
from .objective import ModelLoss, Objective

__all__ = [
    "MEAN_LOSSES",
    "MeanParts",
    "batch_size_of",
    "chunk_sum",
    "mean_parts",
    "num_examples",
    "pad_rows",
    "weighted_objective",
]

MEAN_LOSSES: tuple[Callable, ...] = (mse_half, mse_sum, cross_entropy)

_QUALIFY = (
    "an objective from Objective.from_model whose loss is a mean over examples (mse_half, "
    "mse_sum, cross_entropy, SqrtLoss of one of them, or a loss with mean_over_examples=True) "
    "on a model without full-batch BatchNorm"
)


@dataclasses.dataclass(frozen=True)
class MeanParts:
    """The pieces of a mean objective: model, per-example loss, layout and outer transforms."""

    apply: Callable[[Any, Array], Array]
    loss: Callable[[Array, Array], Array]
    unravel: Callable[[Array], Any]
    inner_sqrt_min: float | None  # SqrtLoss inside from_model: sqrt(mean - min)
    outer_sqrt_min: float | None  # Objective.sqrt(): sqrt(L - loss_min)


def _is_mean_loss(loss: Any) -> bool:
    return any(loss is m for m in MEAN_LOSSES) or bool(getattr(loss, "mean_over_examples", False))


def mean_parts(obj: Objective, field: str = "objective") -> MeanParts:
    """Split a mean objective into its parts; `ConfigError` for any other objective."""
    if not isinstance(obj, Objective):
        raise ConfigError(field, type(obj).__name__, "an eoslab.Objective")
    fn, outer = obj.fn, None
    if obj.transform == "sqrt":
        base = obj.base()
        fn, outer = base.fn, base.loss_min
    if isinstance(fn, _WeightedModelLoss):
        return MeanParts(fn.apply, fn.loss, fn.unravel, fn.sqrt_min, outer)
    if not isinstance(fn, ModelLoss):
        raise ConfigError(field, f"<objective with fn {type(fn).__name__}>", _QUALIFY)
    loss, inner = fn.loss, None
    if isinstance(loss, SqrtLoss):
        loss, inner = loss.base, loss.loss_min
    if not _is_mean_loss(loss):
        raise ConfigError(f"{field} loss", getattr(fn.loss, "__name__", fn.loss), _QUALIFY)
    if getattr(fn.apply, "norm", None) == "batch":
        raise ConfigError(
            f"{field} model",
            type(fn.apply).__name__ + "(norm='batch')",
            _QUALIFY,
            "Full-batch BatchNorm couples the examples; shard it with an example count divisible "
            "by the devices instead (sharding is exact for any objective).",
        )
    return MeanParts(fn.apply, loss, fn.unravel, inner, outer)


def chunk_sum(apply, loss, params, x, y, m) -> Array:
    r"""$\sum_i m_i\,\ell(f(\theta, x_i), y_i)$ over one block of examples."""
    out = apply(params, x)
    per = jax.vmap(lambda o, t: loss(o[None], t[None]))(out, y)
    return jnp.sum(m.astype(per.dtype) * per)


@dataclasses.dataclass(frozen=True)
class _WeightedModelLoss:
    r"""$\sum_i m_i \ell_i(w)$, optionally in micro-batches of ``batch_size`` rows.

    With ``batch_size`` the rows are split into ``N/B`` blocks and summed in one ``lax.scan`` whose
    body is rematerialised (``jax.checkpoint``): reverse mode stores only the running sum per
    block and recomputes each block's activations, so the working memory of the loss, gradient
    and HVP is that of one block (cost: one extra forward pass per gradient).
    """

    apply: Callable[[Any, Array], Array]
    loss: Callable[[Array, Array], Array]
    unravel: Callable[[Array], Any]
    sqrt_min: float | None = None
    batch_size: int | None = None

    def __call__(self, w: Array, data: Any) -> Array:
        params = eqx.combine(self.unravel(w), data["frozen"])
        x, y, m = data["x"], data["y"], data["weight"]
        chunk = lambda p, xb, yb, mb: chunk_sum(self.apply, self.loss, p, xb, yb, mb)
        if self.batch_size is None or self.batch_size >= x.shape[0]:
            total = chunk(params, x, y, m)
        else:
            b = self.batch_size
            nb = x.shape[0] // b
            # block k holds rows {j * nb + k}: with the rows sharded in contiguous chunks over
            # the devices (B divisible by their number), every block is spread over all of them
            blocks = tuple(jnp.swapaxes(a.reshape((b, nb, *a.shape[1:])), 0, 1) for a in (x, y, m))
            body_fn = jax.checkpoint(chunk)

            def body(acc, blk):
                return acc + body_fn(params, *blk), None

            total, _ = jax.lax.scan(body, jnp.zeros((), w.dtype), blocks)
        if self.sqrt_min is not None:
            total = safe_sqrt(total - self.sqrt_min)
        return total


def pad_rows(a: Any, n_to: int) -> np.ndarray:
    """``a`` with zero rows appended along axis 0 up to ``n_to`` rows (host copy)."""
    a = np.asarray(a)
    extra = n_to - a.shape[0]
    if extra <= 0:
        return a
    return np.concatenate([a, np.zeros((extra, *a.shape[1:]), a.dtype)], axis=0)


def weighted_objective(
    obj: Objective, multiple: int, batch_size: int | None = None, field: str = "objective"
) -> Objective:
    r"""The mean objective ``obj`` as $\sum_i m_i\ell_i$, its examples zero-padded to a multiple
    of ``multiple`` (padding weight 0), micro-batched by ``batch_size`` if given.

    With micro-batches, $B$ is rounded up to a multiple of ``multiple`` (the devices, when
    sharding) and the rows are padded to a multiple of $B$, so every block is split evenly over
    the devices.

    Equal to ``obj`` in value and in every derivative (up to floating-point summation order).
    """
    parts = mean_parts(obj, field)
    fn = obj.base().fn
    if batch_size is None and isinstance(fn, _WeightedModelLoss):
        batch_size = fn.batch_size  # keep an existing micro-batching
    if batch_size is not None:
        batch_size = -(-batch_size // multiple) * multiple
        multiple = batch_size
    data = obj.data
    x, y = data["x"], data["y"]
    if "weight" in data:
        m = data["weight"]
    else:
        m = np.full((int(x.shape[0]),), 1.0 / int(x.shape[0]), np.dtype(obj.dtype))
    n = int(x.shape[0])
    n_to = -(-n // multiple) * multiple
    new_data = {
        "x": jnp.asarray(pad_rows(x, n_to)),
        "y": jnp.asarray(pad_rows(y, n_to)),
        "weight": jnp.asarray(pad_rows(m, n_to)),
        "frozen": data["frozen"],
    }
    base = _WeightedModelLoss(
        parts.apply, parts.loss, parts.unravel, parts.inner_sqrt_min, batch_size
    )
    if parts.outer_sqrt_min is not None:  # sqrt(L - L_min) of the rewritten L
        return dataclasses.replace(obj.base(), fn=base, data=new_data).sqrt()
    return dataclasses.replace(obj, fn=base, data=new_data)


def num_examples(obj: Objective) -> int:
    """$N$, the real (unpadded) examples of a from_model-layout objective."""
    data = obj.data
    if "weight" in data:
        return int(np.count_nonzero(np.asarray(data["weight"])))
    return int(data["x"].shape[0])


def batch_size_of(obj: Objective) -> int | None:
    """The micro-batch size of an objective made by `microbatched` (None for any other)."""
    fn = obj.base().fn
    return fn.batch_size if isinstance(fn, _WeightedModelLoss) else None
