r"""Cohen et al. (2022), "Adaptive Gradient Methods at the Edge of Stability": Adam's
preconditioned sharpness $\lambda_1(P^{-1}H)$ settles at $(2+2\beta_1)/((1-\beta_1)\eta)$, and
heavy ball's sharpness at $(2+2\beta)/\eta$.

Runs the rules through the one loop (`eoslab.runner.run`) in float64 (a scoped
``jax.enable_x64``) and draws with `eoslab.report.beyond_figures`. Settings and checks:
``docs/theory.md``, "Reproductions and their checks".
"""

from __future__ import annotations

from pathlib import Path

import jax
import pandas as pd

from ..dynamics.optimizer import Optimizer
from ..dynamics.rules import Adam, HeavyBall, Rule
from ..objective import Objective
from ..report.beyond_figures import adam_eos_figures
from ..report.tables import write_frame, write_table
from ..runner import Probes, run
from ._common import Reproduction, mnist1d_net, row

__all__ = ["REPRODUCTIONS", "adam_eos_experiment", "effective_sharpness"]


def effective_sharpness(
    obj: Objective, rule: Rule, steps: int, *, every: int, tol: float = 1e-5
) -> pd.DataFrame:
    r"""Run ``rule`` from ``obj.w0`` and measure $\lambda_1(P_t^{-1}H(w_t))$ every ``every``
    steps ($P_t$ preconditions the step taken from $w_t$; $P=I$ for rules without one): one row
    per probed step before ``steps`` with ``step``, ``loss``, ``sharpness`` (of $P^{-1}H$: the
    ``eff_sharpness`` probe for an adaptive rule), ``threshold`` (the rule's) and ``ratio``."""
    res = run(
        Optimizer(rule),
        obj,
        steps,
        probe_every=every,
        log_every=every,
        probes=Probes(tol=tol, alignment=False),
    )
    lam = "eff_sharpness" if rule.adaptive else "sharpness"
    m = res.series(None, ["loss", lam, "threshold"]).rename(columns={lam: "sharpness"})
    m = m[m["step"] < steps].reset_index(drop=True)
    m = m.astype({"loss": float, "sharpness": float, "threshold": float})
    m["ratio"] = m["sharpness"] / m["threshold"]
    return m


def adam_eos_experiment(out: Path, quick: bool) -> list[dict]:
    n, width = (300, 24) if quick else (1000, 48)
    steps = 1500 if quick else 5000
    lr, b1 = 2e-3, 0.9
    with jax.enable_x64(True):
        obj = mnist1d_net(n, width)
        adam, heavy_ball = Adam(lr, b1, 0.999, 1e-7), HeavyBall(0.5, 0.9)
        df = effective_sharpness(obj, adam, steps, every=25)
        hb = effective_sharpness(obj, heavy_ball, steps // 2, every=25)
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


REPRODUCTIONS = (
    Reproduction(
        "adam-eos",
        "Cohen et al. (2022), adaptive gradient methods at the Edge of Stability",
        "Adam's preconditioned sharpness settles at (2+2 beta1)/((1-beta1) lr)",
        adam_eos_experiment,
    ),
)
"""Adam and heavy ball at the Edge of Stability."""
