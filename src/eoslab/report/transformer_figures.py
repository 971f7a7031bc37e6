r"""Figures of ``eoslab reproduce transformer-eos`` (`eoslab.reproduce.transformer`).

``sharpness.png``: GD's $\lambda_1$ from init, through progressive sharpening, held at $2/\eta$
(the line labelled with its value), with the central flow's $\lambda_1$; ``loss.png``: GD's loss
(every step and averaged) beside the central flow's predicted time-averaged loss
$L(w(t))+\mathrm{tr}\,\Sigma/\eta$, and the relative errors. Adam's figure is
`eoslab.report.beyond_figures.adam_eos_figures`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .output import pyplot, save_figure
from .run_info import rule_record

__all__ = ["transformer_eos_figures"]


def transformer_eos_figures(
    out: Path,
    gd: pd.DataFrame,
    wide: pd.DataFrame,
    gd_loss: np.ndarray,
    gd_loss_avg: np.ndarray,
    *,
    rule: Mapping[str, Any],
    start: int,
    window: int,
    onset: int | None,
    eos_from: int | None,
) -> list[Path]:
    r"""Draw ``sharpness.png`` and ``loss.png`` under ``out``.

    ``gd``: GD from init (``step``, ``loss``, ``sharpness`` with NaN off the probes); ``wide``:
    the frame of GD, gradient flow and central flow started at GD step ``start``
    (``gd_step``, ``pred_loss_cf``, ``pred_loss_cf_avg``, ``loss_cf``, ``loss_gf``,
    ``loss_gd_avg``, ``sharpness_cf``); ``gd_loss`` / ``gd_loss_avg``: GD's loss beside the flows at
    every step from ``start`` and its ``2*window+1``-step average. ``onset``: GD's first probe at
    $\lambda_1\ge2/\eta$; ``eos_from``: where the EoS phase of the rows starts (shaded).
    ``rule``: GD's record (`eoslab.rules.Rule.describe`: its lr and threshold).
    """
    plt = pyplot()
    out = Path(out)
    rec = rule_record(rule)
    thr, lr = rec.threshold, rec.hyper["lr"]
    paths = []

    # ---- sharpness
    p = gd[gd["sharpness"].notna()]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(p["step"], p["sharpness"], "-", lw=1.2, color="C0", label=r"GD: $\lambda_1(H(w_t))$")
    ax.plot(
        wide["gd_step"],
        wide["sharpness_cf"],
        "--",
        lw=1.2,
        color="C3",
        label=r"central flow: $\lambda_1(H(w(t)))$",
    )
    ax.axhline(thr, color="k", ls=":", lw=1.2, label=rec.label)
    ax.annotate(
        rec.label,
        xy=(0.01, thr),
        xycoords=("axes fraction", "data"),
        xytext=(0, 4),
        textcoords="offset points",
        fontsize=9,
    )
    lam0 = float(p["sharpness"].iloc[0])
    ax.plot([p["step"].iloc[0]], [lam0], "o", color="C0", ms=4)
    ax.annotate(
        f"init {lam0:.3g}",
        xy=(p["step"].iloc[0], lam0),
        xytext=(6, -2),
        textcoords="offset points",
        fontsize=9,
    )
    if onset is not None:
        ax.axvline(onset, color="0.5", lw=0.8, ls="-.")
        ax.annotate(
            f"reaches {rec.threshold_formula}\n(step {onset})",
            xy=(onset, 0.02),
            xycoords=("data", "axes fraction"),
            xytext=(4, 0),
            textcoords="offset points",
            fontsize=8,
            color="0.3",
        )
    if eos_from is not None:
        ax.axvspan(eos_from, float(p["step"].iloc[-1]), color="0.9", zorder=0, label="EoS phase")
    ax.set(xlabel="GD step", ylabel=r"sharpness $\lambda_1$", ylim=(0, 1.35 * thr))
    ax.set_title(f"Transformer, GD at lr = {lr:g}: progressive sharpening, then EoS", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    paths.append(save_figure(fig, out / "sharpness.png"))

    # ---- losses: GD beside the central flow, and the prediction's error
    t = start + np.arange(len(gd_loss))
    s = wide["gd_step"]
    fig, (ax, bx) = plt.subplots(
        2, 1, figsize=(7, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    ax.plot(t, gd_loss, lw=0.5, alpha=0.6, color="C0", label="GD (every step)")
    ax.plot(t, gd_loss_avg, lw=1.6, color="C0", label=f"GD, {2 * window + 1}-step average")
    ax.plot(
        s,
        wide["pred_loss_cf"],
        "--",
        lw=1.4,
        color="C3",
        label=r"central flow: predicted avg loss $L(w(t)) + \mathrm{tr}\,\Sigma/\eta$",
    )
    ax.plot(s, wide["loss_cf"], ":", lw=1.4, color="C1", label=r"central flow: $L(w(t))$")
    ax.plot(s, wide["loss_gf"], "-", lw=1.0, color="C2", label="gradient flow")
    ax.set(ylabel="train loss (MSE)")
    ax.set_title(f"GD (lr = {lr:g}) and its central flow, from GD step {start}", fontsize=10)
    ax.legend(fontsize=8)
    err_pred = (wide["pred_loss_cf_avg"] / wide["loss_gd_avg"] - 1.0).abs()
    err_flow = (wide["loss_cf"] / wide["loss_gd_avg"] - 1.0).abs()
    err_gf = (wide["loss_gf"] / wide["loss_gd_avg"] - 1.0).abs()
    bx.plot(s, err_pred, "-", color="C3", label="central-flow prediction (window-averaged)")
    bx.plot(s, err_flow, ":", color="C1", label=r"$L(w(t))$ alone")
    bx.plot(s, err_gf, "-", lw=0.8, color="C2", label="gradient flow")
    if eos_from is not None:
        for a in (ax, bx):
            a.axvspan(eos_from, float(s.iloc[-1]) - window, color="0.9", zorder=0)
    bx.set(
        xlabel="GD step",
        ylabel="|loss / GD avg loss - 1|",
        yscale="log",
        ylim=(1e-5, None),
    )
    bx.legend(fontsize=8, loc="upper left")
    paths.append(save_figure(fig, out / "loss.png"))
    return paths
