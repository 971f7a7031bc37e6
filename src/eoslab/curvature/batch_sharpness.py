r"""Curvature of mini-batch losses (Andreyev & Beneventano, *Edge of Stochastic Stability*).

For a mean objective and batches $B$ of $b$ examples drawn uniformly (each batch a random
$b$-subset; `eoslab.batches.random_batches`), with $g_B = \nabla L_B(w)$, $H_B = \nabla^2 L_B(w)$,
$g = \nabla L(w)$, $H = \nabla^2 L(w)$:

- *batch sharpness* $\ \mathrm{BS} = \mathbb{E}_B\big[g_B^\top H_B g_B / \|g_B\|^2\big]$, the
  quantity mini-batch SGD holds at $2/\eta$ (a batch with $g_B = 0$ counts as 0);
- *batch* $\lambda_{\max}$: $\ \mathbb{E}_B[\lambda_{\max}(H_B)]$ (Lanczos, `top_eigenpairs`);
- the *gradient-noise interaction* $\ \mathrm{GNI} = \mathbb{E}_B[g_B^\top H g_B] / \|g\|^2$,
  as defined by the authors' code (``calculate_gni`` in arseniqum/edge-of-stochastic-stability,
  ``utils/measure.py``): the full-batch Hessian along mini-batch gradients, normalised by the
  full gradient. It governs the expected one-step change of the full loss,
  $\mathbb{E}_B L(w - \eta g_B) \approx L - \eta\|g\|^2(1 - \tfrac\eta2\mathrm{GNI})$.

Each is a Monte-Carlo mean over $B$ independent batches, returned with its standard error
$s/\sqrt{B}$ ($s$ the sample standard deviation) and the number of batches used: batches are
drawn in chunks and drawing stops once $B \ge$ ``min_batches`` and
$\mathrm{stderr} \le$ ``rel_err``$\cdot|\mathrm{mean}|$, or at ``max_batches``. The error is
statistical: $|\mathrm{mean} - \text{expectation}| \le 4\,\mathrm{stderr}$ except with
probability $\approx 6\cdot10^{-5}$ (CLT). For $b = N$ every batch is the full data, the
spread is zero and the estimates are exactly $g^\top Hg/\|g\|^2$ and $\lambda_{\max}(H)$.
The batch $\lambda_{\max}$ adds a deterministic error, at most the largest certified Lanczos
bound (``batch_lambda_max_error``). In a run, the probe `eoslab.runner.BatchSharpness` measures
all three at probed steps.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..batches import batch_objective, check_batch_size, example_count, random_batches
from ..errors import ConfigError, check_int, check_positive
from ..objective import Objective
from .eigen import top_eigenpairs
from .operator import HessianOperator

__all__ = [
    "BatchEstimate",
    "batch_lambda_max",
    "batch_sharpness",
    "gradient_noise_interaction",
]

_CHUNK = 16  # batches per compiled draw


class BatchEstimate(NamedTuple):
    """A Monte-Carlo mean over random mini-batches.

    Attributes:
        mean: the estimate.
        stderr: its standard error $s/\\sqrt{B}$ (0 for a single batch).
        batches: $B$, the batches averaged.
        converged: whether ``stderr <= rel_err * |mean|`` was reached.
        error: a deterministic error bound on top of the statistical one (Lanczos certificates
            of the batch $\\lambda_{\\max}$; 0 otherwise).
        matvecs: the batch Hessian-vector products spent (the batch $\\lambda_{\\max}$'s Lanczos
            solves; 0 otherwise).
    """

    mean: float
    stderr: float
    batches: int
    converged: bool
    error: float = 0.0
    matvecs: int = 0


def _check(objective, w, batch_size, rel_err, max_batches, min_batches):
    if not isinstance(objective, Objective):
        raise ConfigError("objective", type(objective).__name__, "an eoslab.Objective")
    n = example_count(objective)
    b = check_batch_size(batch_size, n)
    check_positive("rel_err", rel_err, allow_zero=True)
    max_batches = check_int("max_batches", max_batches, 1)
    min_batches = min(check_int("min_batches", min_batches, 2), max_batches)
    w = jnp.asarray(objective.w0 if w is None else w, objective.dtype)
    if w.shape != objective.w0.shape:
        raise ConfigError("w.shape", w.shape, f"{objective.w0.shape} (the objective's D)")
    return n, b, max_batches, min_batches, w


def _stats(vals: list[float]) -> tuple[float, float]:
    x = np.asarray(vals, np.float64)
    mean = float(x.mean())
    stderr = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else 0.0
    return mean, stderr


def _done(vals, rel_err, min_batches) -> bool:
    if len(vals) < min_batches:
        return False
    mean, stderr = _stats(vals)
    return stderr <= rel_err * abs(mean)


def _adaptive(draw, key, rel_err, max_batches, min_batches) -> BatchEstimate:
    """Chunks of `_CHUNK` values from ``draw(key) -> (CHUNK,)`` until the stop rule holds."""
    vals: list[float] = []
    i = 0
    while len(vals) < max_batches:
        chunk = np.asarray(draw(jax.random.fold_in(key, i)), np.float64)
        i += 1
        for v in chunk[: max_batches - len(vals)]:
            vals.append(float(v))
            if _done(vals, rel_err, min_batches):
                mean, stderr = _stats(vals)
                return BatchEstimate(mean, stderr, len(vals), True)
    mean, stderr = _stats(vals)
    return BatchEstimate(mean, stderr, len(vals), _done(vals, rel_err, min_batches))


@eqx.filter_jit
def _rayleigh_chunk(objective: Objective, w: Array, key: Array, n: int, b: int) -> Array:
    r"""$g_B^\top H_B g_B / \|g_B\|^2$ for `_CHUNK` random batches (one HVP each)."""

    def one(idx):
        _, g, matmat = HessianOperator(batch_objective(objective, idx), w).linearize()
        hg = matmat(g[:, None])[:, 0]
        gg = jnp.vdot(g, g)
        return jnp.where(gg > 0, jnp.vdot(g, hg) / jnp.where(gg > 0, gg, 1.0), 0.0)

    return jax.vmap(one)(random_batches(key, n, b, _CHUNK))


@eqx.filter_jit
def _gni_chunk(objective: Objective, w: Array, key: Array, n: int, b: int) -> Array:
    r"""$g_B^\top H g_B$ (full-batch $H$) for `_CHUNK` random batches."""
    _, _, matmat = HessianOperator(objective, w).linearize()

    def one(idx):
        gb = jax.grad(batch_objective(objective, idx))(w)
        return jnp.vdot(gb, matmat(gb[:, None])[:, 0])

    return jax.vmap(one)(random_batches(key, n, b, _CHUNK))


def batch_sharpness(
    objective: Objective,
    w: Float[Array, " d"] | None = None,
    batch_size: int = 1,
    *,
    rel_err: float = 0.005,
    max_batches: int = 1000,
    min_batches: int = 10,
    key: Array | None = None,
) -> BatchEstimate:
    r"""Batch sharpness $\mathbb{E}_B[g_B^\top H_B g_B/\|g_B\|^2]$ at ``w`` (module docstring),
    averaged over random batches of ``batch_size`` until its standard error is at most
    ``rel_err`` times its magnitude (at least ``min_batches``, at most ``max_batches``).
    """
    n, b, max_batches, min_batches, w = _check(
        objective, w, batch_size, rel_err, max_batches, min_batches
    )
    key = jax.random.key(0) if key is None else key
    draw = lambda k: _rayleigh_chunk(objective, w, k, n, b)  # noqa: E731
    return _adaptive(draw, key, rel_err, max_batches, min_batches)


def gradient_noise_interaction(
    objective: Objective,
    w: Float[Array, " d"] | None = None,
    batch_size: int = 1,
    *,
    rel_err: float = 0.01,
    max_batches: int = 500,
    min_batches: int = 10,
    key: Array | None = None,
) -> BatchEstimate:
    r"""GNI $= \mathbb{E}_B[g_B^\top H g_B]/\|g\|^2$ at ``w`` (module docstring); the mean and
    standard error of $g_B^\top H g_B$ divided by the exact $\|g\|^2$ (NaN if $g = 0$)."""
    n, b, max_batches, min_batches, w = _check(
        objective, w, batch_size, rel_err, max_batches, min_batches
    )
    key = jax.random.key(0) if key is None else key
    gg = float(jnp.vdot(g := jax.grad(objective)(w), g))
    draw = lambda k: _gni_chunk(objective, w, k, n, b)  # noqa: E731
    est = _adaptive(draw, key, rel_err, max_batches, min_batches)
    if gg <= 0:
        return BatchEstimate(math.nan, math.nan, est.batches, False)
    return est._replace(mean=est.mean / gg, stderr=est.stderr / gg)


def batch_lambda_max(
    objective: Objective,
    w: Float[Array, " d"] | None = None,
    batch_size: int = 1,
    *,
    rel_err: float = 0.01,
    max_batches: int = 100,
    min_batches: int = 10,
    tol: float = 1e-4,
    key: Array | None = None,
) -> BatchEstimate:
    r"""$\mathbb{E}_B[\lambda_{\max}(H_B)]$ at ``w``: Lanczos (`top_eigenpairs`, relative
    tolerance ``tol``) on each random batch's Hessian, averaged with the stop rule of
    `batch_sharpness`; ``error`` is the largest certified Lanczos bound over the batches."""
    n, b, max_batches, min_batches, w = _check(
        objective, w, batch_size, rel_err, max_batches, min_batches
    )
    check_positive("tol", tol)
    key = jax.random.key(0) if key is None else key
    vals: list[float] = []
    worst = 0.0
    spent = 0
    i = 0
    while len(vals) < max_batches:
        k = jax.random.fold_in(key, i)
        i += 1
        for j, idx in enumerate(random_batches(k, n, b, _CHUNK)):
            if len(vals) >= max_batches:
                break
            op = HessianOperator(batch_objective(objective, idx), w)
            res = top_eigenpairs(op, k=1, tol=tol, key=jax.random.fold_in(k, _CHUNK + j))
            vals.append(float(res.values[0]))
            worst = max(worst, float(res.error_bound[0]))
            spent += int(res.matvecs)
            if _done(vals, rel_err, min_batches):
                mean, stderr = _stats(vals)
                return BatchEstimate(mean, stderr, len(vals), True, worst, spent)
    mean, stderr = _stats(vals)
    done = _done(vals, rel_err, min_batches)
    return BatchEstimate(mean, stderr, len(vals), done, worst, spent)
