"""The figure of the proxies reproduction (`eoslab reproduce proxies`): every sharpness proxy
overlaid on the certified $\\lambda_1$, one panel per trajectory, against $2/\\eta$."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .output import pyplot, save_figure

__all__ = ["proxy_figures"]

_LINES = {
    "critical_sharpness": "critical (along the update)",
    "directional_sharpness": "directional (update)",
    "directional_sharpness_grad": "directional (gradient)",
    "gn_sharpness": "Gauss-Newton lambda_1",
    "layer_sharpness": "largest per-layer lambda_1",
    "trace_per_param": "trace / D",
    "batch_sharpness": "batch sharpness",
    "batch_lambda_max": "batch lambda_max",
}


def proxy_figures(
    out: Path, curves: pd.DataFrame, lrs: Mapping[str, float], rules: Mapping[str, str]
) -> list[Path]:
    r"""``proxies.png``: one panel per ``curves["trajectory"]``, the certified ``sharpness``
    (black) and every proxy column of `_LINES` present, against ``step``, with $2/\eta$
    (``lrs``) dashed; for Adam (``rules``) also $\lambda_1(P^{-1}H)\,(1-\beta_1)/(1+\beta_1)$,
    whose threshold is then $2/\eta$ too."""
    plt = pyplot()
    names = list(dict.fromkeys(curves["trajectory"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.0), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        f = curves[curves["trajectory"] == name]
        s = f["step"].to_numpy()
        thr = 2.0 / lrs[name]
        ax.plot(s, f["sharpness"], "k-", lw=2.2, label="lambda_1 (certified)")
        if rules.get(name) == "adam" and "eff_sharpness" in f:
            # threshold = (2 + 2 beta_1) / ((1 - beta_1) lr): rescaled onto 2/lr by the row's own
            ax.plot(
                s,
                f["eff_sharpness"] * thr / f["threshold"],
                "k:",
                lw=1.5,
                label="lambda_1(P^-1 H) (1-b1)/(1+b1)",
            )
        for i, (col, label) in enumerate(_LINES.items()):
            if col in f and np.isfinite(f[col].to_numpy(np.float64)).any():
                ax.plot(s, f[col], "o-", ms=2.5, lw=1.0, color=f"C{i}", label=label)
        ax.axhline(thr, color="0.4", ls="--", lw=1.0, label="2/lr")
        base = max(float(np.nanmax(f["sharpness"].to_numpy(np.float64))), thr)
        cols = [c for c in _LINES if c in f]
        vals = f[cols].to_numpy(np.float64) if cols else np.zeros(1)
        top = float(np.nanmax(np.where(np.isfinite(vals), vals, 0.0), initial=0.0))
        ax.set_ylim(0, 1.1 * min(max(top, base), 3.0 * base))  # a proxy far off is cut at 3x
        ax.set_title(name)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("sharpness")
    handles: dict[str, object] = {}  # every line of every panel once (Adam's only in its own)
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    axes[0][-1].legend(
        list(handles.values()),
        list(handles),
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
    )
    return [save_figure(fig, Path(out) / "proxies.png")]
