"""Stochastic trace estimates of the Hessian: Hutchinson and Hutch++."""

from __future__ import annotations

from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..errors import ConfigError, check_choice
from ..objective import LossLike, as_objective
from ._checks import check_w
from .hvp import _hvp_block

__all__ = ["TraceEstimate", "hutchinson_trace"]


class TraceEstimate(NamedTuple):
    value: Float[Array, ""]  # the estimate of tr(H)
    stderr: Float[Array, ""]  # standard error of the stochastic part (0 if exact)
    matvecs: int


@eqx.filter_jit
def _hutchinson(obj, w, Z):
    HZ = _hvp_block(obj, w, Z)
    samples = jnp.sum(Z * HZ, axis=0)
    m = samples.shape[0]
    se = jnp.where(m > 1, jnp.std(samples, ddof=1) / jnp.sqrt(m), 0.0)
    return jnp.mean(samples), se


@eqx.filter_jit
def _hutchpp(obj, w, S, G):
    # Hutch++ (Meyer, Musco, Musco, Woodruff 2021): exact trace on range(H S), Hutchinson on
    # the rest.
    Q, _ = jnp.linalg.qr(_hvp_block(obj, w, S))
    top = jnp.trace(Q.T @ _hvp_block(obj, w, Q))
    Gp = G - Q @ (Q.T @ G)
    samples = jnp.sum(Gp * _hvp_block(obj, w, Gp), axis=0)
    m = samples.shape[0]
    se = jnp.where(m > 1, jnp.std(samples, ddof=1) / jnp.sqrt(m), 0.0)
    return top + jnp.mean(samples), se


def hutchinson_trace(
    loss: LossLike,
    w: Float[Array, " d"],
    n_probes: int,
    key: Array,
    *,
    method: Literal["hutchinson", "hutch++"] = "hutchinson",
) -> TraceEstimate:
    r"""Unbiased estimate of $\mathrm{tr}\,\nabla^2L(w) = \mathbb{E}_z[z^\top H z]$, Rademacher $z$.

    ``method="hutch++"`` spends a third of the ``n_probes`` HVPs on a sketch $Q$ of
    $\mathrm{range}(H)$, a third on $\mathrm{tr}(Q^\top H Q)$ and the rest on Hutchinson in the
    complement; its variance falls like $1/m^2$ instead of $1/m$ when the spectrum decays.
    """
    obj = as_objective(loss, w)
    w = check_w(w, obj)
    check_choice("method", method, ("hutchinson", "hutch++"))
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ConfigError("n_probes", n_probes, "an integer >= 1")
    d = w.shape[0]
    if method == "hutchinson":
        Z = jax.random.rademacher(key, (d, n_probes), w.dtype)
        val, se = _hutchinson(obj, w, Z)
        return TraceEstimate(val, se, n_probes)
    if n_probes < 3:
        raise ConfigError("n_probes", n_probes, "an integer >= 3 for method='hutch++'")
    s = min(n_probes // 3, d)
    g = n_probes - 2 * s
    k1, k2 = jax.random.split(key)
    S = jax.random.rademacher(k1, (d, s), w.dtype)
    G = jax.random.rademacher(k2, (d, g), w.dtype)
    val, se = _hutchpp(obj, w, S, G)
    return TraceEstimate(val, se, 2 * s + g)
