r"""The mini-batch curvature probe (Andreyev & Beneventano, *Edge of Stochastic Stability*).

At every probed point $w$ of a mean objective it measures, over random batches $B$ of $b$
examples (`eoslab.curvature.batch_sharpness` and its siblings, which hold the math):

- ``batch_sharpness`` $\ \mathbb{E}_B\big[g_B^\top H_B g_B / \|g_B\|^2\big]$;
- ``batch_lambda_max`` $\ \mathbb{E}_B[\lambda_{\max}(H_B)]$ (with ``lambda_max``);
- ``gni`` $\ \mathbb{E}_B[g_B^\top H g_B] / \|g\|^2$ (with ``gni``);

each a Monte-Carlo mean with ``*_stderr`` and ``*_batches`` (and ``batch_lambda_max_error``,
the largest certified Lanczos bound over the batches), and the cost of the batch sharpness and
the batch $\lambda_{\max}$ in full-batch Hessian-vector products (``*_hvp``: a product on a
batch of $b$ of $N$ examples counts $b/N$).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from ..batches import example_count
from ..curvature.batch_sharpness import (
    batch_lambda_max,
    batch_sharpness,
    gradient_noise_interaction,
)
from ..errors import ConfigError, check_int, check_positive
from .probe import At, HostProbe

__all__ = ["BatchSharpness"]


class BatchSharpness(HostProbe):
    r"""Batch sharpness, batch $\lambda_{\max}$ and GNI over random batches of ``batch_size`` at
    every probed point (module docstring), for ``custom_probes``:
    ``run(MiniBatch(rules.GD(lr), 32), objective, steps, custom_probes=(BatchSharpness(32),))``.

    The batches of a probe at step $t$ are drawn from ``fold_in(key(seed), t)``, so a resumed
    run measures the same numbers and every process probed at a step sees the same batches; it
    keeps no state. Each estimate draws batches until its standard error is at most its
    ``*rel_err`` times its magnitude (at least ``min_batches``, at most its ``*max_batches``).
    """

    batch_size: int
    """$b$, the examples in a batch."""
    rel_err: float = 0.005
    """Target relative standard error of the batch sharpness."""
    max_batches: int = 1000
    """At most this many batches for the batch sharpness."""
    seed: int = 0
    """The batches' seed (with the probed step)."""
    _: dataclasses.KW_ONLY
    min_batches: int = 10
    """At least this many batches for every estimate."""
    lambda_max: bool = True
    """Also the batch $\\lambda_{\\max}$ (a Lanczos solve per batch)."""
    lambda_rel_err: float = 0.01
    lambda_max_batches: int = 100
    lambda_tol: float = 1e-4
    """Relative tolerance of each batch's Lanczos $\\lambda_{\\max}$."""
    gni: bool = True
    """Also the GNI (a full-batch Hessian product per batch)."""
    gni_rel_err: float = 0.01
    gni_max_batches: int = 500

    def __check_init__(self) -> None:
        check_int("batch_size", self.batch_size, 1)
        for field in ("rel_err", "lambda_rel_err", "gni_rel_err"):
            check_positive(field, getattr(self, field), allow_zero=True)
        for field in ("max_batches", "lambda_max_batches", "gni_max_batches"):
            check_int(field, getattr(self, field), 1)
        check_int("min_batches", self.min_batches, 2)
        check_positive("lambda_tol", self.lambda_tol)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError("seed", self.seed, "an integer")

    def __call__(self, at: At, state: Any) -> tuple[dict[str, Any], Any]:
        objective, w = at.objective.base(), at.w
        key = jax.random.fold_in(jax.random.key(self.seed), int(at.step))
        bs = batch_sharpness(
            objective,
            w,
            self.batch_size,
            rel_err=self.rel_err,
            max_batches=self.max_batches,
            min_batches=self.min_batches,
            key=jax.random.fold_in(key, 0),
        )
        frac = self.batch_size / example_count(objective)
        out: dict[str, Any] = {
            "batch_sharpness": bs.mean,
            "batch_sharpness_stderr": bs.stderr,
            "batch_sharpness_batches": bs.batches,
            "batch_sharpness_hvp": bs.batches * frac,
        }
        if self.lambda_max:
            lm = batch_lambda_max(
                objective,
                w,
                self.batch_size,
                rel_err=self.lambda_rel_err,
                max_batches=self.lambda_max_batches,
                min_batches=self.min_batches,
                tol=self.lambda_tol,
                key=jax.random.fold_in(key, 1),
            )
            out.update(
                batch_lambda_max=lm.mean,
                batch_lambda_max_stderr=lm.stderr,
                batch_lambda_max_batches=lm.batches,
                batch_lambda_max_error=lm.error,
                batch_lambda_max_hvp=lm.matvecs * frac,
            )
        if self.gni:
            gn = gradient_noise_interaction(
                objective,
                w,
                self.batch_size,
                rel_err=self.gni_rel_err,
                max_batches=self.gni_max_batches,
                min_batches=self.min_batches,
                key=jax.random.fold_in(key, 2),
            )
            out.update(gni=gn.mean, gni_stderr=gn.stderr, gni_batches=gn.batches)
        return out, state
