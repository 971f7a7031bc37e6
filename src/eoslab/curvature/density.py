r"""Spectral density of the Hessian by stochastic Lanczos quadrature (SLQ).

For a unit probe $v$, $m$ Lanczos steps give nodes $\theta_j$ and weights
$\tau_j = (e_1^\top s_j)^2$ with $\sum_j \tau_j\, p(\theta_j) = v^\top p(H) v$ exactly for
polynomials of degree $< 2m$;
averaging over probes estimates the spectral measure $\mu = \frac1D\sum_i \delta_{\lambda_i}$.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..errors import ConfigError
from ..objective import LossLike, as_objective
from ._checks import check_w
from .hvp import _hvp

__all__ = ["SpectralDensity", "spectral_density"]


class SpectralDensity(NamedTuple):
    nodes: Float[Array, "p m"]  # Ritz values per probe
    weights: Float[Array, "p m"]  # quadrature weights per probe (each row sums to 1)
    matvecs: int

    def moment(self, power: int) -> Array:
        r"""$\int t^p\, d\mu(t) \approx \mathrm{tr}(H^p)/D$."""
        return jnp.mean(jnp.sum(self.weights * self.nodes**power, axis=1))

    def density(self, grid: Array, sigma: float) -> Array:
        """The measure smoothed by a Gaussian of width ``sigma``, evaluated on ``grid``."""
        g = jnp.asarray(grid)[:, None, None]
        kern = jnp.exp(-0.5 * ((g - self.nodes[None]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
        return jnp.mean(jnp.sum(self.weights[None] * kern, axis=2), axis=1)


def _lanczos_tridiag(matvec, v, m):
    """Plain m-step Lanczos with full reorthogonalization; returns (alpha, beta)."""
    d = v.shape[0]
    V = jnp.zeros((m + 1, d), v.dtype).at[0].set(v / jnp.linalg.norm(v))

    def body(j, carry):
        V, alpha, beta = carry
        x = matvec(V[j])
        a = jnp.vdot(V[j], x)
        for _ in range(2):
            x = x - (V @ x) @ V
        b = jnp.linalg.norm(x)
        V = V.at[j + 1].set(jnp.where(b > 0, x / jnp.where(b > 0, b, 1.0), 0.0))
        return V, alpha.at[j].set(a), beta.at[j].set(b)

    _, alpha, beta = jax.lax.fori_loop(
        0, m, body, (V, jnp.zeros((m,), v.dtype), jnp.zeros((m,), v.dtype))
    )
    return alpha, beta


@eqx.filter_jit
def _slq(obj, w, probes, m):
    def one(v):
        alpha, beta = _lanczos_tridiag(lambda x: _hvp(obj, w, x), v, m)
        T = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
        theta, S = jnp.linalg.eigh(T)
        return theta, S[0] ** 2

    return jax.lax.map(one, probes)


def spectral_density(
    loss: LossLike,
    w: Float[Array, " d"],
    key: Array,
    *,
    n_probes: int = 10,
    lanczos_steps: int = 80,
) -> SpectralDensity:
    r"""Stochastic Lanczos quadrature estimate of the spectral measure of $\nabla^2 L(w)$.

    Spends ``n_probes * lanczos_steps`` HVPs (``lanczos_steps`` is capped at $D$). Moments up to
    degree $2m-1$ are exact per probe; the probe average is unbiased for $\mathrm{tr}(H^p)/D$.
    """
    obj = as_objective(loss, w)
    w = check_w(w, obj)
    for name, val in (("n_probes", n_probes), ("lanczos_steps", lanczos_steps)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ConfigError(name, val, "an integer >= 1")
    d = w.shape[0]
    m = min(lanczos_steps, d)
    probes = jax.random.rademacher(key, (n_probes, d), w.dtype)
    nodes, weights = _slq(obj, w, probes, m)
    return SpectralDensity(nodes, weights, n_probes * m)
