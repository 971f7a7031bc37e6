r"""Mini-batch update rules: $w_{t+1} = \mathrm{step}(w_t, s_t, \nabla L_{B_t}(w_t),
L_{B_t}(w_t) - L_{\min})$.

$L_B(w) = \frac1{|B|}\sum_{i\in B}\ell_i(w)$ is the batch loss of a mean objective
(`eoslab.batches`). Batches are drawn by epochs without replacement from ``seed``: each epoch is a
random permutation of the $N$ examples cut into $\lfloor N/b \rfloor$ batches of $b$ (the last
$N \bmod b$ are dropped). The sampler's state (raw uint32 key data, the epoch's permutation and the
read position) is part of the process state, so the loop checkpoints it as plain arrays and a
resumed run draws the very same batches. With $b = N$ every batch is the whole data in its own
order and the process is the full-batch `Optimizer`.

The row describes the point before the step on the *full* objective (``loss`` $L(w_t)$,
``grad_norm`` $\|\nabla L(w_t)\|$, so tables and full-batch probes stay comparable; one extra
full-batch gradient per step) and on the batch (``batch_loss`` $L_{B_t}(w_t)$,
``batch_grad_norm`` $\|\nabla L_{B_t}(w_t)\|$), with the rule's ``lr_eff`` and ``threshold``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, UInt

from ..batches import batch_objective, check_batch_size, example_count, next_batch
from ..errors import ConfigError
from ..objective import Objective
from .optimizer import RuleProcess
from .rules import Rule

__all__ = ["MiniBatch", "MiniBatchState"]


class MiniBatchState(NamedTuple):
    w: Float[Array, " d"]  # the parameters
    inner: Any  # the rule's own state (momentum, moments, ...)
    gf_time: Float[Array, ""]  # sum of the effective LRs so far
    key: UInt[Array, " k"]  # raw key data of the sampler (jax.random.key_data)
    perm: Int[Array, " n"]  # the current epoch's permutation of the examples
    pos: Int[Array, ""]  # first unread position of perm


class MiniBatch(RuleProcess):
    """Runs an update rule (`eoslab.rules`: ``GD`` is SGD, ``HeavyBall`` SGD with momentum,
    ``Adam``, ...) on mini-batches of ``batch_size`` examples drawn from ``seed`` by epochs
    without replacement (see the module docstring)."""

    rule: Rule
    batch_size: int
    seed: int = 0

    def __check_init__(self) -> None:
        if not isinstance(self.rule, Rule):
            raise ConfigError("rule", self.rule, "an update rule from eoslab.rules (rules.GD(0.1))")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise ConfigError("batch_size", self.batch_size, "a positive integer")
        if self.batch_size < 1:
            raise ConfigError("batch_size", self.batch_size, "a positive integer")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError("seed", self.seed, "an integer")

    def init(self, objective: Objective, w0: Float[Array, " d"]) -> MiniBatchState:
        """The state at $w_0$; the first step draws the first epoch's permutation."""
        n = example_count(objective)
        check_batch_size(self.batch_size, n)
        key = jax.random.key_data(jax.random.key(self.seed))
        perm = jnp.arange(n, dtype=jnp.int32)
        pos = jnp.asarray(n, jnp.int32)  # an exhausted epoch: the first step starts one
        return MiniBatchState(w0, self.rule.init(w0), jnp.zeros((), w0.dtype), key, perm, pos)

    def point(self, state: MiniBatchState) -> Array:
        return state.w

    def batch(self, state: MiniBatchState) -> Int[Array, " b"]:
        """The (sorted) example indices of the batch the next step from ``state`` uses."""
        return next_batch(state.key, state.perm, state.pos, self.batch_size)[0]

    def rule_step(self, objective: Objective, state: MiniBatchState, base=None):
        w = state.w
        idx, key, perm, pos = next_batch(state.key, state.perm, state.pos, self.batch_size)
        batch_loss, gb = jax.value_and_grad(batch_objective(objective, idx))(w)
        w_new, inner, info = self.rule.step(w, state.inner, gb, batch_loss - objective.loss_min)
        loss, g = jax.value_and_grad(objective.base())(w) if base is None else base
        row = {
            "loss": loss,
            "grad_norm": jnp.linalg.norm(g),
            "batch_loss": batch_loss,
            "batch_grad_norm": jnp.linalg.norm(gb),
            "lr_eff": info.lr_eff,
            "threshold": info.threshold,
            "gf_time": state.gf_time,
        }
        new = MiniBatchState(w_new, inner, state.gf_time + info.lr_eff, key, perm, pos)
        return new, row

    def describe(self) -> dict[str, Any]:
        record = {k: v for k, v in self.rule.describe().items() if k != "kind"}
        return {
            "kind": "minibatch",
            "rule": self.rule.kind,
            **record,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }
