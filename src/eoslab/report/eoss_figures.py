"""Figures of the Edge of Stochastic Stability reproduction (`eoslab reproduce eoss`): batch
sharpness and $\\lambda_{\\max}$ against the SGD step, one panel per batch size, against $2/\\eta$.

Draws from the curves computed by ``eoslab.reproduce.andreyev2024``; settings and checks:
``docs/theory.md``, "Edge of Stochastic Stability: the `eoss` reproduction".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .output import pyplot, save_figure
from .run_info import rule_record

__all__ = ["eoss_figures"]


def eoss_figures(
    out: Path, curves: pd.DataFrame, *, rule: Mapping[str, Any], stable_from: float
) -> list[Path]:
    r"""``eoss.png``: one panel per batch size (``curves["batch_size"]``), each with every run's
    (``curves["seed"]``) batch sharpness (``batch_sharpness``, the first run with a band $\pm2$
    ``batch_sharpness_stderr``), full-batch $\lambda_{\max}$ (``sharpness``) and $2/\eta$ against
    ``step``, the stable phase (steps $\ge$ ``stable_from``) shaded; ``loss.png``: the full-batch
    loss of every run. ``rule``: the SGD rule's record (`eoslab.rules.Rule.describe`: its lr and
    threshold)."""
    plt = pyplot()
    out = Path(out)
    rec = rule_record(rule)
    thr, lr = rec.threshold, rec.hyper["lr"]
    sizes = sorted(curves["batch_size"].unique())
    top = float(curves[["batch_sharpness", "sharpness"]].max().max())
    ymax = min(1.15 * max(top, thr), 2.5 * thr)  # a sharp start would squash the stable phase
    fig, axes = plt.subplots(
        1, len(sizes), figsize=(4.2 * len(sizes), 3.8), sharey=True, squeeze=False
    )
    for ax, b in zip(axes[0], sizes, strict=True):
        runs = list(curves[curves["batch_size"] == b].groupby("seed", sort=True))
        ax.axvspan(stable_from, float(curves["step"].max()), color="0.92", label="stable phase")
        for i, (_, f) in enumerate(runs):
            s, bs, se = f["step"], f["batch_sharpness"], f["batch_sharpness_stderr"]
            first = i == 0
            if first:
                ax.fill_between(s, bs - 2 * se, bs + 2 * se, color="C0", alpha=0.25, lw=0)
            style = dict(ms=3, lw=1.2 if first else 0.8, alpha=1.0 if first else 0.6)
            ax.plot(
                s,
                bs,
                "o-",
                color="C0",
                label="batch sharpness (±2 s.e.)" if first else None,
                **style,
            )
            ax.plot(
                s,
                f["sharpness"],
                "s-",
                color="C3",
                label=r"$\lambda_{\max}$" if first else None,
                **style,
            )
        ax.axhline(thr, color="k", ls="--", lw=1, label=rec.label)
        seeds = ", ".join(str(seed) for seed, _ in runs)
        ax.set_title(f"SGD, batch size {b}, lr {lr:g}\n(seeds {seeds}; band: seed {runs[0][0]})")
        ax.set_xlabel("SGD step (iterations)")
        ax.set_ylim(0, ymax)
        if top > ymax:
            ax.text(0.02, 0.97, "start clipped", transform=ax.transAxes, va="top", fontsize=7)
    axes[0][0].set_ylabel("curvature along a direction\n(loss / parameter², like 2/lr)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=9, bbox_to_anchor=(0.5, 0.0))
    paths = [save_figure(fig, out / "eoss.png")]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, b in enumerate(sizes):
        for j, (_, f) in enumerate(curves[curves["batch_size"] == b].groupby("seed")):
            ax.plot(
                f["step"],
                f["loss"],
                "o-",
                ms=2,
                lw=1,
                color=f"C{i}",
                label=f"batch size {b}" if j == 0 else None,
            )
    ax.set(xlabel="SGD step (iterations)", ylabel="full-batch train loss (MSE/2)", yscale="log")
    ax.set_title("one line per seed")
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out / "loss.png"))
    return paths
