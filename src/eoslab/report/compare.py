"""Panels of runs that compare processes (advanced in lockstep from one start, e.g. an
experiment's ``compare``): the distances between the processes, and the central flow's predicted
loss beside the optimizer's loss.

A process's rows hold ``dist_NAME`` = |w_p - w_NAME| to every other process and, with the Phi
probe, ``phi_dist_NAME`` = |Phi(w_p) - w_NAME| (Phi: the limit of gradient flow from w_p). A
limiting flow records its flow time ``tau`` = lr^2 * step (Arora et al.'s time scale): then the
distances are drawn against tau, with the step on the top axis. The central flow's rows hold
``pred_loss``, its prediction of the optimizer's time-averaged loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .series import Series, floats, probed

__all__ = ["AVERAGE_HALF_WINDOW", "draw_distances", "draw_predicted_loss", "has_distances"]

AVERAGE_HALF_WINDOW = 25
"""The optimizer's loss beside a predicted loss is averaged over 2 * 25 + 1 steps, centred (the
window of ``eoslab reproduce central-flow``)."""


def _pairs(series: Sequence[Series]) -> list[tuple[str, str, Series]]:
    """``(label, column, owner)``: each pair of processes of a run once (from the optimizer's
    rows when it is one of them), then |Phi(optimizer) - process| where measured."""
    out: list[tuple[str, str, Series]] = []
    seen: set[tuple[object, frozenset]] = set()
    ordered = sorted(series, key=lambda s: not s.is_optimizer)
    for s in ordered:
        for col in s.df.columns:
            if not col.startswith("dist_") or not len(probed(s.df, col)):
                continue
            other = col[len("dist_") :]
            key = (s.info.path, frozenset((s.name, other)))
            if key in seen:
                continue
            seen.add(key)
            out.append((f"|{s.name} − {other}|", col, s))
    for s in ordered:
        if not s.is_optimizer:
            continue
        for col in s.df.columns:
            if col.startswith("phi_dist_") and len(probed(s.df, col)):
                other = col[len("phi_dist_") :]
                out.append((f"|Φ({s.name}) − {other}|", col, s))
    return out


def has_distances(series: Sequence[Series]) -> bool:
    """Whether the runs measured a distance between two of their processes."""
    return bool(_pairs(series))


def _tau_of_step(series: Sequence[Series], s: Series) -> pd.Series | None:
    """Step -> flow time tau in ``s``'s run (from a limiting flow's ``tau``), if recorded."""
    for other in series:
        if other.info.path == s.info.path and len(probed(other.df, "tau")):
            rows = probed(other.df, "tau")
            return pd.Series(floats(rows["tau"]), index=rows["step"].to_numpy())
    return None


def draw_distances(ax, series: Sequence[Series], colors: Sequence[str], *, prefix: bool) -> None:
    """The distances between processes on a log axis, against tau where a limiting flow records
    it (with the step on a top axis and the optimizer's lr as the O(lr) scale Phi(x_t) - X(tau)
    is measured against), else against the step. ``prefix``: name each line's run."""
    taus = []
    lr_ref: float | None = None
    for i, (label, col, s) in enumerate(_pairs(series)):
        rows = probed(s.df, col)
        x, y = rows["step"].to_numpy(), floats(rows[col])
        tau = _tau_of_step(series, s)
        if tau is not None:
            x = tau.reindex(x).to_numpy()
            taus.append((rows["step"].to_numpy(), x))
            lr = s.info.rule.hyper.get("lr")
            lr_ref = float(lr) if isinstance(lr, (int, float)) else lr_ref
        ok = np.isfinite(x) & np.isfinite(y) & (y > 0)
        name = f"{s.info.path.name}: {label}" if prefix else label
        ls = "--" if col.startswith("phi_") else "-"
        ax.plot(
            x[ok], y[ok], ls, color=colors[i % len(colors)], lw=1.2, marker="o", ms=2.5, label=name
        )
    ax.set(yscale="log", title="distances between the processes", ylabel="distance |w - w'|")
    if taus:
        if lr_ref is not None:
            ax.axhline(
                lr_ref,
                color="gray",
                ls=":",
                lw=1.2,
                label=f"lr = {lr_ref:g} (Φ(x_t) follows X(τ) to O(lr))",
            )
        steps = np.concatenate([t[0] for t in taus])
        tau = np.concatenate([t[1] for t in taus])
        ok = np.isfinite(tau) & (steps > 0)
        ratio = tau[ok] / steps[ok]
        ax.set_xlabel("flow time τ = lr² × step")
        if ok.any() and np.allclose(ratio, ratio[0], rtol=1e-9):
            r = float(ratio[0])
            top = ax.secondary_xaxis("top", functions=(lambda t: t / r, lambda n: n * r))
            top.set_xlabel("step")
    else:
        ax.set_xlabel("step")


def draw_predicted_loss(ax, series: Sequence[Series]) -> None:
    """Beside the losses: each ``pred_loss`` (the central flow's prediction of the optimizer's
    time-averaged loss), dashed in its process's colour, and the optimizer's loss averaged over
    `AVERAGE_HALF_WINDOW` steps each side (where it was logged every step)."""
    predicted = [s for s in series if len(probed(s.df, "pred_loss"))]
    for s in predicted:
        rows = probed(s.df, "pred_loss")
        who = s.label or s.info.process_label(s.name or "?")
        of = s.info.rule.kind or "the optimizer"
        ax.plot(
            rows["step"],
            floats(rows["pred_loss"]),
            "--",
            color=s.color,
            lw=1.6,
            label=f"{who}: predicted time-average of {of}'s loss",
        )
    runs = {s.info.path for s in predicted}
    w = AVERAGE_HALF_WINDOW
    for s in series:
        if not s.is_optimizer or s.info.path not in runs or "loss" not in s.df:
            continue
        steps = s.df["step"].to_numpy()
        if len(steps) < 2 * w + 1 or not np.all(np.diff(steps) == 1):
            continue
        avg = pd.Series(floats(s.df["loss"])).rolling(2 * w + 1, center=True).mean().to_numpy()
        ok = np.isfinite(avg) & (avg > 0)
        who = s.label or s.info.process_label(s.name or "?")
        ax.plot(
            steps[ok],
            avg[ok],
            color="black",
            lw=1.0,
            label=f"{who}: loss averaged over {2 * w + 1} steps",
        )
