r"""Edge of Stochastic Stability (Andreyev & Beneventano 2024): mini-batch SGD holds its *batch
sharpness* at $2/\eta$, while the full-batch $\lambda_{\max}$ sits lower, the lower the smaller
the batch.

$\mathrm{BS}(w)=\mathbb E_B[g_B^\top H_Bg_B/\lVert g_B\rVert^2]$ (random batches of the SGD batch
size $b$; `eoslab.curvature.batch_sharpness`) and $\lambda_{\max}(w)=\lambda_1(\nabla^2L(w))$
(certified Lanczos, the loop's ``sharpness``) are measured every ``probe_every`` steps of plain
SGD (`eoslab.dynamics.MiniBatch` with ``rules.gd(lr)``) at three batch sizes, one fixed ``lr``,
from one start.

**Stable phase** (where every mean below is taken): the probes of the second half of the run,
steps $\ge T/2$. A row checks that it is a stable phase: BS first reached $0.9\cdot2/\eta$,
within two of its standard errors (the *onset*), by step $T/2$.

Rows, for each batch size: stable-phase mean of BS $/(2/\eta)=1$ (relative 10%); stable-phase
mean of $\lambda_{\max}$ $\le$ that of BS; onset by $T/2$. Across batch sizes: the
stable-phase mean of $\lambda_{\max}/(2/\eta)$ increases with $b$ (the gap
$2/\eta-\lambda_{\max}$ grows as the batch shrinks). Settings and the reasons for them:
``docs/theory.md``, "Edge of Stochastic Stability: the `eoss` reproduction".
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from .. import data, models
from ..curvature import batch_sharpness_probe
from ..dynamics.minibatch import MiniBatch
from ..dynamics.rules import gd
from ..errors import ConfigError, check_int, check_positive
from ..objective import Objective
from ..report.eoss_figures import eoss_figures
from ..report.tables import write_frame, write_table
from ..runner import Probes, run
from ._common import Experiment, row

__all__ = [
    "EXPERIMENTS",
    "EossSettings",
    "FULL",
    "QUICK",
    "eoss_experiment",
    "eoss_problem",
    "eoss_rows",
    "sgd_curvature_run",
    "stable_phase",
    "summarize",
]


@dataclasses.dataclass(frozen=True)
class EossSettings:
    """One variant: the problem (``n`` mnist-5k digits, a tanh MLP of ``widths`` with its
    initial weights times ``init_scale``), SGD (``lr``, ``batch_sizes``, ``steps``) and the
    probes (every ``probe_every`` steps; BS to relative standard error ``rel_err``, at most
    ``max_batches`` batches)."""

    n: int
    widths: tuple[int, ...]
    init_scale: float
    lr: float
    batch_sizes: tuple[int, ...]
    steps: int
    probe_every: int
    rel_err: float = 0.02
    max_batches: int = 400
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("n", self.n, 2)
        if not self.widths or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.widths
        ):
            raise ConfigError("widths", self.widths, "a non-empty tuple of positive integers")
        check_positive("init_scale", self.init_scale)
        check_positive("lr", self.lr)
        bs = self.batch_sizes
        if (
            len(bs) < 2
            or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bs)
            or list(bs) != sorted(set(bs))
        ):
            raise ConfigError(
                "batch_sizes", bs, "at least two distinct positive integers, increasing"
            )
        if bs[-1] > self.n:
            raise ConfigError("batch_sizes", bs, f"batch sizes at most n = {self.n}")
        check_int("steps", self.steps, 2)
        check_int("probe_every", self.probe_every, 1)
        if self.probe_every > self.steps // 2:
            raise ConfigError(
                "probe_every", self.probe_every, f"at most steps/2 = {self.steps // 2}"
            )
        check_positive("rel_err", self.rel_err)
        check_int("max_batches", self.max_batches, 2)


FULL = EossSettings(
    n=4000,
    widths=(64, 64),
    init_scale=0.5,
    lr=0.6,
    batch_sizes=(8, 12, 16),
    steps=4000,
    probe_every=250,
)
# the same SGD runs, with a looser batch-sharpness estimate
QUICK = dataclasses.replace(FULL, rel_err=0.04, max_batches=150)


def eoss_problem(s: EossSettings) -> Objective:
    r"""$L(w)=\frac1n\sum_i\frac12\lVert f_w(x_i)-e_{y_i}\rVert^2$ on the first ``s.n`` mnist-5k
    digits (standardized per pixel), $f$ a tanh MLP ``784 -> widths -> 10`` with PyTorch's
    default init times ``s.init_scale`` (the authors' ``--init-scale``: a flat start, so that
    sharpening, not a catapult, brings BS to $2/\eta$), float32."""
    ds = data.load("mnist-5k", n=s.n)
    apply, params = models.create(
        "mlp",
        jax.random.key(s.seed),
        ds.input_shape,
        ds.num_classes,
        widths=s.widths,
        activation="tanh",
    )
    params = jax.tree.map(lambda p: s.init_scale * p, params)
    return Objective.from_model(apply, params, ds, "mse_half", dtype="float32")


def sgd_curvature_run(
    obj: Objective, s: EossSettings, batch_size: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """SGD at ``s.lr`` with batches of ``batch_size`` (drawn from ``s.seed``) for ``s.steps``
    steps from ``obj.w0``; every ``s.probe_every`` steps its loss, ``sharpness``
    ($\\lambda_{\\max}$, certified to relative $10^{-3}$) and ``batch_sharpness`` (with
    ``_stderr`` and ``_batches``). Returns the probed rows and the last probed point; a run that
    diverges keeps the probes before it (its stable phase is then short or empty and its rows
    fail)."""
    probe = batch_sharpness_probe(
        batch_size,
        rel_err=s.rel_err,
        max_batches=s.max_batches,
        seed=s.seed + 1,
        lambda_max=False,
        gni=False,
    )
    res = run(
        MiniBatch(gd(s.lr), batch_size, seed=s.seed),
        obj,
        s.steps,
        probe_every=s.probe_every,
        log_every=s.probe_every,
        probes=Probes(tol=1e-3, alignment=False),
        custom_probes=(probe,),
        keep_points=True,
    )
    m = res.metrics
    m = m[m["batch_sharpness"].notna()].reset_index(drop=True)
    w_last = np.asarray(m["w"].iloc[-1], np.float32)
    cols = [
        "step",
        "loss",
        "batch_loss",
        "sharpness",
        "sharpness_error",
        "batch_sharpness",
        "batch_sharpness_stderr",
        "batch_sharpness_batches",
    ]
    frame = m[[c for c in cols if c in m.columns]].copy()
    frame.insert(0, "batch_size", batch_size)
    return frame, w_last


def stable_phase(frame: pd.DataFrame, steps: int) -> pd.DataFrame:
    """The probes of the stable phase: steps $\\ge$ ``steps``/2 (module docstring)."""
    return frame[frame["step"] >= steps / 2]


def summarize(frames: dict[int, pd.DataFrame], s: EossSettings) -> pd.DataFrame:
    r"""One row per batch size: the onset step (first probe whose BS is not significantly below
    $0.9\cdot2/\eta$: BS $+\,2$ stderr $\ge0.9\cdot2/\eta$; NaN if none), the stable-phase
    probes, the means of BS and $\lambda_{\max}$ over them, the standard error of the BS mean
    ($\mathrm{sd}/\sqrt k$ over the $k$ probes, with the estimator's own error added in
    quadrature), and the ratios to $2/\eta$."""
    thr = 2.0 / s.lr
    out = []
    for b, f in frames.items():
        reach = f["batch_sharpness"] + 2 * f["batch_sharpness_stderr"]  # not significantly below
        hit = f["step"][reach >= 0.9 * thr]
        st = stable_phase(f, s.steps)
        k = len(st)
        bs = st["batch_sharpness"].to_numpy(np.float64)
        lam = st["sharpness"].to_numpy(np.float64)
        est = st["batch_sharpness_stderr"].to_numpy(np.float64)
        time_se = float(bs.std(ddof=1) / math.sqrt(k)) if k > 1 else math.nan
        out.append(
            {
                "batch_size": b,
                "lr": s.lr,
                "two_over_lr": thr,
                "onset_step": float(hit.iloc[0]) if len(hit) else math.nan,
                "stable_probes": k,
                "bs_mean": float(bs.mean()) if k else math.nan,
                "bs_mean_stderr": math.hypot(time_se, float(np.sqrt(np.sum(est**2))) / max(k, 1)),
                "lambda_max_mean": float(lam.mean()) if k else math.nan,
                "bs_over_threshold": float(bs.mean() / thr) if k else math.nan,
                "lambda_max_over_threshold": float(lam.mean() / thr) if k else math.nan,
                "gap": float(bs.mean() - lam.mean()) if k else math.nan,
            }
        )
    return pd.DataFrame(out)


def eoss_rows(summary: pd.DataFrame, s: EossSettings) -> list[dict]:
    """The predicted-vs-measured rows of `summarize`'s table (module docstring)."""
    rows = []
    for r in summary.itertuples():
        b = r.batch_size
        rows += [
            row(
                f"b={b}: batch sharpness / (2/lr), mean over the stable phase",
                1.0,
                r.bs_over_threshold,
                0.10,
                relative=True,
            ),
            row(
                f"b={b}: lambda_max / batch sharpness, stable-phase means (below: at most 1)",
                1.0,
                r.lambda_max_mean / r.bs_mean,
                0.0,
                at_most=True,
            ),
            row(
                f"b={b}: onset step, BS + 2 s.e. first >= 0.9 * 2/lr (at most steps/2)",
                s.steps / 2,
                r.onset_step,
                0.0,
                at_most=True,
            ),
        ]
    ratio = dict(zip(summary["batch_size"], summary["lambda_max_over_threshold"], strict=True))
    sizes = sorted(ratio)
    for small, large in zip(sizes[:-1], sizes[1:], strict=True):
        rows.append(
            row(
                f"lambda_max / (2/lr): b={small} below b={large} (the gap grows as b shrinks)",
                ratio[large],
                ratio[small],
                0.0,
                at_most=True,
            )
        )
    return rows


def eoss_experiment(out: Path, quick: bool) -> list[dict]:
    s = QUICK if quick else FULL
    t0 = time.perf_counter()
    obj = eoss_problem(s)
    frames, points = {}, {}
    for b in s.batch_sizes:
        frames[b], points[f"b{b}"] = sgd_curvature_run(obj, s, b)
    summary = summarize(frames, s)
    rows = eoss_rows(summary, s)
    out = Path(out)
    write_frame(pd.concat(frames.values(), ignore_index=True), out / "curves.csv")
    write_frame(summary.assign(wall_s=time.perf_counter() - t0), out / "summary.csv")
    np.savez(out / "final_points.npz", **points)
    eoss_figures(out, frames, lr=s.lr, stable_from=s.steps / 2)
    write_table(
        out,
        rows,
        f"Edge of Stochastic Stability: SGD at lr {s.lr:g}, b = "
        + ", ".join(map(str, s.batch_sizes))
        + f" (tanh MLP {s.widths}, {s.n} mnist-5k digits, MSE)",
    )
    return rows


EXPERIMENTS = (
    Experiment(
        "eoss",
        "Andreyev & Beneventano (2024), Edge of Stochastic Stability",
        "SGD at three batch sizes: batch sharpness at 2/lr, lambda_max below, lower for "
        "smaller batches (tanh MLP, mnist-5k, MSE)",
        eoss_experiment,
    ),
)
"""The EoSS reproduction."""
