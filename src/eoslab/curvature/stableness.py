"""Stableness (Arora, Li, Panigrahi 2022, Definition 1.1)."""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..errors import ConfigError, check_positive
from ..objective import LossLike
from .lanczos import default_m_max, lanczos_top, ritz_vectors
from .operator import AbstractOperator, as_operator

__all__ = ["Stableness", "stableness"]


class Stableness(NamedTuple):
    value: Float[Array, ""]  # S_L(w, eta) = eta * max_s lambda_1
    sharpness: Float[Array, " n"]  # lambda_1 at each sampled point of the segment
    s: Float[Array, " n"]  # the sampled step lengths s in [0, eta]
    matvecs: Array


@eqx.filter_jit
def _stableness(op, eta, key, *, n_points, tol, m_max, budget):
    w, g = op.w, op.step_direction()
    s = eta * jnp.linspace(0.0, 1.0, n_points, dtype=w.dtype)
    d = w.shape[0]

    def body(carry, si):
        v, key, mv = carry
        key, sub = jax.random.split(key)
        st = lanczos_top(
            op.at(w - si * g).mv,
            v,
            1,
            tol=tol,
            m_max=m_max,
            max_matvecs=budget,
            key=sub,
            restart_keep=min(m_max - 1, 6),
        )
        vec = ritz_vectors(st, 1)[:, 0]
        return (vec / jnp.linalg.norm(vec), key, mv + st.matvecs), st.theta[0]

    v0 = jax.random.normal(key, (d,), w.dtype)
    (_, _, mv), lam = jax.lax.scan(body, (v0, key, jnp.array(0)), s)
    return eta * jnp.max(lam), lam, s, mv


def stableness(
    loss: LossLike | AbstractOperator,
    w: Float[Array, " d"] | None = None,
    eta: float | None = None,
    *,
    n_points: int = 21,
    tol: float = 1e-4,
    key: Array | None = None,
) -> Stableness:
    r"""$S_L(w,\eta) = \eta\,\sup_{s\in[0,\eta]}\lambda_1\big(\nabla^2 L(w - s\nabla L(w))\big)$.

    The sup is taken over ``n_points`` equally spaced points of the GD step's segment (endpoints
    included), each top eigenvalue by Lanczos warm-started from the previous point. $S_L \le 2$
    means $L$ is stable at $(w,\eta)$.

    ``loss`` may be an operator (pass ``eta`` by keyword): for a `PreconditionedOperator` the step
    is $w - s P^{-1}\nabla L(w)$ and $\lambda_1$ that of $P^{-1/2}\nabla^2 L P^{-1/2}$ ($P$ fixed).
    """
    op = as_operator(loss, w, tags=frozenset({"symmetric"}))
    check_positive("eta", eta)
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise ConfigError("n_points", n_points, "an integer >= 2 (the segment's endpoints)")
    key = jax.random.PRNGKey(0) if key is None else key
    d = op.dim
    m_max = default_m_max(1, d)
    val, lam, s, mv = _stableness(
        op,
        jnp.asarray(eta, op.dtype),
        key,
        n_points=n_points,
        tol=float(tol),
        m_max=m_max,
        budget=max(1000, 2 * d),
    )
    return Stableness(val, lam, s, mv)
