"""Iterates of an update rule, kept every ``save_every`` steps, in one compiled ``lax.scan``."""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..curvature._checks import check_w
from ..dynamics.rules import Rule
from ..errors import ConfigError
from ..objective import LossLike, as_objective

__all__ = ["Iterates", "iterate"]


class Iterates(NamedTuple):
    steps: Array  # step index of each saved row (0 = the start)
    w: Float[Array, "n d"]
    loss: Float[Array, " n"]  # L(w_t) of the loss the rule is applied to
    lr_eff: Float[Array, " n"]  # effective LR of the step taken *from* w_t (NaN at the end)
    gf_time: Float[Array, " n"]  # sum of effective LRs before t: the gradient-flow time used
    threshold: Float[Array, " n"]  # the rule's stability threshold at that step (NaN at the end)
    precond: Float[Array, "n d"] | None  # diagonal P of the step from w_t (adaptive rules only)


@eqx.filter_jit
def _scan(obj, rule, w0, *, steps, save_every):
    vg = jax.value_and_grad(obj)
    has_p = rule.preconditioner is not None

    def one(carry, _):
        w, state, T = carry
        loss, g = vg(w)
        w2, state2, info = rule.step(w, state, g, loss)
        P = rule.preconditioner(state2) if has_p else None
        return (w2, state2, T + info.lr_eff), (w, loss, T, info.lr_eff, info.threshold, P)

    def block(carry, _):
        carry, recs = jax.lax.scan(one, carry, None, length=save_every)
        return carry, jax.tree_util.tree_map(lambda r: r[0], recs)

    init = (w0, rule.init(w0), jnp.zeros((), w0.dtype))
    (wN, _, TN), (ws, ls, Ts, lrs, thr, Ps) = jax.lax.scan(
        block, init, None, length=steps // save_every
    )
    nan = jnp.full((1,), jnp.nan, w0.dtype)
    if has_p:
        Ps = jnp.concatenate([Ps, jnp.full((1, w0.shape[0]), jnp.nan, w0.dtype)])
    return (
        jnp.concatenate([ws, wN[None]]),
        jnp.concatenate([ls, obj(wN)[None]]),
        jnp.concatenate([lrs, nan]),
        jnp.concatenate([Ts, TN[None]]),
        jnp.concatenate([thr, nan]),
        Ps,
    )


def iterate(
    loss: LossLike, w0: Float[Array, " d"], rule: Rule, steps: int, *, save_every: int = 1
) -> Iterates:
    r"""Run ``rule`` for ``steps`` steps from $w_0$ on $L$, saving every ``save_every``-th iterate.

    Each row also keeps the effective LR, stability threshold and (adaptive rules) diagonal
    preconditioner of the step taken from it. ``gf_time`` accumulates $\sum_{s<t}\eta_s$ (the
    effective LRs), the gradient-flow time the iterates have used, so they can be compared with
    $\phi(w_0, \cdot)$ on one time axis.
    """
    obj = as_objective(loss, w0)
    w0 = check_w(w0, obj)
    for name, val in (("steps", steps), ("save_every", save_every)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ConfigError(name, val, "an integer >= 1")
    if steps % save_every:
        raise ConfigError("save_every", save_every, f"a divisor of steps (= {steps})")
    ws, ls, lrs, Ts, thr, Ps = _scan(obj, rule, w0, steps=steps, save_every=save_every)
    return Iterates(jnp.arange(ws.shape[0]) * save_every, ws, ls, lrs, Ts, thr, Ps)
