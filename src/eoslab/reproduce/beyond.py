"""Beyond the paper: central flows, self-stabilization and Adam at the Edge of Stability.

Each experiment runs in float64 (a scoped ``jax.enable_x64`` around its computation), through the
one loop (`eoslab.runner.run`) or the theory's front doors to it, and draws with
`eoslab.report.beyond_figures`. Settings and checks: ``docs/theory.md``, "Reproductions and
their checks" (the theory: "Self-stabilization", "Central flows").
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .. import data, models
from ..curvature import top_eigenpairs
from ..curvature.rounding import clip_tol
from ..dynamics.central_flow import CentralFlow, SDPCentralFlow
from ..dynamics.optimizer import Optimizer
from ..dynamics.rules import GD, Adam, HeavyBall
from ..objective import Objective
from ..report.beyond_figures import (
    adam_eos_figures,
    central_flow_figures,
    self_stabilization_figures,
)
from ..report.tables import write_frame, write_table
from ..runner import Probes, Stop, run
from ..theory import (
    gd_lockstep,
    iterate,
    moving_average,
    self_stabilization,
    track_preconditioned_sharpness,
)
from ._common import Experiment, row

__all__ = [
    "EXPERIMENTS",
    "adam_eos_experiment",
    "central_flow_experiment",
    "gd_beside_flows",
    "self_stabilization_experiment",
]


def _net(n: int, width: int, seed: int = 0) -> Objective:
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


def gd_beside_flows(
    obj: Objective, *, lr: float, steps: int, every: int, k: int, window: int, substeps: int = 4
) -> tuple[pd.DataFrame, np.ndarray]:
    r"""GD, gradient flow $\phi(w_0,\eta t)$ and GD's central flow (closed form for ``k = 1``,
    the SDP with ``k`` directions otherwise) from ``obj.w0``, in lockstep through the one loop.

    Returns the wide frame of `eoslab.theory.gd_lockstep` (one row every ``every`` steps:
    ``loss_gd``, ``loss_gd_avg``, ``loss_gf``, ``loss_cf``, ``pred_loss_cf``, ``trace_sigma``,
    ``sharpness_{gd,gf,cf}``, ``gd_gf``, ``gd_cf``, ``cf_gf``) and GD's loss at every step
    ``0 .. steps-1``.
    """
    cf = (
        CentralFlow(lr=lr, substeps=substeps)
        if k == 1
        else SDPCentralFlow(lr=lr, substeps=substeps, k=k)
    )
    wide, rows = gd_lockstep(
        obj, obj.w0, lr=lr, steps=steps, every=every, window=window, central_flow=cf
    )
    gd_loss = rows[rows["process"] == "gd"]["loss"].to_numpy()[:steps]
    return wide, gd_loss


def _eos_rows(df: pd.DataFrame, window: int) -> pd.DataFrame:
    """Rows of the lockstep frame in the EoS phase: after the first active Sigma plus a window."""
    on = np.nonzero(df["trace_sigma"].to_numpy() > 0)[0]
    if on.size == 0:
        return df.iloc[0:0]
    start = int(df["step"].iloc[on[0]]) + 2 * window
    end = int(df["step"].iloc[-1]) - window
    return df[(df["step"] >= start) & (df["step"] <= end)]


def _heldout_net(n: int, seed: int = 1) -> Objective:
    """A network the checks were not tuned on: a depth-3 GELU MLP (32, 32, 32) on a balanced
    draw of ``n`` MNIST-1D examples (seed 1), MSE, float64 (call inside ``jax.enable_x64``)."""
    ds = data.load("mnist1d", n=n, subset="balanced", seed=seed)
    apply, params = models.create(
        "mlp",
        jax.random.key(seed),
        ds.x_train.shape[1:],
        10,
        widths=(32, 32, 32),
        activation="gelu",
    )
    return Objective.from_model(apply, params, ds, "mse_half", dtype="float64")


def _edge_eigenvalues(obj: Objective, W: np.ndarray, k: int = 8) -> np.ndarray:
    """The top ``k`` Hessian eigenvalues (certified Lanczos, relative tolerance 1e-4) at each
    row of ``W`` ``(n, d)``: how many sit above ``2/lr`` says how many directions are at the
    edge."""
    return np.stack(
        [np.asarray(top_eigenpairs(obj, jnp.asarray(w), k, tol=1e-4).values) for w in W]
    )


def _loss_error(df: pd.DataFrame) -> pd.Series:
    """|window-averaged prediction / GD's window-averaged loss - 1| (the same centred window)."""
    return (df["pred_loss_cf_avg"] / df["loss_gd_avg"] - 1.0).abs()


def central_flow_experiment(out: Path, quick: bool) -> list[dict]:
    n, width, lr = (300, 24, 0.5) if quick else (1000, 48, 0.5)
    steps, k, window = (600, 1, 25) if quick else (1500, 2, 25)
    thr = 2.0 / lr
    with jax.enable_x64(True):
        obj = _net(n, width)
        df, gd_loss = gd_beside_flows(obj, lr=lr, steps=steps, every=5, k=k, window=window)
        eos = _eos_rows(df, window)
        # GD's spectrum at 12 EoS-phase iterates: several eigenvalues at the edge lift lambda_1
        at = np.linspace(eos["step"].iloc[0], eos["step"].iloc[-1], 12).astype(int)
        W = np.asarray(iterate(obj, obj.w0, GD(lr), int(at[-1]) + 1).w)[at]
        eig = _edge_eigenvalues(obj, W)
        # held out: a network the rows were not tuned on
        held = _heldout_net(300)  # both variants (its EoS phase checked at this size)
        dh, _ = gd_beside_flows(held, lr=lr, steps=600, every=5, k=1, window=window)
    write_frame(df, out / "lockstep.csv")
    write_frame(dh, out / "heldout.csv")
    write_frame(
        pd.DataFrame(eig, columns=[f"lambda_{i + 1}" for i in range(eig.shape[1])]).assign(step=at),
        out / "gd_eigenvalues.csv",
    )
    rel = _loss_error(eos)
    rel_held = _loss_error(_eos_rows(dh, window))
    last = df.iloc[-1]
    rows = [
        row(
            "max |window-avg prediction / GD window-avg loss - 1| (EoS phase)",
            0.0,
            float(rel.max()) if len(rel) else float("nan"),
            0.10,
        ),
        row(
            "mean |window-avg prediction / GD window-avg loss - 1| (EoS phase)",
            0.0,
            float(rel.mean()) if len(rel) else float("nan"),
            0.05,
        ),
        row(
            "held-out net (gelu 32x3, other examples): median |pred. / GD avg - 1| (EoS phase)",
            0.0,
            float(rel_held.median()) if len(rel_held) else float("nan"),
            0.10,
        ),
        row(
            "GD sharpness / (2/lr), mean over EoS phase (several at the edge: >= 1)",
            1.0,
            float(eos["sharpness_gd"].mean() / thr) if len(eos) else float("nan"),
            0.02,
            at_least=True,
        ),
        row(
            "GD eigenvalues above 2/lr, mean over EoS phase (several at the edge)",
            2.0,
            float(np.mean(np.sum(eig > thr, axis=1))),
            0.0,
            at_least=True,
        ),
        row(
            "central-flow sharpness / (2/lr), mean over EoS phase",
            1.0,
            float(eos["sharpness_cf"].mean() / thr) if len(eos) else float("nan"),
            0.01,
        ),
        row(
            "central-flow sharpness / (2/lr), 95th percentile",
            1.0,
            float(np.percentile(df["sharpness_cf"], 95) / thr),
            0.02,
            at_most=True,
        ),
        row(
            "central-flow sharpness / (2/lr), max (an eigenvalue crossing into the warm block)",
            1.0,
            float(df["sharpness_cf"].max() / thr),
            0.1,
            at_most=True,
        ),
    ]
    if "cf_matvecs" in df:
        rows.append(
            row(
                "central-flow eigen-solve HVPs per GD step, median",
                10.0,
                float(df["cf_matvecs"].median()),
                0.0,
                at_most=True,
            )
        )
    rows += [
        row(
            "|GD - central flow| at the end", 0.0, float(last["gd_cf"]), 0.5 * float(last["gd_gf"])
        ),
        row(
            "|GD - gradient flow| at the end (grows)",
            float(last["gd_gf"]),
            float(last["gd_gf"]),
            0.0,
        ),
        row(
            "gradient-flow sharpness / (2/lr) at the end (departs, > 1)",
            1.0,
            float(last["sharpness_gf"] / thr),
            np.inf,
        ),
    ]
    avg = moving_average(gd_loss, window)
    central_flow_figures(out, df, gd_loss, avg, window=window, rule=GD(lr).describe())
    write_table(out, rows, "Central flow of GD vs GD (fc-tanh, MNIST-1D, MSE)")
    return rows


def _eos_onset(obj: Objective, lr: float, *, check_every: int = 10, max_steps: int = 3000):
    """GD's first iterate (checked every ``check_every`` steps) whose sharpness reaches ``2/lr``
    (the one at ``max_steps`` if none does) and its step."""
    res = run(
        {"gd": Optimizer(GD(lr))},
        obj,
        max_steps,
        probe_every=check_every,
        log_every=check_every,
        probes=Probes(tol=clip_tol(1e-6, obj.dtype), alignment=False),
        keep_points=True,
        stop=Stop(raise_on_divergence=True),
    )
    m = res.metrics
    hit = np.flatnonzero(m["sharpness"].to_numpy() >= 2.0 / lr)
    i = int(hit[0]) if hit.size else len(m) - 1
    return m["w"].iloc[i], int(m["step"].iloc[i])


def self_stabilization_experiment(out: Path, quick: bool) -> list[dict]:
    n, width, lr = (300, 24, 0.5) if quick else (1000, 48, 0.5)
    steps = 300 if quick else 1000
    with jax.enable_x64(True):
        obj = _net(n, width)
        # start-up: run GD until its sharpness reaches 2/lr (checked every 10 steps)
        w, t0 = _eos_onset(obj, lr)
        res = self_stabilization(obj, np.asarray(w), lr=lr, steps=steps)
        df = res.metrics
        h = 25
        mid = slice(steps // 3, steps - h)
        # GD's spectrum at 10 iterates of the averaged stretch: how many directions at the edge
        at = np.linspace(mid.start, mid.stop - 1, 10).astype(int)
        eig = _edge_eigenvalues(obj, res.w_gd[at])
    df.insert(1, "gd_step", df["step"] + t0)
    write_frame(df, out / "self_stabilization.csv")
    write_frame(
        pd.DataFrame(eig, columns=[f"lambda_{i + 1}" for i in range(eig.shape[1])]).assign(step=at),
        out / "gd_eigenvalues.csv",
    )
    tail = df.iloc[steps // 3 :]
    x2 = moving_average(df["x"].to_numpy() ** 2, h)
    lavg = moving_average(df["loss_gd"].to_numpy(), h)
    rows = [
        row(
            "time-avg x_t^2 / delta^2 (after a third; several at the edge: <= 1)",
            1.0,
            float(np.mean(x2[mid]) / np.mean(df["delta"].to_numpy()[mid] ** 2)),
            0.1,
            relative=True,
            at_most=True,
        ),
        row(
            "time-avg pull grad S_perp . grad^3 L[v, v] / time-avg 2 alpha (after a third)",
            1.0,
            float(np.mean(df["pull"].to_numpy()[mid]) / np.mean(2.0 * df["alpha"].to_numpy()[mid])),
            0.3,
            relative=True,
        ),
        row(
            "GD eigenvalues above 2/lr, mean (after a third; several at the edge)",
            2.0,
            float(np.mean(np.sum(eig > 2.0 / lr, axis=1))),
            0.0,
            at_least=True,
        ),
        row(
            "GD window-avg loss / (L(theta_dagger) + avg x^2/lr)",
            1.0,
            float(np.mean(lavg[mid]) / np.mean(df["loss_dagger"].to_numpy()[mid] + x2[mid] / lr)),
            0.1,
            relative=True,
        ),
        row(
            "GD sharpness / (2/lr), mean (several at the edge: >= 1)",
            1.0,
            float(tail["sharpness_gd"].mean() * lr / 2),
            0.02,
            at_least=True,
        ),
        row(
            "projected-GD sharpness / (2/lr), max",
            1.0,
            float(df["sharpness_dagger"].max() * lr / 2),
            0.02,
        ),
        row("max |GD - constrained trajectory|", 0.0, float(df["dist"].max()), 1.0),
    ]
    self_stabilization_figures(out, df, x2, lavg, rule=GD(lr).describe())
    write_table(out, rows, "Self-stabilization: GD vs projected GD (fc-tanh, MNIST-1D, MSE)")
    return rows


def adam_eos_experiment(out: Path, quick: bool) -> list[dict]:
    n, width = (300, 24) if quick else (1000, 48)
    steps = 1500 if quick else 5000
    lr, b1 = 2e-3, 0.9
    with jax.enable_x64(True):
        obj = _net(n, width)
        adam, heavy_ball = Adam(lr, b1, 0.999, 1e-7), HeavyBall(0.5, 0.9)
        df = track_preconditioned_sharpness(obj, obj.w0, adam, steps, every=25)
        hb = track_preconditioned_sharpness(obj, obj.w0, heavy_ball, steps // 2, every=25)
    write_frame(df, out / "adam.csv")
    write_frame(hb, out / "heavy_ball.csv")
    late = df.iloc[len(df) // 2 :]
    late_hb = hb.iloc[len(hb) // 2 :]
    rows = [
        row(
            "Adam: preconditioned sharpness / threshold, mean over 2nd half",
            1.0,
            float(late["ratio"].mean()),
            0.15,
        ),
        row("Adam: preconditioned sharpness / threshold, max", 1.0, float(df["ratio"].max()), 0.3),
        row(
            "heavy ball: sharpness / ((2+2 beta)/lr), mean over 2nd half",
            1.0,
            float(late_hb["ratio"].mean()),
            0.15,
        ),
    ]
    records = {"adam": adam.describe(), "heavy_ball": heavy_ball.describe()}
    adam_eos_figures(out, {"adam": df, "heavy_ball": hb}, records)
    write_table(out, rows, "Adam and heavy ball at the Edge of Stability (fc-tanh, MNIST-1D)")
    return rows


EXPERIMENTS = (
    Experiment(
        "central-flow",
        "Cohen, Damian, Talwalkar, Kolter, Lee (ICLR 2025), central flows",
        "GD on an fc-tanh net (MNIST-1D, MSE): central flow vs GD's averaged loss and 2/lr",
        central_flow_experiment,
    ),
    Experiment(
        "self-stabilization",
        "Damian, Nichani, Lee (ICLR 2023), self-stabilization",
        "GD from the EoS onset vs projected GD onto {S <= 2/lr}; x_t^2 vs delta^2",
        self_stabilization_experiment,
    ),
    Experiment(
        "adam-eos",
        "Cohen et al. (2022), adaptive gradient methods at the Edge of Stability",
        "Adam's preconditioned sharpness settles at (2+2 beta1)/((1-beta1) lr)",
        adam_eos_experiment,
    ),
)
"""Central flows, self-stabilization, Adam and heavy ball at the Edge of Stability."""
