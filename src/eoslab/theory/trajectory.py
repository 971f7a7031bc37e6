"""`iterate`: an update rule's iterates every ``save_every`` steps (a front door to the loop)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..curvature._checks import check_w
from ..dynamics.optimizer import Optimizer
from ..dynamics.rules import Rule
from ..errors import ConfigError
from ..objective import LossLike, as_objective
from ..runner import Probes, run

__all__ = ["Iterates", "iterate"]


class Iterates(NamedTuple):
    steps: Array  # step index of each saved row (0 = the start)
    w: Float[Array, "n d"]
    loss: Float[Array, " n"]  # L(w_t) of the loss the rule is applied to
    lr_eff: Float[Array, " n"]  # effective LR of the step taken *from* w_t
    gf_time: Float[Array, " n"]  # sum of effective LRs before t: the gradient-flow time used
    threshold: Float[Array, " n"]  # the rule's stability threshold at that step


def iterate(
    loss: LossLike, w0: Float[Array, " d"], rule: Rule, steps: int, *, save_every: int = 1
) -> Iterates:
    r"""Run ``rule`` for ``steps`` steps from $w_0$ on $L$, saving every ``save_every``-th iterate.

    Each row also keeps the effective LR and stability threshold of the step taken from it;
    ``gf_time`` accumulates $\sum_{s<t}\eta_s$, the gradient-flow time the iterates have used.
    Runs `Optimizer(rule)` through `eoslab.runner.run` with no curvature probes.
    """
    obj = as_objective(loss, w0)
    w0 = check_w(w0, obj)
    for name, val in (("steps", steps), ("save_every", save_every)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ConfigError(name, val, "an integer >= 1")
    if steps % save_every:
        raise ConfigError("save_every", save_every, f"a divisor of steps (= {steps})")
    res = run(
        {"opt": Optimizer(rule)},
        obj,
        steps,
        w0=w0,
        probe_every=steps,
        log_every=save_every,
        probes=Probes(sharpness=False, alignment=False),
        keep_points=True,
    )
    m = res.metrics
    col = lambda name: jnp.asarray(m[name].to_numpy(), w0.dtype)  # noqa: E731
    return Iterates(
        jnp.asarray(m["step"].to_numpy()),
        jnp.asarray(np.stack(m["w"].to_list()), w0.dtype),
        col("loss"),
        col("lr_eff"),
        col("gf_time"),
        col("threshold"),
    )
