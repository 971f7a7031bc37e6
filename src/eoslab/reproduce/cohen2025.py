r"""Cohen, Damian, Talwalkar, Kolter, Lee (ICLR 2025), "Understanding Optimization in Deep
Learning with Central Flows": GD's central flow against GD's time-averaged loss.

GD, gradient flow and the central flow run from one start through the one loop
(`eoslab.runner.run`) in float64 (a scoped ``jax.enable_x64``), and draw with
`eoslab.report.beyond_figures`. Settings and checks: ``docs/theory.md``, "Reproductions and their
checks" (the theory: "Central flows").
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pandas as pd

from .. import data, models
from ..curvature.rounding import clip_tol
from ..dynamics.central_flow import CentralFlow, SDPCentralFlow
from ..dynamics.gradient_flow import GradientFlow
from ..dynamics.optimizer import Optimizer
from ..dynamics.rules import GD
from ..objective import Objective
from ..report.beyond_figures import central_flow_figures
from ..report.tables import write_frame, write_table
from ..runner import Probes, Stop, run
from ._common import (
    NO_PROBES,
    Reproduction,
    edge_eigenvalues,
    mnist1d_net,
    moving_average,
    row,
)

__all__ = ["REPRODUCTIONS", "central_flow_experiment", "gd_beside_flows"]


def gd_beside_flows(
    obj: Objective, *, lr: float, steps: int, every: int, k: int, window: int, substeps: int = 4
) -> tuple[pd.DataFrame, np.ndarray]:
    r"""GD, gradient flow $\phi(w_0,\eta t)$ and GD's central flow (closed form for ``k = 1``,
    the SDP with ``k`` directions otherwise) from ``obj.w0``, in lockstep through the one loop,
    probed every ``every`` steps (``steps`` a multiple of it).

    Returns a frame with one row every ``every`` steps before ``steps``: ``loss_gd``,
    ``loss_gd_avg`` (centred average over ``2*window+1`` steps), ``loss_gf``, ``loss_cf``,
    ``pred_loss_cf``, ``pred_loss_cf_avg`` (the same average of the prediction, over the steps
    that have one), ``trace_sigma``, ``sharpness_{gd,gf}`` (probed), ``sharpness_cf`` (the
    flow's own $\lambda_1$), the distances ``gd_gf``, ``gd_cf``, ``cf_gf`` and, for the closed
    form, ``cf_matvecs``; and GD's loss at every step ``0 .. steps-1``.
    """
    cf = (
        CentralFlow(lr=lr, substeps=substeps)
        if k == 1
        else SDPCentralFlow(lr=lr, substeps=substeps, k=k)
    )
    procs = {"gd": Optimizer(GD(lr)), "gf": GradientFlow(lr=float(lr)), "cf": cf}
    res = run(
        procs,
        obj,
        steps,
        probe_every=every,
        probes=Probes(tol=clip_tol(1e-6, obj.dtype), alignment=False),
        stop=Stop(raise_on_divergence=True),
    )
    gd_loss = res.series("gd", "loss")["loss"].to_numpy()[:steps]
    # the prediction averaged over the same window (a host-loop flow has rows at probes only)
    pred = res.series("cf", "pred_loss").set_index("step")["pred_loss"]
    pred = pred.reindex(np.arange(steps)).to_numpy(np.float64)
    have = np.isfinite(pred)
    num, cnt = moving_average(np.where(have, pred, 0.0), window), moving_average(have, window)
    pred_avg = np.divide(num, cnt, out=np.full(steps, np.nan), where=cnt > 0)
    cols = ["loss", "sharpness", "dist_gf", "dist_cf", "pred_loss", "trace_sigma", "cf_sharpness"]
    cols += ["cf_matvecs"] if k == 1 else []  # the closed form's warm eigen-solves
    idx = np.arange(0, steps, every)
    w = res.wide(cols).set_index("step").loc[idx]
    wide = pd.DataFrame(
        {
            "step": idx,
            "loss_gd": w["loss_gd"].to_numpy(),
            "loss_gd_avg": moving_average(gd_loss, window)[idx],
            "loss_gf": w["loss_gf"].to_numpy(),
            "loss_cf": w["loss_cf"].to_numpy(),
            "pred_loss_cf": w["pred_loss_cf"].to_numpy(),
            "pred_loss_cf_avg": pred_avg[idx],
            "trace_sigma": w["trace_sigma_cf"].to_numpy(),
            "sharpness_gd": w["sharpness_gd"].to_numpy(),
            "sharpness_gf": w["sharpness_gf"].to_numpy(),
            "sharpness_cf": w["cf_sharpness_cf"].to_numpy(),
            "gd_gf": w["dist_gf_gd"].to_numpy(),
            "gd_cf": w["dist_cf_gd"].to_numpy(),
            "cf_gf": w["dist_gf_cf"].to_numpy(),
        }
    )
    if "cf_matvecs_cf" in w:
        wide["cf_matvecs"] = w["cf_matvecs_cf"].to_numpy()
    return wide, gd_loss


def _eos_rows(df: pd.DataFrame, window: int) -> pd.DataFrame:
    """Rows of `gd_beside_flows`'s frame in the EoS phase: after the first active Sigma plus a
    window."""
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


def _loss_error(df: pd.DataFrame) -> pd.Series:
    """|window-averaged prediction / GD's window-averaged loss - 1| (the same centred window)."""
    return (df["pred_loss_cf_avg"] / df["loss_gd_avg"] - 1.0).abs()


def central_flow_experiment(out: Path, quick: bool) -> list[dict]:
    n, width, lr = (300, 24, 0.5) if quick else (1000, 48, 0.5)
    steps, k, window = (600, 1, 25) if quick else (1500, 2, 25)
    thr = 2.0 / lr
    with jax.enable_x64(True):
        obj = mnist1d_net(n, width)
        df, gd_loss = gd_beside_flows(obj, lr=lr, steps=steps, every=5, k=k, window=window)
        eos = _eos_rows(df, window)
        # GD's spectrum at 12 EoS-phase iterates: several eigenvalues at the edge lift lambda_1
        at = np.linspace(eos["step"].iloc[0], eos["step"].iloc[-1], 12).astype(int)
        n_gd = int(at[-1]) + 1
        W = run(Optimizer(GD(lr)), obj, n_gd, probe_every=n_gd, probes=NO_PROBES, keep_points=True)
        W = W.trajectory()[at]
        eig = edge_eigenvalues(obj, W)
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
                "central-flow eigen-solve HVPs per GD step, median (substeps x warm block)",
                float(4 * CentralFlow(lr=lr).block),
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


REPRODUCTIONS = (
    Reproduction(
        "central-flow",
        "Cohen, Damian, Talwalkar, Kolter, Lee (ICLR 2025), central flows",
        "GD on an fc-tanh net (MNIST-1D, MSE): central flow vs GD's averaged loss and 2/lr",
        central_flow_experiment,
    ),
)
"""Central flows."""
