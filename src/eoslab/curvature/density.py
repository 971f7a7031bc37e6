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
from ..objective import LossLike
from .lanczos import lanczos_top
from .operator import AbstractOperator, as_operator

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


@eqx.filter_jit
def _slq(op, probes, m):
    def one(v):
        # m Lanczos steps, no early stop (k = m): T's eigenpairs give the Gauss quadrature.
        st = lanczos_top(
            op.mv,
            v,
            m,
            tol=1e-30,
            m_max=m,
            max_matvecs=m,
            key=jax.random.PRNGKey(0),
            restart_keep=max(1, m - 1),
        )
        return st.theta, st.S[0] ** 2

    return jax.lax.map(one, probes)


def spectral_density(
    loss: LossLike | AbstractOperator,
    w: Float[Array, " d"] | None = None,
    key: Array | None = None,
    *,
    n_probes: int = 10,
    lanczos_steps: int = 80,
) -> SpectralDensity:
    r"""Stochastic Lanczos quadrature estimate of the spectral measure of $H = \nabla^2 L(w)$.

    ``loss`` is an operator (pass the rest by keyword), an `Objective` (``w`` defaults to its
    ``w0``) or a callable; ``key`` defaults to ``PRNGKey(0)``.

    Spends ``n_probes * lanczos_steps`` HVPs (``lanczos_steps`` is capped at $D$). Moments up to
    degree $2m-1$ are exact per probe; the probe average is unbiased for $\mathrm{tr}(H^p)/D$.
    """
    op = as_operator(loss, w, tags=frozenset({"symmetric"}))
    for name, val in (("n_probes", n_probes), ("lanczos_steps", lanczos_steps)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ConfigError(name, val, "an integer >= 1")
    key = jax.random.PRNGKey(0) if key is None else key
    m = min(lanczos_steps, op.dim)
    probes = jax.random.rademacher(key, (n_probes, op.dim), op.dtype)
    nodes, weights = _slq(op, probes, m)
    return SpectralDensity(nodes, weights, n_probes * m)
