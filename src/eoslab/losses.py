r"""Losses of model outputs $f \in \mathbb{R}^{N \times k}$ against labels, as means over examples.

Each loss is ``loss(outputs, labels) -> scalar``. ``labels`` are either integer class labels of
shape ``(N,)`` (one-hot encoded inside, $y_i = e_{c_i}$) or real targets of shape ``(N, k)``.
The two MSE conventions of the literature are named explicitly:

* ``mse_half``: $\frac1N \sum_i \frac12 \sum_c (f_{ic} - y_{ic})^2$ (Cohen et al. 2021);
* ``mse_sum``: $\frac1N \sum_i \sum_c (f_{ic} - y_{ic})^2$ (Arora et al. 2022), twice ``mse_half``.

Every loss is a module-level function or a frozen dataclass, hence hashable (jit caches stay warm).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array

from .errors import ConfigError

__all__ = [
    "LOSSES",
    "SqrtLoss",
    "accuracy",
    "cross_entropy",
    "get",
    "mse_half",
    "mse_sum",
    "safe_sqrt",
    "sqrt",
]

Loss = Callable[[Array, Array], Array]


def safe_sqrt(u: Array) -> Array:
    r"""$\sqrt{\max(u, 0)}$ with derivative $1/(2\sqrt u)$ for $u>0$ and $0$ for $u \le 0$.

    At the minimum ($u=0$) the value is 0 and the gradient is the zero subgradient, never NaN;
    higher derivatives are finite as well (the double-`where` keeps NaN out of the backward pass).
    """
    pos = u > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, u, 1.0)), 0.0)


def _targets(outputs: Array, labels: Array) -> Array:
    """One-hot targets for integer labels ``(N,)``; real targets ``(N, k)`` pass through."""
    labels = jnp.asarray(labels)
    if labels.ndim == outputs.ndim - 1 and jnp.issubdtype(labels.dtype, jnp.integer):
        return jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype)
    if labels.shape != outputs.shape:
        raise ConfigError(
            "labels.shape",
            labels.shape,
            f"integer labels {outputs.shape[:-1]} or targets {outputs.shape}",
        )
    return labels.astype(outputs.dtype)


def mse_half(outputs: Array, labels: Array) -> Array:
    r"""$\frac1N \sum_i \frac12 \|f(x_i) - y_i\|^2$ (Cohen et al. 2021)."""
    y = _targets(outputs, labels)
    return 0.5 * jnp.mean(jnp.sum((outputs - y) ** 2, axis=-1))


def mse_sum(outputs: Array, labels: Array) -> Array:
    r"""$\frac1N \sum_i \|f(x_i) - y_i\|^2$ (Arora et al. 2022): ``2 * mse_half``."""
    y = _targets(outputs, labels)
    return jnp.mean(jnp.sum((outputs - y) ** 2, axis=-1))


def cross_entropy(outputs: Array, labels: Array) -> Array:
    r"""$\frac1N \sum_i -\log \mathrm{softmax}(f(x_i))_{c_i}$; soft targets give
    $-\frac1N\sum_i \sum_c y_{ic} \log \mathrm{softmax}(f(x_i))_c$."""
    y = _targets(outputs, labels)
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(outputs, axis=-1), axis=-1))


@dataclasses.dataclass(frozen=True)
class SqrtLoss:
    r"""$\sqrt{\ell(f, y) - \ell_{\min}}$ of a base loss $\ell$ (gradient 0, never NaN, at the
    minimum)."""

    base: Loss
    loss_min: float = 0.0

    def __call__(self, outputs: Array, labels: Array) -> Array:
        return safe_sqrt(self.base(outputs, labels) - self.loss_min)


def sqrt(loss: Loss, loss_min: float = 0.0) -> SqrtLoss:
    r"""The transform $\ell \mapsto \sqrt{\ell - \ell_{\min}}$ of any loss."""
    if not callable(loss):
        raise ConfigError("loss", loss, "a callable loss(outputs, labels) -> scalar")
    return SqrtLoss(loss, float(loss_min))


def accuracy(outputs: Array, labels: Array) -> Array:
    r"""$\frac1N \sum_i [\arg\max_c f_{ic} = c_i]$; one-hot or soft targets use their argmax."""
    labels = jnp.asarray(labels)
    if labels.ndim == outputs.ndim:
        labels = jnp.argmax(labels, axis=-1)
    return jnp.mean(jnp.argmax(outputs, axis=-1) == labels).astype(outputs.dtype)


LOSSES: dict[str, Loss] = {
    "mse_half": mse_half,
    "mse_sum": mse_sum,
    "cross_entropy": cross_entropy,
    "sqrt_mse_half": SqrtLoss(mse_half),
    "sqrt_mse_sum": SqrtLoss(mse_sum),
    "sqrt_cross_entropy": SqrtLoss(cross_entropy),
}


def get(name: str) -> Loss:
    """The loss called ``name`` (a key of `LOSSES`)."""
    if name not in LOSSES:
        raise ConfigError("loss", name, "one of " + ", ".join(map(repr, LOSSES)))
    return LOSSES[name]
