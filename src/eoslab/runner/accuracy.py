r"""The training-accuracy probe of a classifier, on by default in `train` and `eoslab run`.

For an objective built by `Objective.from_model` on a dataset with integer class labels
$c_i$, the probe reports $\frac1N \sum_i [\arg\max_c f_c(\theta(w), x_i) = c_i]$ at probed
steps (column ``accuracy``). Sequence tasks (integer labels $c_{it}$ per position, logits
$f_{t,c}$; ``eoslab.data`` datasets of task ``"sequence"``) get the per-token accuracy
$\frac1{NT} \sum_{i,t} [\arg\max_c f_{t,c}(\theta(w), x_i) = c_{it}]$. Other objectives
(regression targets, plain functions of $w$) have no accuracy and get no probe.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..losses import accuracy
from ..objective import ModelLoss, Objective
from .probe import At, ScanProbe

__all__ = ["Accuracy"]


def _accuracy(fn: ModelLoss, w: Array, data: Any) -> Array:
    params = eqx.combine(fn.unravel(w), data["frozen"])
    return accuracy(fn.apply(params, data["x"]), data["y"])


class Accuracy(ScanProbe):
    r"""``accuracy`` $a = \frac1N \sum_i [\arg\max_c f_c(\theta(w), x_i) = c_i]$ over the
    training examples of the model objective it was made from (one forward pass: it runs inside
    the compiled step where the sharpness does; the data stay traced arguments). Make one with
    `Accuracy.of`."""

    fn: ModelLoss
    data: Any

    @classmethod
    def of(cls, objective: Objective) -> Accuracy | None:
        """The accuracy probe of ``objective`` if it is a classifier, else None.

        A classifier is an objective from `Objective.from_model` (or its ``sqrt()``) whose labels
        are integer class indices, one per example ``(N,)`` or one per position ``(N, T)``
        (per-token accuracy; ``eoslab.data`` gives classification and sequence datasets such
        labels, regression datasets real targets).
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
        return cls(base.fn, base.data)

    def value(self, w: Float[Array, " d"]) -> Array:
        """The accuracy at the point ``w``."""
        return _accuracy(self.fn, w, self.data)

    def __call__(self, at: At, state: tuple) -> tuple[dict[str, Array], tuple]:
        return {"accuracy": self.value(at.w)}, state
