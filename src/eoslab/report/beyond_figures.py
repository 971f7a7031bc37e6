"""Figures of the reproductions beyond Arora et al.: central flows, self-stabilization, Adam and
heavy ball at the Edge of Stability (`eoslab reproduce`).

Each function draws from the frames it is given (computed by ``eoslab.reproduce.cohen2025``,
``damian2023`` and ``cohen2022``) and saves its PNGs under ``out``; settings and checks:
``docs/theory.md``, "Reproductions and their checks".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .output import pyplot, save_figure
from .run_info import rule_record, threshold_label

__all__ = ["adam_eos_figures", "central_flow_figures", "self_stabilization_figures"]


def central_flow_figures(
    out: Path,
    wide: pd.DataFrame,
    gd_loss: np.ndarray,
    gd_loss_avg: np.ndarray,
    *,
    window: int,
    rule: Mapping[str, Any],
) -> list[Path]:
    r"""``loss.png``, ``sharpness.png``, ``distance.png``: GD (every step: ``gd_loss`` and its
    ``2*window+1``-step average) against the central flow and gradient flow (``wide``: the
    frame of `eoslab.reproduce.cohen2025.gd_beside_flows` with ``step``, ``pred_loss_cf``,
    ``loss_cf``, ``loss_gf``, ``sharpness_{gd,cf,gf}``, ``gd_gf``, ``gd_cf``); ``rule``: GD's record
    (`eoslab.rules.Rule.describe`), whose threshold is drawn."""
    plt = pyplot()
    out = Path(out)
    rec = rule_record(rule)
    s = wide["step"]
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(len(gd_loss)), gd_loss, lw=0.4, alpha=0.5, label="GD")
    ax.plot(np.arange(len(gd_loss)), gd_loss_avg, label=f"GD, {2 * window + 1}-step avg")
    ax.plot(s, wide["pred_loss_cf"], "--", label="central flow: predicted time-avg loss")
    ax.plot(s, wide["loss_cf"], ":", label="central flow: L(w(t))")
    ax.plot(s, wide["loss_gf"], label="gradient flow")
    ax.set(xlabel="step", ylabel="train loss", yscale="log")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / "loss.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(s, wide["sharpness_gd"], label="GD")
    ax.plot(s, wide["sharpness_cf"], "--", label="central flow")
    ax.plot(s, wide["sharpness_gf"], label="gradient flow")
    ax.axhline(rec.threshold, color="k", ls=":", label=rec.label)
    ax.set(xlabel="step", ylabel="sharpness")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / "sharpness.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(s, wide["gd_gf"], label="|GD - gradient flow|")
    ax.plot(s, wide["gd_cf"], label="|GD - central flow|")
    ax.set(xlabel="step", ylabel="distance")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / "distance.png"))
    return paths


def self_stabilization_figures(
    out: Path,
    df: pd.DataFrame,
    x2_avg: np.ndarray,
    loss_avg: np.ndarray,
    *,
    rule: Mapping[str, Any],
) -> list[Path]:
    r"""``oscillation.png`` ($x_t^2$, its average ``x2_avg`` and $\delta^2$), ``loss.png`` (GD,
    its average ``loss_avg`` and the constrained trajectory) and ``sharpness.png`` against
    GD's threshold ($2/\eta$, from ``rule``: GD's record, `eoslab.rules.Rule.describe`); ``df``
    is the self-stabilization frame with a ``gd_step`` column."""
    plt = pyplot()
    out = Path(out)
    rec = rule_record(rule)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(df["gd_step"], df["x"] ** 2, lw=0.4, alpha=0.5, label="x_t^2 (GD)")
    ax.plot(df["gd_step"], x2_avg, label="x_t^2, averaged")
    ax.plot(df["gd_step"], df["delta"] ** 2, "--", label="delta^2 = 2 alpha / beta")
    ax.set(xlabel="step", ylabel="oscillation", yscale="log")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / "oscillation.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(df["gd_step"], df["loss_gd"], lw=0.4, alpha=0.5, label="GD")
    ax.plot(df["gd_step"], loss_avg, label="GD, averaged")
    ax.plot(df["gd_step"], df["loss_dagger"], "--", label="constrained trajectory")
    ax.set(xlabel="step", ylabel="train loss")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / "loss.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(df["gd_step"], df["sharpness_gd"], label="GD")
    ax.plot(df["gd_step"], df["sharpness_dagger"], "--", label="constrained trajectory")
    ax.axhline(rec.threshold, color="k", ls=":", label=rec.label)
    ax.set(xlabel="step", ylabel="sharpness")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / "sharpness.png"))
    return paths


def adam_eos_figures(
    out: Path, frames: Mapping[str, pd.DataFrame], rules: Mapping[str, Mapping[str, Any]]
) -> list[Path]:
    """``<name>_sharpness.png`` for each frame (``step``, ``sharpness``, ``threshold``): the
    (preconditioned, for ``adam``) sharpness against the rule's threshold, labelled with the
    formula the rule records (``rules[name]``: `eoslab.rules.Rule.describe`) and its value
    (``name`` is the rule's kind: ``adam``, ``heavy_ball``)."""
    plt = pyplot()
    out = Path(out)
    paths = []
    for name, d in frames.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(
            d["step"],
            d["sharpness"],
            "o-",
            ms=3,
            lw=0.8,
            label="preconditioned sharpness" if name == "adam" else "sharpness",
        )
        thr = np.asarray(d["threshold"], dtype=float)
        value = float(thr[0]) if thr.size and np.allclose(thr, thr[0]) else None
        formula = rule_record(rules[name]).threshold_formula
        ax.plot(d["step"], thr, "k:", label=threshold_label(formula, value))
        ax.set(
            xlabel="step",
            ylabel=r"$\lambda_1(P^{-1}H)$" if name == "adam" else r"$\lambda_1$",
        )
        ax.legend(fontsize=7)
        paths.append(save_figure(fig, out / f"{name}_sharpness.png"))
    return paths
