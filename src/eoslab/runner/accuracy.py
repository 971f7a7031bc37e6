r"""The training-accuracy probe of a classifier, on by default in `train` and `eoslab run`.

For an objective built by `Objective.from_model` on a dataset with integer class labels
$c_i$, the probe reports $\frac1N \sum_i [\arg\max_c f_c(\theta(w), x_i) = c_i]$ at probed
steps (column ``accuracy``). Sequence tasks (integer labels $c_{it}$ per position, logits
$f_{t,c}$; ``eoslab.data`` datasets of task ``"sequence"``) get the per-token accuracy
$\frac1{NT} \sum_{i,t} [\arg\max_c f_{t,c}(\theta(w), x_i) = c_{it}]$. Other objectives
(regression targets, plain functions of $w$) have no accuracy and get no probe.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..losses import accuracy
from ..objective import ModelLoss, Objective

__all__ = ["AccuracyProbe", "accuracy_probe"]


@functools.partial(jax.jit, static_argnums=0)
def _accuracy(fn: ModelLoss, w: Array, data: Any) -> Array:
    params = eqx.combine(fn.unravel(w), data["frozen"])
    return accuracy(fn.apply(params, data["x"]), data["y"])


@dataclasses.dataclass(frozen=True, eq=False)
class AccuracyProbe:
    r"""Custom probe ``probe(w, objective, cache) -> {"accuracy": a}``, with
    $a = \frac1N \sum_i [\arg\max_c f_c(\theta(w), x_i) = c_i]$ over the training examples of the
    model objective it was made from (compiled once per model; the data stay traced arguments).
    """

    fn: ModelLoss
    data: Any

    def __call__(self, w: Float[Array, " d"], objective: Objective, cache: dict) -> dict:
        del objective, cache
        return {"accuracy": float(_accuracy(self.fn, w, self.data))}


def accuracy_probe(objective: Objective) -> AccuracyProbe | None:
    """The accuracy probe of ``objective`` if it is a classifier, else None.

    A classifier is an objective from `Objective.from_model` (or its ``sqrt()``) whose labels are
    integer class indices, one per example ``(N,)`` or one per position ``(N, T)`` (per-token
    accuracy; ``eoslab.data`` gives classification and sequence datasets such labels, regression
    datasets real targets).
    """
    base = objective.base() if isinstance(objective, Objective) else None
    if base is None or not isinstance(base.fn, ModelLoss) or not isinstance(base.data, dict):
        return None
    y = base.data.get("y")
    if (
        y is None
        or jnp.ndim(y) not in (1, 2)
        or not jnp.issubdtype(jnp.result_type(y), jnp.integer)
    ):
        return None
    return AccuracyProbe(base.fn, base.data)
