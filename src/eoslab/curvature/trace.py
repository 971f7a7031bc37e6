"""Stochastic trace estimates of the Hessian: Hutchinson and Hutch++."""

from __future__ import annotations

from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..errors import ConfigError, check_choice
from ..objective import LossLike
from .operator import AbstractOperator, as_operator

__all__ = ["TraceEstimate", "hutchinson_trace"]


class TraceEstimate(NamedTuple):
    value: Float[Array, ""]  # the estimate of tr(H)
    stderr: Float[Array, ""]  # standard error of the stochastic part (0 if exact)
    matvecs: int


@eqx.filter_jit
def _hutchinson(op, Z):
    HZ = op.mm(Z)
    samples = jnp.sum(Z * HZ, axis=0)
    m = samples.shape[0]
    se = jnp.where(m > 1, jnp.std(samples, ddof=1) / jnp.sqrt(m), 0.0)
    return jnp.mean(samples), se


@eqx.filter_jit
def _hutchpp(op, S, G):
    # Hutch++ (Meyer, Musco, Musco, Woodruff 2021): exact trace on range(H S), Hutchinson on
    # the rest.
    Q, _ = jnp.linalg.qr(op.mm(S))
    top = jnp.trace(Q.T @ op.mm(Q))
    Gp = G - Q @ (Q.T @ G)
    samples = jnp.sum(Gp * op.mm(Gp), axis=0)
    m = samples.shape[0]
    se = jnp.where(m > 1, jnp.std(samples, ddof=1) / jnp.sqrt(m), 0.0)
    return top + jnp.mean(samples), se


def hutchinson_trace(
    loss: LossLike | AbstractOperator,
    w: Float[Array, " d"] | None = None,
    n_probes: int | None = None,
    key: Array | None = None,
    *,
    method: Literal["hutchinson", "hutch++"] = "hutchinson",
) -> TraceEstimate:
    r"""Unbiased estimate of $\mathrm{tr}\,H = \mathbb{E}_z[z^\top H z]$, Rademacher $z$.

    $H$ is an operator, or $\nabla^2L(w)$ of a loss (an `Objective` alone: at its ``w0``); with
    an operator pass the rest by keyword: ``hutchinson_trace(op, n_probes=30, key=key)``.
    ``key`` defaults to ``PRNGKey(0)``.

    ``method="hutch++"`` spends a third of the ``n_probes`` HVPs on a sketch $Q$ of
    $\mathrm{range}(H)$, a third on $\mathrm{tr}(Q^\top H Q)$ and the rest on Hutchinson in the
    complement; its variance falls like $1/m^2$ instead of $1/m$ when the spectrum decays.
    """
    op = as_operator(loss, w)
    check_choice("method", method, ("hutchinson", "hutch++"))
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ConfigError("n_probes", n_probes, "an integer >= 1")
    key = jax.random.PRNGKey(0) if key is None else key
    d, dtype = op.dim, op.dtype
    if method == "hutchinson":
        Z = jax.random.rademacher(key, (d, n_probes), dtype)
        val, se = _hutchinson(op, Z)
        return TraceEstimate(val, se, n_probes)
    if n_probes < 3:
        raise ConfigError("n_probes", n_probes, "an integer >= 3 for method='hutch++'")
    s = min(n_probes // 3, d)
    g = n_probes - 2 * s
    k1, k2 = jax.random.split(key)
    S = jax.random.rademacher(k1, (d, s), dtype)
    G = jax.random.rademacher(k2, (d, g), dtype)
    val, se = _hutchpp(op, S, G)
    return TraceEstimate(val, se, 2 * s + g)
