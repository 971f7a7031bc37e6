r"""Damian, Nichani, Lee (ICLR 2023), "Self-Stabilization: The Implicit Bias of Gradient Descent
at the Edge of Stability": GD from its EoS onset beside projected GD onto $\{S\le2/\eta\}$.

Runs the `SelfStabilization` process through the one loop (`eoslab.runner.run`) in float64 (a
scoped ``jax.enable_x64``) and draws with `eoslab.report.beyond_figures`. Settings and checks:
``docs/theory.md``, "Reproductions and their checks" (the theory: "Self-stabilization").
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pandas as pd

from ..curvature.rounding import clip_tol
from ..dynamics.optimizer import Optimizer
from ..dynamics.rules import GD
from ..dynamics.self_stabilization import SelfStabilization
from ..objective import Objective
from ..report.beyond_figures import self_stabilization_figures
from ..report.tables import write_frame, write_table
from ..runner import Probes, Stop, run
from ._common import Reproduction, edge_eigenvalues, mnist1d_net, moving_average, row

__all__ = ["REPRODUCTIONS", "self_stabilization_experiment"]

_COLUMNS = [
    "loss",
    "loss_dagger",
    "sharpness_gd",
    "sharpness_dagger",
    "alpha",
    "beta",
    "delta",
    "x",
    "y",
    "x_pred",
    "y_pred",
    "dist",
    "pred_error",
    "pull",
    "pred_loss",
]
"""The `SelfStabilization` columns the reproduction keeps (``loss`` is GD's: ``loss_gd``)."""


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
        obj = mnist1d_net(n, width)
        # start-up: run GD until its sharpness reaches 2/lr (checked every 10 steps)
        w, t0 = _eos_onset(obj, lr)
        res = run(
            SelfStabilization(lr),
            obj,
            steps,
            w0=np.asarray(w),
            probe_every=steps,
            probes=Probes(sharpness=False),
            keep_points=True,
            stop=Stop(raise_on_divergence=True),
        )
        ss = res.series()
        df = ss[ss["step"] < steps][["step", *_COLUMNS]].rename(columns={"loss": "loss_gd"})
        h = 25
        mid = slice(steps // 3, steps - h)
        # GD's spectrum at 10 iterates of the averaged stretch: how many directions at the edge
        at = np.linspace(mid.start, mid.stop - 1, 10).astype(int)
        eig = edge_eigenvalues(obj, res.trajectory()[at])
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


REPRODUCTIONS = (
    Reproduction(
        "self-stabilization",
        "Damian, Nichani, Lee (ICLR 2023), self-stabilization",
        "GD from the EoS onset vs projected GD onto {S <= 2/lr}; x_t^2 vs delta^2",
        self_stabilization_experiment,
    ),
)
"""Self-stabilization."""
