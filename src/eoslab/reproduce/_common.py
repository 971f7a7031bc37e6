"""Shared pieces of the reproductions: the `Reproduction` record, the rows of a
predicted-vs-measured table (written by `eoslab.report.tables`), the probes of a run kept only
for its points, the centred moving average the time-averaged predictions are compared with, and
the MNIST-1D network of the later papers' experiments with its top eigenvalues."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import data, models
from ..curvature import top_eigenpairs
from ..errors import ConfigError
from ..objective import Objective
from ..runner import Probes

__all__ = [
    "NO_PROBES",
    "Reproduction",
    "edge_eigenvalues",
    "mnist1d_net",
    "moving_average",
    "row",
]

NO_PROBES = Probes(sharpness=False, alignment=False)
"""Probes that add nothing to the processes' own rows (a run kept for its points or losses)."""


@dataclasses.dataclass(frozen=True)
class Reproduction:
    """One paper experiment: ``run(out, quick)`` writes figures and a predicted-vs-measured table
    under ``out`` and returns the table's rows (dicts with ``quantity``, ``predicted``,
    ``measured``, ``tolerance``, ``ok``). An experiment that reads on-disk ``datasets`` is called
    ``run(out, quick, data_dir)`` (``data_dir`` None: the default places, see `eoslab.data`)."""

    name: str
    source: str  # which paper / figure
    description: str
    run: Callable[..., list[dict]]
    needs: str = ""  # data that must be present (for the full variant), if any
    datasets: tuple[str, ...] = ()  # the on-disk datasets it reads (``--data-dir``)

    def __call__(self, out: Path, quick: bool, data_dir: Path | None = None) -> list[dict]:
        """Run it into ``out``; ``data_dir`` only for an experiment that reads ``datasets``."""
        if self.datasets:
            return self.run(Path(out), quick, data_dir)
        if data_dir is not None:
            raise ConfigError(
                "data_dir", str(data_dir), f"None ({self.name} reads no dataset from disk)"
            )
        return self.run(Path(out), quick)


def row(
    quantity: str,
    predicted: float,
    measured: float,
    tolerance: float,
    *,
    relative: bool = False,
    at_least: bool = False,
    at_most: bool = False,
) -> dict:
    """One line of a predicted-vs-measured table.

    ``ok`` when ``|measured - predicted| <= tolerance`` (relative to ``|predicted|`` with
    ``relative``), or, for a one-sided prediction, ``measured >= predicted - tolerance``
    (``at_least``) or ``measured <= predicted + tolerance`` (``at_most``).
    """
    diff = measured - predicted
    if at_least:
        err, kind = max(-diff, 0.0), "at least"
    elif at_most:
        err, kind = max(diff, 0.0), "at most"
    else:
        err, kind = abs(diff), "absolute"
    if relative:
        err, kind = err / max(abs(predicted), 1e-300), "relative"
    ok = bool(math.isfinite(measured) and err <= tolerance)
    return {
        "quantity": quantity,
        "predicted": float(predicted),
        "measured": float(measured),
        "error": float(err),
        "tolerance": float(tolerance),
        "kind": kind,
        "ok": ok,
    }


def moving_average(x: np.ndarray, half_width: int) -> np.ndarray:
    """Centred moving average over ``2*half_width+1`` samples (shrinking at the ends)."""
    x = np.asarray(x, np.float64)
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(x.size)
    lo, hi = np.maximum(0, i - half_width), np.minimum(x.size, i + half_width + 1)
    return (c[hi] - c[lo]) / (hi - lo)


def mnist1d_net(n: int, width: int, seed: int = 0) -> Objective:
    """A fully-connected tanh net on MNIST-1D (first ``n`` examples), MSE, float64 (call it
    inside ``jax.enable_x64(True)``)."""
    ds = data.load("mnist1d", n=n)
    apply, params = models.create(
        "mlp",
        jax.random.key(seed),
        ds.x_train.shape[1:],
        10,
        widths=(width, width),
        activation="tanh",
    )
    return Objective.from_model(apply, params, ds, "mse_half", dtype="float64")


def edge_eigenvalues(obj: Objective, W: np.ndarray, k: int = 8) -> np.ndarray:
    """The top ``k`` Hessian eigenvalues (certified Lanczos, relative tolerance 1e-4) at each
    row of ``W`` ``(n, d)``: how many sit above ``2/lr`` says how many directions are at the
    edge."""
    return np.stack(
        [np.asarray(top_eigenpairs(obj, jnp.asarray(w), k, tol=1e-4).values) for w in W]
    )
