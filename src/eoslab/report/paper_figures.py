"""Figures of the Arora, Li, Panigrahi (ICML 2022) reproductions (`eoslab reproduce`).

Each function draws from the arrays it is given (computed by ``eoslab.reproduce.arora2022`` and
``arora2022_vgg``) and saves one PNG; settings and checks: ``docs/theory.md``, "Reproductions and
their checks".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .output import pyplot, save_figure

__all__ = [
    "cifar_vgg_figure",
    "flow_rate_figure",
    "flow_tracking_figure",
    "mnist_flow_figure",
    "mnist_flow_projected_figure",
    "quadratic_figure",
    "valley_figure",
]


def valley_figure(path: Path, sq: np.ndarray, ng: np.ndarray) -> Path:
    r"""Figure 1: the iterates ``sq`` of GD on $\sqrt L$ ($\eta=0.5$) and ``ng`` of normalized GD
    ($\eta=5$) over $\sqrt L$ of $L=(1+x^2)y^2$, the manifold $\Gamma=\{y=0\}$ drawn.

    The start is starred and labelled inside the axes; the colour bar has a tick per decade."""
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import LogFormatterSciNotation

    plt = pyplot()
    xs, ys = np.linspace(-6, 16, 400), np.linspace(-6, 6, 300)
    X, Y = np.meshgrid(xs, ys)
    Z = np.sqrt(1 + X**2) * np.abs(Y) + 1e-3
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True, layout="constrained")
    for ax, pts, title in (
        (axes[0], sq, r"(a) GD on $\sqrt{L}$, $\eta=0.5$"),
        (axes[1], ng, r"(b) normalized GD on $L$, $\eta=5$"),
    ):
        cs = ax.contourf(X, Y, Z, levels=np.logspace(-3, 2, 30), norm=LogNorm(), cmap="viridis")
        ax.axhline(0, color="purple", lw=3, label=r"$\Gamma=\{y=0\}$ (minimizers)")
        ax.plot(pts[:, 0], pts[:, 1], "o-", color="orange", ms=4, label="iterates")
        ax.plot(*pts[0], "*", color="white", mec="black", ms=14, zorder=4)
        up = pts[0, 1] >= 0  # the label goes left of the start, on the side away from Gamma
        ax.annotate(
            "start",
            pts[0],
            xytext=(-10, 6 if up else -6),
            textcoords="offset points",
            ha="right",
            va="bottom" if up else "top",
            color="white",
            fontweight="bold",
        )
        ax.annotate(
            "", xy=(0, 0.3), xytext=(4, 0.3), arrowprops={"arrowstyle": "->", "color": "white"}
        )
        ax.text(0.2, 0.6, "flatter", color="white")
        ax.set_title(title)
        ax.set_xlabel("x (along $\\Gamma$)")
        ax.legend(loc="lower left", fontsize=8)
    axes[0].set_ylabel("y (across $\\Gamma$)")
    cb = fig.colorbar(cs, ax=axes, ticks=10.0 ** np.arange(-3, 3), format=LogFormatterSciNotation())
    cb.ax.minorticks_off()
    cb.set_label(r"$\sqrt{L}$ (log scale)")
    fig.suptitle(
        r"$L(x, y) = (1 + x^2)\,y^2$: both methods zig-zag across $\Gamma$ toward flatter $x$"
    )
    return save_figure(fig, path)


def quadratic_figure(
    path: Path,
    norms: np.ndarray,
    paper: Sequence[float],
    long: np.ndarray,
    xt: np.ndarray,
    lam1: float,
    lam2: float,
    *,
    lr: float = 1.0,
) -> Path:
    r"""Figure 2: $\|\tilde x_t\|$ (``norms``, against the ``paper``'s), the alignment of the long
    run ``long`` with $v_1$, and the iterates ``xt`` in the invariant sets of
    $\operatorname{diag}(\lambda_1,\lambda_2)$ (normalized GD at ``lr``).

    The paper's values are drawn over the measured ones; components below the arithmetic's
    resolution $\epsilon\,\max_t\|\tilde x_t\|$ ($\epsilon$ of ``long``'s dtype) are not drawn
    (they are zero to that precision); legends sit below the panels, off the data."""
    plt = pyplot()
    ln = np.linalg.norm(long, axis=1)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5), layout="constrained")
    t = np.arange(norms.size)
    above = norms > lam1 / 2
    ax = axes[0]
    ax.plot(t, norms, "k-", lw=0.8, zorder=2)
    ax.scatter(t[above], norms[above], s=22, c="red", zorder=3, label=r"measured, $> \lambda_1/2$")
    ax.scatter(
        t[~above], norms[~above], s=22, c="blue", zorder=3, label=r"measured, $\leq \lambda_1/2$"
    )
    ax.plot(t, paper, "o", ms=11, mfc="none", mec="black", mew=1.3, zorder=4, label="paper (ring)")
    ax.axhline(lam1 / 2, ls="--", c="k", lw=1, label=r"$\lambda_1/2$")
    ax.set(
        xlabel="step t", ylabel=r"$\|\tilde x_t\|$", title=r"norm: a 2-cycle around $\lambda_1/2$"
    )
    dtype = np.asarray(long).dtype
    eps = np.finfo(dtype if dtype.kind == "f" else np.float64).eps
    floor = eps * float(np.max(ln))
    steps = np.arange(ln.size)
    for j, name in ((0, "v_1"), (1, "v_2")):
        comp = np.abs(long[:, j])
        keep = comp > floor
        axes[1].semilogy(
            steps[keep], comp[keep], "o-", ms=2.5, label=rf"$|\langle {name},\tilde x_t\rangle|$"
        )
    axes[1].axhline(
        floor, ls=":", c="gray", label=rf"resolution $\epsilon\,\max\|\tilde x\|$ = {floor:.1e}"
    )
    axes[1].set(
        xlabel="step t",
        ylabel=r"component of $\tilde x_t$ (absolute value)",
        title="alignment with $v_1$: the $v_2$ component vanishes",
    )
    th = np.linspace(0, 2 * np.pi, 200)
    ax = axes[2]
    ax.fill_between(
        [-lam2, lam2],
        -1.1 * lam1,
        1.1 * lam1,
        color="tab:blue",
        alpha=0.15,
        label=r"$\mathcal{I}_2: |v_2| \leq \lambda_2$",
    )
    ax.plot(
        lam1 * np.cos(th),
        lam1 * np.sin(th),
        c="tab:red",
        label=r"$\mathcal{I}_1$: $\|\tilde x\| \leq \lambda_1$",
    )
    ax.plot(xt[:, 1], xt[:, 0], "o-", c="k", ms=4, label="iterates")
    ax.set(
        xlabel=r"$\langle v_2, \tilde x\rangle$",
        ylabel=r"$\langle v_1, \tilde x\rangle$",
        title="invariant sets",
        aspect="equal",
    )
    for ax in axes:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    fig.suptitle(
        rf"normalized GD ($\eta = {lr:g}$) on $\frac{{1}}{{2}}\, x^\top \mathrm{{diag}}(\lambda_1, "
        rf"\lambda_2)\,x$, $\lambda_1 = {lam1:g}$, $\lambda_2 = {lam2:g}$; "
        r"$\tilde x_t = \mathrm{diag}(\lambda_1, \lambda_2)\,x_t/\eta$"
    )
    return save_figure(fig, path)


def flow_tracking_figure(
    path: Path,
    lrs: Sequence[float],
    taus: np.ndarray,
    predicted: Mapping[str, np.ndarray],
    curves: Mapping[tuple[str, float], tuple[np.ndarray, np.ndarray]],
    errors: Mapping[str, Sequence[float]],
    phase1: Mapping[str, Sequence[int]],
    T: float,
) -> Path:
    r"""$\Phi$(iterates) against the limiting flow ``predicted[alg]`` at times ``taus``
    (``curves[(alg, lr)] = (tau, x)``), the tracking ``errors`` against the LR, and the phase-I
    step counts against $1/\eta$ and phase II's $T/\eta^2$; one line style per algorithm
    (``normalized_gd`` solid, ``sqrt_loss_gd`` dashed)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    for alg, ls in (("normalized_gd", "-"), ("sqrt_loss_gd", "--")):
        axes[0].plot(taus, predicted[alg], "k" + ls, lw=2, label=f"flow X(tau), {alg}")
        for lr in lrs:
            tt, px = curves[(alg, lr)]
            axes[0].plot(tt, px, ls, alpha=0.7, label=f"Phi(x_t), lr={lr}")
        axes[1].loglog(lrs, errors[alg], "o" + ls, label=alg)
        axes[2].loglog(lrs, phase1[alg], "o" + ls, label=f"{alg}: phase I steps")
    axes[1].loglog(lrs, 0.1 * np.array(lrs), "k:", label="0.1 lr (bound)")
    axes[2].loglog(lrs, 1 / np.array(lrs), "k:", label="1/lr")
    axes[2].loglog(lrs, T / np.array(lrs) ** 2, "k-.", label="phase II: T/lr^2")
    axes[0].set(
        xlabel=r"$\tau = \eta^2 t$",
        ylabel="x on the manifold",
        title="Phi(iterates) against the limiting flow",
    )
    axes[1].set(xlabel="lr", ylabel="|Phi(x_T) - X(T)|", title="tracking error, T = 1")
    axes[2].set(xlabel="lr", ylabel="steps", title="time scales")
    for ax in axes:
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def mnist_flow_figure(
    path: Path,
    tau_opt: np.ndarray,
    lam_opt: np.ndarray,
    tau_flow: np.ndarray,
    lam_flow: np.ndarray,
    steps: np.ndarray,
    loss: np.ndarray,
    *,
    lr: float,
    h: float,
) -> Path:
    r"""$\lambda_1$ of normalized GD (at flow times ``tau_opt``) against the sharpness-minimizer
    flow (``tau_flow``, retraction step ``h``), and normalized GD's sampled loss."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    axes[0].plot(tau_opt, lam_opt, "o-", label=f"normalized GD, lr={lr}")
    axes[0].plot(tau_flow, lam_flow, "s--", label=f"sharpness-minimizer flow (h={h})")
    axes[0].set(
        xlabel=r"$\tau = \eta^2 t$",
        ylabel=r"$\lambda_1$ (MSE without 1/2)",
        title="sharpness: optimizer vs limiting flow",
    )
    axes[0].legend()
    axes[1].semilogy(steps, loss, label="NGD loss")
    axes[1].set(xlabel="step", ylabel="training loss", title="loss (sampled)")
    axes[1].legend()
    return save_figure(fig, path)


def cifar_vgg_figure(
    path: Path,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    *,
    source: str,
    n: int,
) -> Path:
    r"""Loss, $\lambda_1$ against the rule's threshold $2/\eta_{\rm eff}$, and the eigengap
    $\lambda_1-\lambda_2$, for each algorithm: ``curves[alg] = (steps, loss, eigs (n, 2),
    threshold)``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for (alg, (s, loss, eig, thr)), color in zip(curves.items(), ("C0", "C1"), strict=True):
        axes[0].semilogy(s, loss, color=color, label=alg)
        axes[1].plot(s, eig[:, 0], "o-", ms=3, color=color, label=f"{alg}: $\\lambda_1$ measured")
        axes[1].plot(s, thr, "--", color=color, label=f"{alg}: 2/lr_eff (EoS prediction)")
        axes[2].plot(s, eig[:, 0] - eig[:, 1], "o-", ms=3, color=color, label=f"{alg}: gap")
    axes[0].set(xlabel="step", ylabel="MSE (no 1/2)", title=f"loss ({source}, n={n})")
    axes[1].set(xlabel="step", ylabel=r"$\lambda_1$ of MSE", title="sharpness", yscale="log")
    axes[2].set(xlabel="step", ylabel=r"$\lambda_1-\lambda_2$", title="eigengap")
    for ax in axes:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def flow_rate_figure(
    path: Path,
    lrs: Sequence[float],
    taus: np.ndarray,
    errors: np.ndarray,
    sharpness: np.ndarray,
    gap_ratio: np.ndarray,
) -> Path:
    r"""The tracking error $\|\Phi(x_{\tau/\eta^2})-X(\tau)\|$ (``errors[i, k]`` for ``lrs[i]`` at
    ``taus[k]``) against $\tau$ and, at the last $\tau$, against $\eta$ beside a slope-1 line;
    $\lambda_1$ and $\lambda_2/\lambda_1$ along the flow $X(\tau)$."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    for i, lr in enumerate(lrs):
        axes[0].semilogy(taus[1:], errors[i, 1:], "o-", label=f"lr={lr}")
    lr_arr = np.asarray(lrs, dtype=float)
    axes[1].loglog(lr_arr, errors[:, -1], "o-", label=f"measured, tau={taus[-1]:g}")
    axes[1].loglog(lr_arr, errors[0, -1] * lr_arr / lr_arr[0], "k:", label="slope 1")
    axes[2].plot(taus, sharpness, "o-", color="C0", label=r"$\lambda_1(X(\tau))$")
    ax2 = axes[2].twinx()
    ax2.plot(taus, gap_ratio, "s--", color="C1", label=r"$\lambda_2/\lambda_1$")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel(r"$\lambda_2/\lambda_1$")
    axes[0].set(xlabel=r"$\tau=\eta^2t$", ylabel=r"$\|\Phi(x_t)-X(\tau)\|$", title="tracking")
    axes[1].set(xlabel="lr", ylabel="error", title="error against lr")
    axes[2].set(xlabel=r"$\tau$", ylabel=r"$\lambda_1$", title="the flow: sharpness and gap")
    for ax in axes[:2]:
        ax.legend(fontsize=7)
    axes[2].legend(loc="upper left", fontsize=7)
    ax2.legend(loc="upper right", fontsize=7)
    return save_figure(fig, path)


def mnist_flow_projected_figure(path: Path, curves: Mapping[str, np.ndarray], *, lr: float) -> Path:
    r"""mnist-flow like with like: $\lambda_1$ of normalized GD raw (at $x_t$) and projected (at
    $\Phi(x_t)$) against the flow's $\lambda_1(X(\tau))$; $\lambda_2/\lambda_1$ along both; the
    flow's guard columns (loss and $\|\nabla L\|$ at $X(\tau)$) beside NGD's $\Phi(x_t)$.
    ``curves`` holds the columns ``tau``, ``sharpness_ngd``, ``phi_sharpness_ngd``,
    ``sharpness_flow``, ``lambda_ratio_ngd``, ``lambda_ratio_flow``, ``loss_flow``,
    ``grad_norm_flow``, ``phi_loss_ngd``, ``phi_grad_norm_ngd``."""
    plt = pyplot()
    tau = np.asarray(curves["tau"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    axes[0].plot(tau, curves["sharpness_ngd"], ".-", alpha=0.5, label=r"NGD raw $\lambda_1(x_t)$")
    axes[0].plot(tau, curves["phi_sharpness_ngd"], "o-", label=r"NGD $\lambda_1(\Phi(x_t))$")
    axes[0].plot(tau, curves["sharpness_flow"], "s--", label=r"flow $\lambda_1(X(\tau))$")
    axes[1].plot(tau, curves["lambda_ratio_ngd"], "o-", label="NGD (at x_t)")
    axes[1].plot(tau, curves["lambda_ratio_flow"], "s--", label="flow")
    axes[2].semilogy(tau, curves["loss_flow"], "s--", color="C0", label="flow loss")
    axes[2].semilogy(tau, curves["grad_norm_flow"], "s--", color="C1", label=r"flow $|\nabla L|$")
    axes[2].semilogy(tau, curves["phi_loss_ngd"], "o-", color="C0", alpha=0.5, label="NGD Phi loss")
    axes[2].semilogy(
        tau, curves["phi_grad_norm_ngd"], "o-", color="C1", alpha=0.5, label=r"NGD Phi $|\nabla L|$"
    )
    axes[0].set(xlabel=r"$\tau=\eta^2t$", ylabel=r"$\lambda_1$", title=f"sharpness (lr={lr})")
    axes[1].set(xlabel=r"$\tau$", ylabel=r"$\lambda_2/\lambda_1$", title="gap", ylim=(0, 1.05))
    axes[2].set(xlabel=r"$\tau$", title="guards: how far from Gamma")
    for ax in axes:
        ax.legend(fontsize=7)
    return save_figure(fig, path)
