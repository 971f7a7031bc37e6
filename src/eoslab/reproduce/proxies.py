r"""Exact beside cheap: ``eoslab reproduce proxies``.

Every sharpness proxy of the literature measured beside the certified $\lambda_1(\nabla^2L)$ on
the same trajectory, with its error and its cost (`eoslab.runner.proxy_probes`,
`eoslab.runner.BatchSharpness`):

- ``critical``: critical sharpness $2/\eta_c$ along the process's update (Kalra et al. 2026);
- ``directional`` / ``directional_grad``: $u^\top Hu/\|u\|^2$ along the update / the gradient;
- ``gauss_newton``: the certified top eigenvalue of $J^\top H_\ell J$;
- ``trace_per_param``: $\mathrm{tr}\,H/D$ (Hutchinson, 10 products);
- ``layer``: the largest certified top eigenvalue of the parameter groups' diagonal blocks;
- ``batch`` / ``batch_lambda_max`` (SGD): batch sharpness and $\mathbb{E}_B\lambda_{\max}(H_B)$.

Four trajectories: GD on a tanh MLP on sklearn's digits, GD and Adam on the transformer of
``transformer-eos``, SGD on the EoSS setting (``eoss``, smaller). For each proxy and trajectory
``proxies.csv`` holds its ratio to $\lambda_1$ (median and worst, in progressive sharpening and at
the edge: before and after the first probe with $\lambda_1\ge$ the threshold), the first probe at
which it reaches $2/\eta$ against $\lambda_1$'s, and its cost per probe in forward passes and
Hessian-vector products (``sharpness_hvp``: the certified solve's). ``proxies.png`` overlays
every proxy on $\lambda_1$.

The pass/fail rows (``table.md``) are what theory says: a Rayleigh quotient (directional) and a
principal block's top eigenvalue (layer) never exceed $\lambda_1$, nor does the mean eigenvalue
(trace per parameter); $\mathbb{E}_B\lambda_{\max}(H_B)\ge\lambda_{\max}(\mathbb{E}_BH_B)=\lambda_1$
(Jensen, up to its Monte-Carlo error); on a quadratic the critical sharpness equals the
directional sharpness along the gradient, $g^\top Ag/g^\top g$; Gauss-Newton equals the Hessian
for MSE at a global minimum; SGD holds its batch sharpness at $2/\eta$ at the edge (EoSS); and
the trajectories reach the edge (so the edge rows measure something).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .. import data, models
from ..curvature import (
    GaussNewtonOperator,
    critical_sharpness,
    directional_sharpness,
    top_eigenpairs,
)
from ..dynamics.minibatch import MiniBatch
from ..dynamics.optimizer import Optimizer
from ..dynamics.rules import GD, Adam
from ..errors import ConfigError
from ..objective import Objective
from ..report.output import write_text
from ..report.proxy_figures import proxy_figures
from ..report.tables import markdown_table, write_frame, write_table
from ..runner import (
    BatchSharpness,
    CriticalSharpness,
    DirectionalSharpness,
    GaussNewtonSharpness,
    LayerSharpness,
    Probes,
    TracePerParameter,
    run,
)
from . import andreyev2024, transformer
from ._common import Reproduction, row

__all__ = [
    "FULL",
    "PROXIES",
    "QUICK",
    "REPRODUCTIONS",
    "ProxySettings",
    "Trajectory",
    "proxies_experiment",
    "proxy_run",
    "proxy_summary",
]

#: proxy name -> (value column, forward-pass column, product column); None: no such cost
PROXIES: dict[str, tuple[str, str | None, str | None]] = {
    "critical": ("critical_sharpness", "critical_sharpness_fwd", None),
    "directional": ("directional_sharpness", None, "directional_sharpness_hvp"),
    "directional_grad": ("directional_sharpness_grad", None, "directional_sharpness_hvp"),
    "gauss_newton": ("gn_sharpness", None, "gn_sharpness_hvp"),
    "trace_per_param": ("trace_per_param", None, "trace_per_param_hvp"),
    "layer": ("layer_sharpness", None, "layer_sharpness_hvp"),
    "batch": ("batch_sharpness", None, "batch_sharpness_hvp"),
    "batch_lambda_max": ("batch_lambda_max", None, "batch_lambda_max_hvp"),
}


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """One run: ``problem`` (``"digits"``, ``"transformer"`` or ``"eoss"``), ``rule``
    (``"gd"`` or ``"adam"``) at ``lr``, full batch or batches of ``batch_size``; probed every
    ``every`` of ``steps`` steps."""

    name: str
    problem: str
    rule: str
    lr: float
    steps: int
    every: int
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.problem not in ("digits", "transformer", "eoss"):
            raise ConfigError("problem", self.problem, "'digits', 'transformer' or 'eoss'")
        if self.rule not in ("gd", "adam"):
            raise ConfigError("rule", self.rule, "'gd' or 'adam'")
        if self.steps % self.every:
            raise ConfigError("every", self.every, f"a divisor of steps (= {self.steps})")


@dataclasses.dataclass(frozen=True)
class ProxySettings:
    """The trajectories and the problems' sizes."""

    trajectories: tuple[Trajectory, ...]
    digits_n: int = 300
    digits_widths: tuple[int, ...] = (32, 32)
    eoss: andreyev2024.EossSettings = andreyev2024.QUICK  # mnist-5k, tanh 64x64, SGD lr 0.6
    tol: float = 1e-3  # relative tolerance of the certified lambda_1 and the host proxies


QUICK = ProxySettings(
    (
        Trajectory("gd-digits", "digits", "gd", 0.5, 400, 10),
        Trajectory("gd-transformer", "transformer", "gd", 0.2, 1000, 25),
        Trajectory("adam-transformer", "transformer", "adam", 2e-3, 1000, 25),
        Trajectory("sgd-eoss", "eoss", "gd", 0.6, 4000, 1000, batch_size=8),
    )
)
FULL = dataclasses.replace(
    QUICK,
    trajectories=(
        Trajectory("gd-digits", "digits", "gd", 0.5, 600, 5),
        Trajectory("gd-transformer", "transformer", "gd", 0.2, 1500, 10),
        Trajectory("adam-transformer", "transformer", "adam", 2e-3, 1500, 25),
        Trajectory("sgd-eoss", "eoss", "gd", 0.6, 4000, 500, batch_size=8),
    ),
)


def digits_objective(n: int, widths: tuple[int, ...], seed: int = 0) -> Objective:
    r"""A tanh MLP (``widths``) on the first ``n`` of sklearn's 8x8 digits, MSE, float64."""
    ds = data.load("digits", n=n)
    apply, params = models.create(
        "mlp",
        jax.random.key(seed),
        ds.input_shape,
        ds.num_classes,
        widths=widths,
        activation="tanh",
    )
    return Objective.from_model(apply, params, ds, "mse_half", dtype="float64")


def _objective(t: Trajectory, s: ProxySettings) -> Objective:
    if t.problem == "digits":
        return digits_objective(s.digits_n, s.digits_widths)
    if t.problem == "transformer":
        return transformer.transformer_objective(transformer.QUICK)
    return andreyev2024.eoss_problem(s.eoss)


def proxy_run(t: Trajectory, s: ProxySettings) -> pd.DataFrame:
    """The probed rows of trajectory ``t``: the certified ``sharpness`` (and ``eff_sharpness``
    for Adam), every proxy with its cost columns, ``threshold`` and ``lr_eff``."""
    obj = _objective(t, s)
    rule = GD(t.lr) if t.rule == "gd" else Adam(t.lr, 0.9, 0.999, 1e-7)
    if t.batch_size is None:
        process = Optimizer(rule)
    else:
        process = MiniBatch(rule, t.batch_size, seed=0)
    probes: tuple = (
        CriticalSharpness(),
        DirectionalSharpness(),
        TracePerParameter(10),
        GaussNewtonSharpness(tol=s.tol),
        LayerSharpness(tol=s.tol),
    )
    if t.batch_size is not None:
        probes += (
            BatchSharpness(
                t.batch_size,
                rel_err=s.eoss.rel_err,
                max_batches=s.eoss.max_batches,
                seed=1,
                lambda_max_batches=20,
                lambda_rel_err=0.05,
                gni=False,
            ),
        )
    res = run(
        process,
        obj,
        t.steps,
        probe_every=t.every,
        log_every=t.every,
        probes=Probes(tol=s.tol, alignment=False),
        custom_probes=probes,
    )
    m = res.metrics
    m = m[m["sharpness"].notna()].reset_index(drop=True)
    keep = [
        "step",
        "loss",
        "lr_eff",
        "threshold",
        "sharpness",
        "sharpness_error",
        "sharpness_matvecs",
        "eff_sharpness",
    ]
    keep += [c for cols in PROXIES.values() for c in cols if c]
    keep += [
        "batch_sharpness_stderr",
        "batch_sharpness_batches",
        "batch_lambda_max_stderr",
        "batch_lambda_max_batches",
        "critical_sharpness_fwd",
        "trace_per_param_stderr",
    ]
    keep += sorted(c for c in m.columns if c.startswith("layer_sharpness_"))
    frame = m[[c for c in dict.fromkeys(keep) if c in m.columns]].copy()
    frame.insert(0, "trajectory", t.name)
    return frame


def _worst(r: np.ndarray) -> float:
    """The ratio farthest from 1 (in log scale)."""
    r = r[np.isfinite(r) & (r > 0)]
    return float(r[np.argmax(np.abs(np.log(r)))]) if r.size else math.nan


def _onset(steps: np.ndarray, values: np.ndarray, thr: np.ndarray) -> float:
    hit = np.flatnonzero(np.asarray(values, np.float64) >= thr)
    return float(steps[hit[0]]) if hit.size else math.nan


def _reference(t: Trajectory) -> tuple[str, float]:
    """The certified quantity whose crossing of (a fraction of) the row's threshold marks the
    edge: $\\lambda_1$ for GD, $\\lambda_1(P^{-1}H)$ for Adam, and for SGD the batch sharpness
    at $0.9\\cdot2/\\eta$ (EoSS's onset: $\\lambda_1$ stays below $2/\\eta$ under SGD)."""
    if t.batch_size is not None:
        return "batch_sharpness", 0.9
    return ("eff_sharpness" if t.rule == "adam" else "sharpness"), 1.0


def proxy_summary(frame: pd.DataFrame, t: Trajectory) -> pd.DataFrame:
    """One row per proxy measured on trajectory ``t``: ratios to $\\lambda_1$ (median, worst;
    ``ps`` before the edge, ``edge`` from it), onsets and cost per probe."""
    steps = frame["step"].to_numpy(int)
    lam = frame["sharpness"].to_numpy(np.float64)
    two_over_lr = 2.0 / t.lr
    ref, scale = _reference(t)
    thr = scale * frame["threshold"].to_numpy(np.float64)
    ref_onset = _onset(steps, frame[ref].to_numpy(np.float64), thr)
    edge = steps >= ref_onset if math.isfinite(ref_onset) else np.zeros(len(steps), bool)
    out = []
    for name, (col, fwd, hvp) in PROXIES.items():
        if col not in frame.columns or frame[col].isna().all():
            continue
        v = frame[col].to_numpy(np.float64)
        r = v / lam
        med = lambda x: float(np.nanmedian(x)) if np.isfinite(x).any() else math.nan  # noqa: E731
        out.append(
            {
                "trajectory": t.name,
                "proxy": name,
                "ratio_median_ps": med(r[~edge]),
                "ratio_worst_ps": _worst(r[~edge]),
                "ratio_median_edge": med(r[edge]),
                "ratio_worst_edge": _worst(r[edge]),
                "over_2_lr_median_edge": med(v[edge] / two_over_lr),
                "lambda1_over_2_lr_median_edge": med(lam[edge] / two_over_lr),
                "onset_step": _onset(steps, v, two_over_lr),
                "lambda1_onset_step": ref_onset,
                "fwd_per_probe": med(frame[fwd].to_numpy(np.float64)) if fwd else 0.0,
                "hvp_per_probe": med(frame[hvp].to_numpy(np.float64)) if hvp else 0.0,
                "lambda1_hvp_per_probe": med(frame["sharpness_matvecs"].to_numpy(np.float64)),
            }
        )
    return pd.DataFrame(out)


def _quad(w, d):
    A, b = d
    return 0.5 * w @ A @ w + b @ w


def quadratic_rows(seeds: int = 5) -> list[dict]:
    r"""On random quadratics: critical sharpness $=$ directional sharpness along $g$ $=$
    $g^\top Ag/g^\top g$ (worst relative difference over ``seeds``)."""
    worst_cd, worst_cf, evals = 0.0, 0.0, 0
    with jax.enable_x64(True):
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            Q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
            A = Q @ np.diag(rng.uniform(0.1, 100.0, 20)) @ Q.T
            b = rng.normal(size=20)
            obj = Objective.from_data_fn(
                _quad, (jnp.asarray(A), jnp.asarray(b)), rng.normal(size=20), dtype="float64"
            )
            g = A @ np.asarray(obj.w0) + b
            cs = critical_sharpness(obj, obj.w0, eta0=0.01)
            ds = float(directional_sharpness(obj, obj.w0))
            worst_cd = max(worst_cd, abs(float(cs.value) / ds - 1))
            worst_cf = max(worst_cf, abs(float(cs.value) / (g @ A @ g / (g @ g)) - 1))
            evals = max(evals, int(cs.evals))
    return [
        row(
            "quadratic: critical / directional sharpness along g, worst of 5",
            1.0,
            1.0 + worst_cd,
            1e-6,
        ),
        row(
            "quadratic: critical sharpness / (g^T A g / g^T g), worst of 5",
            1.0,
            1.0 + worst_cf,
            1e-6,
        ),
        row(
            "quadratic: line-search forward passes (eta0 = 0.01), most",
            10.0,
            float(evals),
            0.0,
            at_most=True,
        ),
    ]


def gauss_newton_rows() -> list[dict]:
    r"""Gauss-Newton $=$ Hessian for MSE at a global minimum: a tanh MLP whose targets are its own
    outputs (zero residual), $\lambda_1(G)/\lambda_1(H)$ and $\max|G-H|/\max|H|$."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(40, 5))
        apply, params = models.create(
            "mlp", jax.random.key(0), (5,), 3, widths=(8,), activation="tanh"
        )
        y = np.asarray(apply(params, jnp.asarray(x)))
        obj = Objective.from_model(apply, params, (x, y), "mse_half", dtype="float64")
        w = obj.w0
        G = np.asarray(GaussNewtonOperator(obj, w).as_matrix())
        H = np.asarray(jax.hessian(obj)(w))
        lg = float(top_eigenpairs(GaussNewtonOperator(obj, w), k=1, tol=1e-10).values[0])
        lh = float(top_eigenpairs(obj, w, 1, tol=1e-10).values[0])
        away = w + 0.3 * jnp.asarray(rng.normal(size=obj.dim))
        Ga = np.asarray(GaussNewtonOperator(obj, away).as_matrix())
        Ha = np.asarray(jax.hessian(obj)(away))
    return [
        row(
            "MSE at a global minimum: lambda_1(GN) / lambda_1(H)", 1.0, lg / lh, 1e-8, relative=True
        ),
        row(
            "MSE at a global minimum: max|GN - H| / max|H|",
            0.0,
            float(np.abs(G - H).max() / np.abs(H).max()),
            1e-10,
        ),
        row(
            "away from it the residual term shows: max|GN - H| / max|H|",
            1e-3,
            float(np.abs(Ga - Ha).max() / np.abs(Ha).max()),
            0.0,
            at_least=True,
        ),
    ]


def trajectory_rows(frame: pd.DataFrame, summary: pd.DataFrame, t: Trajectory) -> list[dict]:
    """The rows theory fixes on a trajectory (module docstring)."""
    rows = []
    tol = 2e-3  # both sides certified to relative 1e-3
    lam = frame["sharpness"].to_numpy(np.float64)
    by = {r["proxy"]: r for _, r in summary.iterrows()}
    for name in ("directional", "directional_grad", "layer"):
        if name in by:
            col = PROXIES[name][0]
            rows.append(
                row(
                    f"{t.name}: {name} / lambda_1, largest (<= 1)",
                    1.0,
                    float(np.nanmax(frame[col] / lam)),
                    tol,
                    at_most=True,
                )
            )
    if "trace_per_param" in by:
        hi = (frame["trace_per_param"] + 4 * frame["trace_per_param_stderr"]) / lam
        rows.append(
            row(
                f"{t.name}: (trace/D + 4 s.e.) / lambda_1, largest (<= 1)",
                1.0,
                float(np.nanmax(hi)),
                tol,
                at_most=True,
            )
        )
    if "batch_lambda_max" in by:
        lo = (frame["batch_lambda_max"] + 4 * frame["batch_lambda_max_stderr"]) / lam
        rows.append(
            row(
                f"{t.name}: (E_B lambda_max(H_B) + 4 s.e.) / lambda_1, smallest (>= 1)",
                1.0,
                float(np.nanmin(lo)),
                tol,
                at_least=True,
            )
        )
    ref, scale = _reference(t)
    ref = ref if scale == 1.0 else f"{ref} (at {scale:g} x 2/lr)"
    onset = float(summary["lambda1_onset_step"].iloc[0]) if len(summary) else math.nan
    rows.append(
        row(
            f"{t.name}: {ref} reaches its threshold (onset step <= steps)",
            float(t.steps),
            onset if math.isfinite(onset) else math.inf,
            0.0,
            at_most=True,
        )
    )
    if t.batch_size is not None and "batch" in by:
        late = frame[frame["step"] >= t.steps / 2]
        bs = float(np.nanmedian(late["batch_sharpness"])) * t.lr / 2
        rows.append(
            row(
                f"{t.name}: batch sharpness / (2/lr), median over the 2nd half (EoSS)",
                1.0,
                bs,
                0.15,
            )
        )
    return rows


def proxies_experiment(out: Path, quick: bool, settings: ProxySettings | None = None) -> list[dict]:
    """Run every trajectory of ``settings`` (default `QUICK` or `FULL`) into ``out``."""
    s = settings if settings is not None else (QUICK if quick else FULL)
    out = Path(out)
    frames, summaries, rows = [], [], []
    rows += quadratic_rows()
    rows += gauss_newton_rows()
    for t in s.trajectories:
        t0 = time.perf_counter()
        with jax.enable_x64(t.problem != "eoss"):
            frame = proxy_run(t, s)
        summary = proxy_summary(frame, t).assign(wall_s=time.perf_counter() - t0)
        frames.append(frame)
        summaries.append(summary)
        rows += trajectory_rows(frame, summary, t)
        _write(out, s, frames, summaries, rows)  # after each trajectory: a partial result stays
    return rows


def _write(out: Path, s: ProxySettings, frames: list, summaries: list, rows: list) -> None:
    curves = pd.concat(frames, ignore_index=True)
    table = pd.concat(summaries, ignore_index=True)
    write_frame(curves, out / "curves.csv")
    write_frame(table, out / "proxies.csv")
    write_text(out / "proxies.md", _proxies_markdown(table))
    lrs = {t.name: t.lr for t in s.trajectories}
    proxy_figures(out, curves, lrs, {t.name: t.rule for t in s.trajectories})
    write_table(out, rows, "Sharpness proxies beside the certified lambda_1: what theory fixes")


def _proxies_markdown(table: pd.DataFrame) -> str:
    def f(x: float) -> str:
        return "-" if not np.isfinite(x) else f"{x:.3g}"

    body = [
        (
            r["trajectory"],
            r["proxy"],
            f(r["ratio_median_ps"]),
            f(r["ratio_worst_ps"]),
            f(r["ratio_median_edge"]),
            f(r["ratio_worst_edge"]),
            f(r["over_2_lr_median_edge"]),
            "never" if not np.isfinite(r["onset_step"]) else f"{r['onset_step']:.0f}",
            "never"
            if not np.isfinite(r["lambda1_onset_step"])
            else f"{r['lambda1_onset_step']:.0f}",
            f(r["fwd_per_probe"]),
            f(r["hvp_per_probe"]),
            f(r["lambda1_hvp_per_probe"]),
        )
        for _, r in table.iterrows()
    ]
    header = (
        "trajectory",
        "proxy",
        "ratio median (PS)",
        "ratio worst (PS)",
        "ratio median (edge)",
        "ratio worst (edge)",
        "/ (2/lr), median (edge)",
        "reaches 2/lr at",
        "lambda_1 at threshold",
        "fwd / probe",
        "HVP / probe",
        "lambda_1 HVP / probe",
    )
    lines = [
        "# Sharpness proxies beside the certified lambda_1",
        "",
        *markdown_table(header, body),
        "",
    ]
    return "\n".join(lines)


REPRODUCTIONS = (
    Reproduction(
        "proxies",
        "Kalra et al. (2026) and the field's proxies, beside the certified lambda_1",
        "critical, directional, Gauss-Newton, trace, per-layer and batch sharpness on four "
        "trajectories: ratio to lambda_1, onset, cost; and what theory fixes",
        proxies_experiment,
    ),
)
"""The proxies reproduction."""
