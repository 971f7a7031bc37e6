r"""Edge of Stochastic Stability (Andreyev & Beneventano 2024): mini-batch SGD holds its *batch
sharpness* at $2/\eta$, while the full-batch $\lambda_{\max}$ sits lower, the lower the smaller
the batch.

$\mathrm{BS}(w)=\mathbb E_B[g_B^\top H_Bg_B/\lVert g_B\rVert^2]$ (random batches of the SGD batch
size $b$; `eoslab.curvature.batch_sharpness`) and $\lambda_{\max}(w)=\lambda_1(\nabla^2L(w))$
(certified Lanczos, the loop's ``sharpness``) are measured every ``probe_every`` steps of plain
SGD (`eoslab.dynamics.MiniBatch` with ``rules.GD(lr)``) at three batch sizes and one ``lr``,
each from several seeds (the seed draws the initialization and the batches).

**Stable phase** (where every mean below is taken): the probes of the second half of a run,
steps $\ge T/2$. A row checks that it is a stable phase: in every run, BS first reached
$0.9\cdot2/\eta$, within two of its standard errors (the *onset*), by step $T/2$.

Rows, for each batch size: the mean over seeds of the stable-phase mean of BS $/(2/\eta)=1$
(relative 10%); that of $\lambda_{\max}$ $\le$ that of BS; latest onset by $T/2$. Across batch
sizes: the mean of $\lambda_{\max}/(2/\eta)$ increases with $b$ (the gap
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
from ..dynamics.minibatch import MiniBatch
from ..dynamics.rules import GD
from ..errors import ConfigError, check_int, check_positive
from ..objective import Objective
from ..report.eoss_figures import eoss_figures
from ..report.tables import write_frame, write_table
from ..runner import BatchSharpness, Probes, run
from ._common import Reproduction, row

__all__ = [
    "REPRODUCTIONS",
    "EossSettings",
    "FULL",
    "QUICK",
    "eoss_experiment",
    "eoss_problem",
    "eoss_rows",
    "per_run",
    "sgd_curvature_run",
    "stable_phase",
    "summarize",
]


@dataclasses.dataclass(frozen=True)
class EossSettings:
    """One variant: the problem (``n`` mnist-5k digits scaled by ``scaling``, see `data.load`; a
    tanh MLP of ``widths`` with its initial weights times ``init_scale``), SGD (``lr``,
    ``batch_sizes``, ``steps``, one run per batch size and seed in ``seeds``) and the probes
    (every ``probe_every`` steps; BS to relative standard error ``rel_err``, at most
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
    seeds: tuple[int, ...] = (0,)
    scaling: str = "global"

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
        if (
            not self.seeds
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in self.seeds)
            or len(set(self.seeds)) != len(self.seeds)
        ):
            raise ConfigError("seeds", self.seeds, "a non-empty tuple of distinct integers >= 0")
        data.check_scaling(self.scaling)


FULL = EossSettings(
    n=4000,
    widths=(64, 64),
    init_scale=0.5,
    lr=0.6,
    batch_sizes=(8, 10, 12),
    steps=4000,
    probe_every=250,
    seeds=(0, 1, 2),
)
# the same SGD runs, with a looser batch-sharpness estimate
QUICK = dataclasses.replace(FULL, rel_err=0.04, max_batches=150)


def eoss_problem(s: EossSettings, seed: int = 0) -> Objective:
    r"""$L(w)=\frac1n\sum_i\frac12\lVert f_w(x_i)-e_{y_i}\rVert^2$ on the first ``s.n`` mnist-5k
    digits (each pixel centred, scaled as ``s.scaling`` says), $f$ a tanh MLP
    ``784 -> widths -> 10`` with PyTorch's default init from ``seed`` times ``s.init_scale``
    (the authors' ``--init-scale``: a flat start, so that sharpening, not a catapult, brings BS
    to $2/\eta$), float32."""
    ds = data.load("mnist-5k", n=s.n, scaling=s.scaling)
    apply, params = models.create(
        "mlp",
        jax.random.key(seed),
        ds.input_shape,
        ds.num_classes,
        widths=s.widths,
        activation="tanh",
    )
    params = jax.tree.map(lambda p: s.init_scale * p, params)
    return Objective.from_model(apply, params, ds, "mse_half", dtype="float32")


def sgd_curvature_run(
    obj: Objective, s: EossSettings, batch_size: int, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray]:
    """SGD at ``s.lr`` with batches of ``batch_size`` (drawn from ``seed``) for ``s.steps``
    steps from ``obj.w0``; every ``s.probe_every`` steps its loss, ``sharpness``
    ($\\lambda_{\\max}$, certified to relative $10^{-3}$) and ``batch_sharpness`` (with
    ``_stderr`` and ``_batches``). Returns the probed rows (with ``batch_size`` and ``seed``
    columns) and the last probed point; a run that diverges keeps the probes before it (its
    stable phase is then short or empty and its rows fail)."""
    probe = BatchSharpness(
        batch_size,
        rel_err=s.rel_err,
        max_batches=s.max_batches,
        seed=seed + 1,
        lambda_max=False,
        gni=False,
    )
    res = run(
        MiniBatch(GD(s.lr), batch_size, seed=seed),
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
    frame.insert(0, "seed", seed)
    frame.insert(0, "batch_size", batch_size)
    return frame, w_last


def stable_phase(frame: pd.DataFrame, steps: int) -> pd.DataFrame:
    """The probes of the stable phase: steps $\\ge$ ``steps``/2 (module docstring)."""
    return frame[frame["step"] >= steps / 2]


def per_run(curves: pd.DataFrame, s: EossSettings) -> pd.DataFrame:
    r"""One row per run (``batch_size``, ``seed`` of ``curves``): the onset step (first probe
    whose BS is not significantly below $0.9\cdot2/\eta$: BS $+\,2$ stderr $\ge0.9\cdot2/\eta$;
    NaN if none), the number of stable-phase probes, the means of BS and $\lambda_{\max}$ over
    them (NaN if none), and the standard error of the BS mean ($\mathrm{sd}/\sqrt k$ over the
    $k$ probes, with the estimator's own error added in quadrature)."""
    thr = 2.0 / s.lr
    out = []
    for (b, seed), f in curves.groupby(["batch_size", "seed"], sort=True):
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
                "batch_size": int(b),
                "seed": int(seed),
                "onset_step": float(hit.iloc[0]) if len(hit) else math.nan,
                "stable_probes": k,
                "bs_mean": float(bs.mean()) if k else math.nan,
                "bs_mean_stderr": math.hypot(time_se, float(np.sqrt(np.sum(est**2))) / max(k, 1)),
                "lambda_max_mean": float(lam.mean()) if k else math.nan,
            }
        )
    return pd.DataFrame(out)


def summarize(runs: pd.DataFrame, s: EossSettings) -> pd.DataFrame:
    r"""One row per batch size from ``runs`` (one row per run, as `per_run` returns them): the
    mean over seeds of the runs' stable-phase means of BS and $\lambda_{\max}$ (NaN if a run has
    no stable phase), their standard errors over seeds ($\mathrm{sd}/\sqrt S$; with one seed, the
    run's own BS error and NaN for $\lambda_{\max}$), the latest onset over seeds (NaN if a run
    never reached the edge), the fewest stable-phase probes of a run, and the ratios to
    $2/\eta$."""
    thr = 2.0 / s.lr
    out = []
    for b, p in runs.groupby("batch_size", sort=True):
        n_seeds = len(p)
        bs = p["bs_mean"].to_numpy(np.float64)
        lam = p["lambda_max_mean"].to_numpy(np.float64)
        if n_seeds > 1:
            bs_se = float(bs.std(ddof=1) / math.sqrt(n_seeds))
            lam_se = float(lam.std(ddof=1) / math.sqrt(n_seeds))
        else:
            bs_se, lam_se = float(p["bs_mean_stderr"].iloc[0]), math.nan
        onset = p["onset_step"].to_numpy(np.float64)
        out.append(
            {
                "batch_size": int(b),
                "lr": s.lr,
                "two_over_lr": thr,
                "seeds": n_seeds,
                "onset_step": float(onset.max()),  # NaN if any run never reached the edge
                "stable_probes": int(p["stable_probes"].min()),
                "bs_mean": float(bs.mean()),
                "bs_mean_stderr": bs_se,
                "lambda_max_mean": float(lam.mean()),
                "lambda_max_mean_stderr": lam_se,
                "bs_over_threshold": float(bs.mean() / thr),
                "lambda_max_over_threshold": float(lam.mean() / thr),
                "gap": float(bs.mean() - lam.mean()),
            }
        )
    return pd.DataFrame(out)


def eoss_rows(summary: pd.DataFrame, s: EossSettings) -> list[dict]:
    """The predicted-vs-measured rows of `summarize`'s table (module docstring)."""
    over = f"mean over {len(s.seeds)} seed{'s' if len(s.seeds) > 1 else ''}"
    rows = []
    for r in summary.itertuples():
        b = r.batch_size
        rows += [
            row(
                f"b={b}: batch sharpness / (2/lr), stable phase, {over}",
                1.0,
                r.bs_over_threshold,
                0.10,
                relative=True,
            ),
            row(
                f"b={b}: lambda_max / batch sharpness, stable phase, {over} (below: at most 1)",
                1.0,
                r.lambda_max_mean / r.bs_mean,
                0.0,
                at_most=True,
            ),
            row(
                f"b={b}: onset step, BS + 2 s.e. first >= 0.9 * 2/lr, latest run (at most steps/2)",
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
                f"lambda_max / (2/lr), {over}: b={small} below b={large} (the gap grows as b "
                "shrinks)",
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
    frames, points = [], {}
    for seed in s.seeds:
        obj = eoss_problem(s, seed)
        for b in s.batch_sizes:
            frame, points[f"b{b}_seed{seed}"] = sgd_curvature_run(obj, s, b, seed)
            frames.append(frame)
    curves = pd.concat(frames, ignore_index=True)
    runs = per_run(curves, s)
    summary = summarize(runs, s)
    rows = eoss_rows(summary, s)
    out = Path(out)
    write_frame(curves, out / "curves.csv")
    write_frame(runs, out / "runs.csv")
    write_frame(summary.assign(wall_s=time.perf_counter() - t0), out / "summary.csv")
    np.savez(out / "final_points.npz", **points)
    eoss_figures(out, curves, rule=GD(s.lr).describe(), stable_from=s.steps / 2)
    write_table(
        out,
        rows,
        f"Edge of Stochastic Stability: SGD at lr {s.lr:g}, b = "
        + ", ".join(map(str, s.batch_sizes))
        + f", seeds {', '.join(map(str, s.seeds))} (tanh MLP {s.widths}, {s.n} mnist-5k digits "
        f"with {s.scaling} scaling, MSE)",
    )
    return rows


REPRODUCTIONS = (
    Reproduction(
        "eoss",
        "Andreyev & Beneventano (2024), Edge of Stochastic Stability",
        "SGD at three batch sizes, three seeds each: batch sharpness at 2/lr, lambda_max below, "
        "lower for smaller batches (tanh MLP, mnist-5k, MSE)",
        eoss_experiment,
    ),
)
"""The EoSS reproduction."""
