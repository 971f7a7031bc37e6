"""Beyond the paper: central flows, self-stabilization and Adam at the Edge of Stability."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from ._common import enable_x64, pyplot, row, save_figure, write_table
from .registry import register


def _net(n: int, width: int, seed: int = 0):
    """A fully-connected tanh net on MNIST-1D (first ``n`` examples), MSE, float64."""
    from .. import data, models
    from ..objective import Objective

    enable_x64()
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


def _eos_rows(df, lr: float, window: int):
    """Rows of the lockstep frame in the EoS phase: after the first active Sigma plus a window."""
    on = np.nonzero(df["trace_sigma"].to_numpy() > 0)[0]
    if on.size == 0:
        return df.iloc[0:0]
    start = int(df["step"].iloc[on[0]]) + 2 * window
    end = int(df["step"].iloc[-1]) - window
    return df[(df["step"] >= start) & (df["step"] <= end)]


@register(
    "central-flow",
    "Cohen, Damian, Talwalkar, Kolter, Lee (ICLR 2025), central flows",
    "GD on an fc-tanh net (MNIST-1D, MSE): central flow vs GD's averaged loss and 2/lr",
)
def central_flow_experiment(out: Path, quick: bool) -> list[dict]:
    plt = pyplot()

    from ..theory.self_stabilization import gd_lockstep

    n, width, lr = (300, 24, 0.5) if quick else (1000, 48, 0.5)
    steps, k, window = (600, 1, 25) if quick else (1500, 2, 25)
    obj = _net(n, width)
    df, arr = gd_lockstep(obj, obj.w0, lr=lr, steps=steps, every=5, k=k, window=window)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "lockstep.csv", index=False)
    eos = _eos_rows(df, lr, window)
    rel = (eos["pred_loss_cf"] / eos["loss_gd_avg"] - 1.0).abs()
    thr = 2.0 / lr
    last = df.iloc[-1]
    rows = [
        row(
            "max |pred. time-avg loss / GD window-avg loss - 1| (EoS phase)",
            0.0,
            float(rel.max()) if len(rel) else float("nan"),
            0.10,
        ),
        row(
            "mean |pred. time-avg loss / GD window-avg loss - 1| (EoS phase)",
            0.0,
            float(rel.mean()) if len(rel) else float("nan"),
            0.05,
        ),
        row(
            "GD sharpness / (2/lr), mean over EoS phase",
            1.0,
            float(eos["sharpness_gd"].mean() / thr) if len(eos) else float("nan"),
            0.1,
        ),
        row(
            "central-flow sharpness / (2/lr), max", 1.0, float(df["sharpness_cf"].max() / thr), 0.02
        ),
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
    s = df["step"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(len(arr["gd_loss"])), arr["gd_loss"], lw=0.4, alpha=0.5, label="GD")
    ax.plot(
        np.arange(len(arr["gd_loss"])), arr["gd_loss_avg"], label=f"GD, {2 * window + 1}-step avg"
    )
    ax.plot(s, df["pred_loss_cf"], "--", label="central flow: predicted time-avg loss")
    ax.plot(s, df["loss_cf"], ":", label="central flow: L(w(t))")
    ax.plot(s, df["loss_gf"], label="gradient flow")
    ax.set(xlabel="step", ylabel="train loss", yscale="log")
    ax.legend(fontsize=7)
    save_figure(fig, out / "loss.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(s, df["sharpness_gd"], label="GD")
    ax.plot(s, df["sharpness_cf"], "--", label="central flow")
    ax.plot(s, df["sharpness_gf"], label="gradient flow")
    ax.axhline(thr, color="k", ls=":", label="2/lr")
    ax.set(xlabel="step", ylabel="sharpness")
    ax.legend(fontsize=7)
    save_figure(fig, out / "sharpness.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(s, df["gd_gf"], label="|GD - gradient flow|")
    ax.plot(s, df["gd_cf"], label="|GD - central flow|")
    ax.set(xlabel="step", ylabel="distance")
    ax.legend(fontsize=7)
    save_figure(fig, out / "distance.png")
    write_table(out, rows, "Central flow of GD vs GD (fc-tanh, MNIST-1D, MSE)")
    return rows


@register(
    "self-stabilization",
    "Damian, Nichani, Lee (ICLR 2023), self-stabilization",
    "GD from the EoS onset vs projected GD onto {S <= 2/lr}; x_t^2 vs delta^2",
)
def self_stabilization_experiment(out: Path, quick: bool) -> list[dict]:
    plt = pyplot()

    from ..curvature import top_eigenpairs
    from ..dynamics.rules import gd
    from ..theory.self_stabilization import moving_average, self_stabilization
    from ..theory.trajectory import iterate

    n, width, lr = (300, 24, 0.5) if quick else (1000, 48, 0.5)
    steps = 300 if quick else 1000
    obj = _net(n, width)
    # start-up: run GD until its sharpness reaches 2/lr (checked every 10 steps)
    w, v, t0 = obj.w0, None, 0
    for _ in range(300):
        e = top_eigenpairs(obj, w, 1, tol=1e-6, v0=v)
        v = e.vectors[:, 0]
        if float(e.values[0]) >= 2.0 / lr:
            break
        w = iterate(obj, w, gd(lr), 10).w[-1]
        t0 += 10
    ss = self_stabilization(obj, w, lr=lr, steps=steps)
    df = ss.metrics
    df.insert(1, "gd_step", df["step"] + t0)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "self_stabilization.csv", index=False)
    h = 25
    tail = df.iloc[steps // 3 :]
    x2 = moving_average(df["x"].to_numpy() ** 2, h)
    lavg = moving_average(df["loss_gd"].to_numpy(), h)
    mid = slice(steps // 3, steps - h)
    rows = [
        row(
            "time-avg x_t^2 / delta^2 (after a third of the run)",
            1.0,
            float(np.mean(x2[mid]) / np.mean(df["delta"].to_numpy()[mid] ** 2)),
            0.5,
            relative=True,
        ),
        row(
            "GD window-avg loss / (L(theta_dagger) + avg x^2/lr)",
            1.0,
            float(np.mean(lavg[mid]) / np.mean(df["loss_dagger"].to_numpy()[mid] + x2[mid] / lr)),
            0.1,
            relative=True,
        ),
        row("GD sharpness / (2/lr), mean", 1.0, float(tail["sharpness_gd"].mean() * lr / 2), 0.1),
        row(
            "projected-GD sharpness / (2/lr), max",
            1.0,
            float(df["sharpness_dagger"].max() * lr / 2),
            0.02,
        ),
        row("max |GD - constrained trajectory|", 0.0, float(df["dist"].max()), 1.0),
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(df["gd_step"], df["x"] ** 2, lw=0.4, alpha=0.5, label="x_t^2 (GD)")
    ax.plot(df["gd_step"], x2, label="x_t^2, averaged")
    ax.plot(df["gd_step"], df["delta"] ** 2, "--", label="delta^2 = 2 alpha / beta")
    ax.set(xlabel="step", ylabel="oscillation", yscale="log")
    ax.legend(fontsize=7)
    save_figure(fig, out / "oscillation.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(df["gd_step"], df["loss_gd"], lw=0.4, alpha=0.5, label="GD")
    ax.plot(df["gd_step"], lavg, label="GD, averaged")
    ax.plot(df["gd_step"], df["loss_dagger"], "--", label="constrained trajectory")
    ax.set(xlabel="step", ylabel="train loss")
    ax.legend(fontsize=7)
    save_figure(fig, out / "loss.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(df["gd_step"], df["sharpness_gd"], label="GD")
    ax.plot(df["gd_step"], df["sharpness_dagger"], "--", label="constrained trajectory")
    ax.axhline(2.0 / lr, color="k", ls=":", label="2/lr")
    ax.set(xlabel="step", ylabel="sharpness")
    ax.legend(fontsize=7)
    save_figure(fig, out / "sharpness.png")
    write_table(out, rows, "Self-stabilization: GD vs projected GD (fc-tanh, MNIST-1D, MSE)")
    return rows


@register(
    "adam-eos",
    "Cohen et al. (2022), adaptive gradient methods at the Edge of Stability",
    "Adam's preconditioned sharpness settles at (2+2 beta1)/((1-beta1) lr)",
)
def adam_eos_experiment(out: Path, quick: bool) -> list[dict]:
    plt = pyplot()

    from ..dynamics.rules import adam, heavy_ball
    from ..theory.central_flow import track_preconditioned_sharpness

    n, width = (300, 24) if quick else (1000, 48)
    steps = 1500 if quick else 5000
    obj = _net(n, width)
    lr, b1 = 2e-3, 0.9
    df = track_preconditioned_sharpness(obj, obj.w0, adam(lr, b1, 0.999, 1e-7), steps, every=25)
    hb = track_preconditioned_sharpness(obj, obj.w0, heavy_ball(0.5, 0.9), steps // 2, every=25)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "adam.csv", index=False)
    hb.to_csv(out / "heavy_ball.csv", index=False)
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
    for name, d in (("adam", df), ("heavy_ball", hb)):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(
            d["step"],
            d["sharpness"],
            label="preconditioned sharpness" if name == "adam" else "sharpness",
        )
        ax.plot(d["step"], d["threshold"], "k:", label="threshold")
        ax.set(xlabel="step", ylabel="sharpness")
        ax.legend(fontsize=7)
        save_figure(fig, out / f"{name}_sharpness.png")
    write_table(out, rows, "Adam and heavy ball at the Edge of Stability (fc-tanh, MNIST-1D)")
    return rows
