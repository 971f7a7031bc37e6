"""Arora, Li, Panigrahi (ICML 2022), their VGG-11-AV experiment: normalized GD on $L$ and GD on
$\\sqrt L$ (``mse_sum``, $\\eta = 0.25$) on VGG-11-AV (avg-pool, GELU, frozen head).

``cifar-vgg`` runs it on CIFAR-10 from disk (the paper's 5,000 images; its quick variant is a
smoke run, on synthetic CIFAR-shaped inputs when CIFAR-10 is absent). ``fashion-vgg`` runs it on
real images that install offline: Fashion-MNIST (Debian's ``dataset-fashion-mnist``, ``make
fashion-data``), a class-balanced subset zero-padded to 32x32 (so the five 2x2 average pools of
VGG-11 apply unchanged), the quick variant with fewer channels. Settings and checks:
``docs/theory.md`` and ``docs/data.md``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import data, models
from ..data import Dataset
from ..dynamics.optimizer import Optimizer
from ..dynamics.rules import NormalizedGD, Rule, SqrtLossGD
from ..errors import DatasetNotFoundError
from ..models import VGG11
from ..objective import Objective
from ..report.paper_figures import cifar_vgg_figure
from ..report.tables import write_table
from ..runner import Probes, run
from ._common import NO_PROBES, Reproduction, row

__all__ = [
    "FULL",
    "NARROW_VGG",
    "QUICK",
    "REPRODUCTIONS",
    "FashionVGG",
    "fashion_vgg",
    "head_std",
    "pad_to_32",
    "run_cifar_vgg",
    "run_fashion_vgg",
]

#: VGG-11's layers and pools with 1/8 (first blocks) to 1/16 (last blocks) of its channels.
NARROW_VGG: tuple = (8, "P", 16, "P", 16, 16, "P", 32, 32, "P", 32, 32, "P")


def _one_step(obj: Objective, w: jax.Array, rule: Rule) -> jax.Array:
    """The rule's next iterate from ``w`` (one step through the loop)."""
    return run(Optimizer(rule), obj, 1, w0=w, probes=NO_PROBES).point("main")


# ------------------------------------------------------------------------------ CIFAR-10
def _cifar_or_synthetic(n: int, quick: bool, data_dir: Path | None = None):
    """CIFAR-10 (first n, standardized per pixel by the loader) if present; else, for the smoke
    variant without a ``data_dir`` only, synthetic CIFAR-shaped inputs with labels from a random
    linear teacher (real images without CIFAR-10: ``reproduce fashion-vgg``)."""
    try:
        return data.load("cifar10", n=n, data_dir=data_dir), "cifar10"
    except DatasetNotFoundError:
        if not quick or data_dir is not None:
            raise
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
    y = np.argmax(x.reshape(n, -1) @ rng.normal(size=(3072, 10)), axis=1).astype(np.int32)
    ds = Dataset(
        "synthetic-cifar-shape",
        jnp.asarray(x),
        jnp.asarray(y),
        jnp.asarray(x[:8]),
        jnp.asarray(y[:8]),
        10,
        (32, 32, 3),
    )
    return ds, "synthetic (CIFAR-10 not found)"


def run_cifar_vgg(out: Path, quick: bool, data_dir: Path | None = None) -> list[dict]:
    if quick:  # smoke: narrow VGG-11-AV, few images and steps
        n, steps, every, options = 16, 40, 20, {"config": NARROW_VGG}
    else:
        n, steps, every, options = 5000, 20_000, 500, {}
    ds, source = _cifar_or_synthetic(n, quick, data_dir)
    apply, params = models.create(
        "vgg11-av", jax.random.PRNGKey(0), ds.input_shape, ds.num_classes, **options
    )
    obj = Objective.from_model(apply, params, ds, "mse_sum", frozen=("head",), dtype="float32")
    lr = 0.25
    rows, curves = [], {}
    for alg, rule in (("normalized_gd", NormalizedGD(lr)), ("sqrt_loss_gd", SqrtLossGD(lr))):
        # the rule, with lambda_1 and lambda_2 probed (warm-started tracker) at every saved step
        res = run(
            {alg: Optimizer(rule)},
            obj,
            steps,
            probe_every=every,
            log_every=every,
            probes=Probes(k=2, tol=1e-3, alignment=False),
        )
        m = res.metrics
        eig = np.stack(m["eigs"].to_list())
        # one exact step from the last iterate checks the rule's definition on the network
        w, l0 = res.point(), float(m["loss"].iloc[-1])
        nxt = _one_step(obj, w, rule)
        g = jax.grad(obj)(w)
        lr_eff = lr / float(jnp.linalg.norm(g)) if alg == "normalized_gd" else lr / (2 * l0**0.5)
        # the rule's stability threshold 2 / lr_eff at each probe: the theory's lambda_1; at the
        # last iterate, the one just computed
        thr = m["threshold"].to_numpy(np.float64).copy()
        thr[-1] = 2 / lr_eff
        curves[alg] = (m["step"].to_numpy(), m["loss"].to_numpy(), eig, thr)
        rows.append(
            row(
                f"{alg}: step = lr_eff * grad (lr_eff = {lr_eff:.3g})",
                0.0,
                float(jnp.linalg.norm(nxt - (w - lr_eff * g))),
                1e-5 * float(jnp.linalg.norm(w)),
            )
        )
        rows.append(
            row(
                f"{alg}: loss at the end below the start",
                float(m["loss"].iloc[0]),
                float(m["loss"].iloc[-1]),
                0.0,
                at_most=True,
            )
        )
        if alg == "normalized_gd" and not quick:  # Theorem 4.7: harmonic mean over 2 steps is 2
            g1 = jax.grad(obj)(nxt)
            s0 = lr_eff * eig[-1, 0]
            s1 = lr / float(jnp.linalg.norm(g1)) * eig[-1, 0]
            rows.append(
                row(
                    "normalized_gd: 1/S_T + 1/S_T+1 (proxy eta_t lambda_1)",
                    1.0,
                    1 / s0 + 1 / s1,
                    5 * lr,
                )
            )
    cifar_vgg_figure(out / "cifar_vgg.png", curves, source=source, n=n)
    write_table(out, rows, f"cifar-vgg{' (smoke)' if quick else ''} on {source}")
    return rows


# --------------------------------------------------------------------------- Fashion-MNIST


@dataclasses.dataclass(frozen=True)
class FashionVGG:
    """Settings of the Fashion-MNIST VGG experiment (defaults: the quick variant)."""

    n: int = 128
    """Training images, class-balanced (seed 0), standardized per pixel, zero-padded to 32x32."""
    steps: int = 400
    """Steps of each algorithm."""
    every: int = 25
    """Probe lambda_1, lambda_2 (Lanczos, relative tolerance 1e-3) every this many steps."""
    lr: float = 0.25
    """eta of both algorithms (the paper's)."""
    config: tuple = NARROW_VGG
    """VGG channels and pools."""
    phase_one: bool = True
    """Predict that GD on sqrt L stays below its threshold (in phase I) for the whole run."""


def pad_to_32(ds: Dataset) -> Dataset:
    """28x28 images zero-padded by 2 pixels on each side (0 is the standardized mean)."""
    pad = ((0, 0), (2, 2), (2, 2), (0, 0))
    return dataclasses.replace(
        ds,
        x_train=jnp.pad(ds.x_train, pad),
        x_test=jnp.pad(ds.x_test, pad),
        input_shape=(32, 32, ds.input_shape[-1]),
    )


def head_std(config: tuple) -> float:
    r"""The frozen head's init std: the paper's 0.01 for 512 features, $0.01\sqrt{512/c}$ for
    $c$ (the output variance at init, $c\,\text{std}^2$ times the features', is the paper's)."""
    c = [item for item in config if item != "P"][-1]
    return 0.01 * float(np.sqrt(512 / c))


def fashion_vgg(out: Path, settings: FashionVGG, data_dir: Path | None = None) -> list[dict]:
    r"""Run both algorithms, write ``fashion_vgg.png`` and the check table; returns its rows.

    Checks: one step of each rule from its last iterate equals $w - \eta_t\nabla L(w)$ with
    $\eta_t = \eta/\lVert\nabla L\rVert$ (normalized GD) or $\eta/(2\sqrt L)$ (GD on $\sqrt L$),
    the gradient taken by `jax.grad` apart from the loop; each loss falls. Normalized GD reaches
    the edge of stability, $\lambda_1\eta_t/2 \geq 1$ at a probe, and then stays on it (median of
    $\lambda_1\eta_t/2$ over the later probes is 1) while $\lambda_1$ falls (the median of the last
    quarter of the probes is below the peak since the edge). GD on $\sqrt L$: reported as it is
    (phase I, $\lambda_1\eta_t/2 < 1$, in the quick variant).
    """
    s = settings
    ds = pad_to_32(data.load("fashion-mnist", n=s.n, subset="balanced", data_dir=data_dir))
    apply, params = models.create(
        "vgg11-av",
        jax.random.PRNGKey(0),
        ds.input_shape,
        ds.num_classes,
        config=s.config,
        head_init_std=head_std(s.config),
    )
    obj = Objective.from_model(apply, params, ds, "mse_sum", frozen=("head",), dtype="float32")
    rules = {"normalized_gd": NormalizedGD(s.lr), "sqrt_loss_gd": SqrtLossGD(s.lr)}
    t0 = time.perf_counter()
    res = run(
        {alg: Optimizer(rule) for alg, rule in rules.items()},
        obj,
        s.steps,
        probe_every=s.every,
        log_every=s.every,
        probes=Probes(k=2, tol=1e-3, alignment=False),
    )
    wall = time.perf_counter() - t0
    rows, curves = [], {}
    for alg, rule in rules.items():
        m = res.metrics[res.metrics["process"] == alg]
        m = m[m["eigs"].notna()]
        eig = np.stack(m["eigs"].to_list())
        steps, loss = m["step"].to_numpy(), m["loss"].to_numpy(np.float64)
        curves[alg] = (steps, loss, eig, m["threshold"].to_numpy(np.float64))
        rows += _step_rows(obj, alg, rule, jnp.asarray(res.point(alg)), s.lr)
        rows.append(
            row(f"{alg}: loss at the end below the start", loss[0], loss[-1], 0.0, at_most=True)
        )
    rows += _ngd_rows(curves["normalized_gd"][2][:, 0], curves["normalized_gd"][3])
    lam, thr = curves["sqrt_loss_gd"][2][:, 0], curves["sqrt_loss_gd"][3]
    stable = row(
        "sqrt_loss_gd: max lambda_1 / (2/lr_eff) (below 1: phase I, progressive sharpening)",
        1.0,
        float(np.max(lam / thr)),
        0.0,
        at_most=True,
    )
    if not s.phase_one:  # the full variant reports it without a prediction
        stable = {**stable, "ok": True, "kind": "reported"}
    rows.append(stable)
    source = "Fashion-MNIST padded to 32x32"
    cifar_vgg_figure(out / "fashion_vgg.png", curves, source=source, n=s.n)
    write_table(
        out, rows, f"fashion-vgg{' (quick)' if s is QUICK else ''} on {source}: {wall:.0f} s"
    )
    return rows


def _step_rows(obj: Objective, alg: str, rule, w, lr: float) -> list[dict]:
    """One exact step from ``w``: the rule's update equals $w - \\eta_t g$, g by `jax.grad`."""
    nxt = _one_step(obj, w, rule)
    g = jax.grad(obj)(w)
    l0 = float(obj(w))
    lr_eff = lr / float(jnp.linalg.norm(g)) if alg == "normalized_gd" else lr / (2 * l0**0.5)
    return [
        row(
            f"{alg}: step = lr_eff * grad (lr_eff = {lr_eff:.3g})",
            0.0,
            float(jnp.linalg.norm(nxt - (w - lr_eff * g))),
            1e-5 * float(jnp.linalg.norm(w)),
        )
    ]


def _ngd_rows(lam: np.ndarray, thr: np.ndarray) -> list[dict]:
    """Normalized GD at probes: $\\lambda_1$ and the threshold $2/\\eta_t$."""
    ratio = lam / thr
    reached = bool(np.any(ratio >= 0.95))
    entered = int(np.argmax(ratio >= 0.95)) if reached else len(lam) - 1
    tail = lam[max(len(lam) - max(len(lam) // 4, 1), entered) :]
    return [
        row(
            "normalized_gd: max lambda_1 / (2/lr_eff) reaches 1 (edge of stability)",
            1.0,
            float(ratio.max()),
            0.05,
            at_least=True,
        ),
        row(
            f"normalized_gd: median lambda_1 / (2/lr_eff) from the edge on ({len(lam) - entered}"
            " probes)",
            1.0,
            float(np.median(ratio[entered:])),
            0.1,
        ),
        row(
            "normalized_gd: lambda_1 falls (median of the last quarter / peak from the edge on)",
            1.0,
            float(np.median(tail) / lam[entered:].max()),
            0.0,
            at_most=True,
        ),
    ]


QUICK = FashionVGG()
FULL = FashionVGG(n=5000, steps=20_000, every=500, config=VGG11, phase_one=False)


def run_fashion_vgg(out: Path, quick: bool, data_dir: Path | None = None) -> list[dict]:
    """``eoslab reproduce fashion-vgg [--quick] [--data-dir DIR]``: `QUICK` or `FULL`."""
    return fashion_vgg(out, QUICK if quick else FULL, data_dir)


REPRODUCTIONS = (
    Reproduction(
        "cifar-vgg",
        "Arora et al. 2022, CIFAR-10 experiment",
        "VGG-11-AV (avg-pool, GELU, frozen N(0, 0.01^2) head) on 5,000 CIFAR-10 images: "
        "normalized GD and GD on sqrt-MSE at lr 0.25",
        run_cifar_vgg,
        needs="cifar10 (full variant; --data-dir DIR)",
        datasets=("cifar10",),
    ),
    Reproduction(
        "fashion-vgg",
        "Arora et al. 2022, CIFAR-10 experiment, on Fashion-MNIST",
        "VGG-11-AV (avg-pool, GELU, frozen head) on 5,000 Fashion-MNIST images padded to 32x32 "
        "(quick: 128 images, 1/8-1/16 of the channels, 400 steps): normalized GD and GD on "
        "sqrt-MSE at lr 0.25 side by side, lambda_1 falling along normalized GD",
        run_fashion_vgg,
        needs="fashion-mnist (make fashion-data, or --data-dir DIR)",
        datasets=("fashion-mnist",),
    ),
)
"""Arora et al.'s VGG experiment: on CIFAR-10, and on Fashion-MNIST (installs offline)."""
