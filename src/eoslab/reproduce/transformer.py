r"""A small transformer at the Edge of Stability: ``eoslab reproduce transformer-eos``.

A one-block pre-LN causal decoder (`eoslab.models.transformer`) learns to sort short token
sequences (`eoslab.data.sequences.sequence_task`), full batch, MSE on one-hot targets, float64
(a scoped ``jax.enable_x64``). Three measurements, each through the one loop:

1. GD: progressive sharpening of $\lambda_1(\nabla^2 L(w_t))$ from init up to $2/\eta$, then
   $\lambda_1$ held at $2/\eta$ (Cohen et al. 2021);
2. Adam: $\lambda_1(P^{-1/2}HP^{-1/2})$, $P=\mathrm{diag}(\sqrt{\hat\nu}+\epsilon)$, held at
   $(2+2\beta_1)/((1-\beta_1)\eta)$ (Cohen et al. 2022), by
   `eoslab.reproduce.cohen2022.effective_sharpness`;
3. GD's central flow (Cohen et al. 2025) from GD's iterate shortly before the onset, in lockstep
   with GD (`eoslab.reproduce.cohen2025.gd_beside_flows`): its predicted time-averaged loss
   $L(w(t))+\mathrm{tr}\,\Sigma(t)/\eta$ against GD's loss averaged over a centred window.

Settings and tolerances: ``docs/theory.md``, "A transformer at the Edge of Stability".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from .. import models
from ..curvature.rounding import clip_tol
from ..data.sequences import TASKS, sequence_task
from ..dynamics.optimizer import Optimizer
from ..dynamics.rules import GD, Adam
from ..errors import ConfigError, check_choice, check_int, check_positive
from ..objective import Objective
from ..report.beyond_figures import adam_eos_figures
from ..report.tables import write_frame, write_table
from ..report.transformer_figures import transformer_eos_figures
from ..runner import At, HostProbe, Probes, Stop, run
from ._common import NO_PROBES, Reproduction, moving_average, row
from .cohen2022 import effective_sharpness
from .cohen2025 import gd_beside_flows

__all__ = [
    "REPRODUCTIONS",
    "FULL",
    "QUICK",
    "TransformerEoSSetting",
    "eos_phase",
    "onset_and_peak",
    "gd_sharpening",
    "transformer_eos_experiment",
    "transformer_objective",
]


@dataclasses.dataclass(frozen=True)
class TransformerEoSSetting:
    """The network, the task and the three runs of ``transformer-eos``."""

    n: int = 64  # training sequences (full batch)
    length: int = 4  # source length L (the decoder reads T = 2L - 1 tokens)
    vocab: int = 6
    task: str = "sort"
    d_model: int = 8
    n_heads: int = 2
    n_layers: int = 1
    d_mlp: int = 16
    head_init_std: float = 0.1  # a small readout: lambda_1 starts well below 2/lr
    seed: int = 0
    lr: float = 0.2  # GD (2/lr = 10)
    gd_steps: int = 1500
    every: int = 10  # probe GD's lambda_1 every this many steps (GD alone, from init)
    flow_start: int = 550  # GD step at which the central flow (and GD beside it) starts
    flow_steps: int = 950  # to GD step flow_start + flow_steps
    flow_every: int = 25  # probe the three processes in lockstep every this many steps
    window: int = 25  # GD's loss and the prediction averaged over 2*window + 1 steps
    adam_lr: float = 2e-3
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-7
    adam_steps: int = 1000
    adam_every: int = 25

    def __post_init__(self) -> None:
        for field in ("n", "vocab", "d_model", "n_heads", "n_layers", "d_mlp"):
            check_int(field, getattr(self, field))
        check_int("length", self.length, 2)
        check_choice("task", self.task, TASKS)
        check_int("seed", self.seed, 0)
        for field in ("head_init_std", "lr", "adam_lr", "adam_eps"):
            check_positive(field, getattr(self, field))
        for field in ("beta1", "beta2"):
            v = getattr(self, field)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v < 1.0:
                raise ConfigError(field, v, "a float in [0, 1)")
        for field in (
            "gd_steps",
            "every",
            "flow_steps",
            "flow_every",
            "window",
            "adam_steps",
            "adam_every",
        ):
            check_int(field, getattr(self, field))
        check_int("flow_start", self.flow_start, 0)
        if self.gd_steps % self.every:
            raise ConfigError("every", self.every, f"a divisor of gd_steps (= {self.gd_steps})")
        if self.flow_steps % self.flow_every:
            raise ConfigError("flow_every", self.flow_every, "a divisor of flow_steps")
        if self.adam_steps % self.adam_every:
            raise ConfigError("adam_every", self.adam_every, "a divisor of adam_steps")
        if self.flow_steps <= 4 * self.window:
            raise ConfigError("flow_steps", self.flow_steps, f"> 4 * window = {4 * self.window}")


QUICK = TransformerEoSSetting()
FULL = TransformerEoSSetting(
    gd_steps=3000, flow_steps=2450, flow_every=10, adam_steps=3000, adam_every=25
)


def transformer_objective(s: TransformerEoSSetting) -> Objective:
    r"""$L(w)=\frac1{NT}\sum_{i,t}\tfrac12\lVert f_w(x_i)_t-e_{y_{it}}\rVert^2$: the decoder of
    ``s`` on ``s.n`` sequences of ``s.task``, float64 (call it inside ``jax.enable_x64(True)``)."""
    if not isinstance(s, TransformerEoSSetting):
        raise ConfigError("setting", s, "a TransformerEoSSetting")
    ds = sequence_task(s.task, s.n, 1, length=s.length, vocab=s.vocab, seed=s.seed)
    apply, params = models.create(
        "transformer",
        jax.random.key(s.seed),
        ds.input_shape,
        ds.num_classes,
        d_model=s.d_model,
        n_heads=s.n_heads,
        n_layers=s.n_layers,
        d_mlp=s.d_mlp,
        head_init_std=s.head_init_std,
    )
    return Objective.from_model(apply, params, ds, "mse_half", dtype="float64")


class _Point(HostProbe):
    """The probed point $w$ itself (column ``point``)."""

    def __call__(self, at: At, state: Any) -> tuple[dict[str, list[float]], Any]:
        return {"point": np.asarray(at.w).tolist()}, state


def gd_sharpening(
    obj: Objective, *, lr: float, steps: int, every: int, keep_points: bool = False
) -> pd.DataFrame:
    r"""GD $w_{t+1}=w_t-\eta\nabla L(w_t)$ from ``obj.w0`` for ``steps`` steps through the loop:
    ``step``, ``loss`` (every step ``0..steps``) and the certified $\lambda_1$ ``sharpness``
    (relative tolerance $10^{-6}$, every ``every`` steps, NaN between); with ``keep_points``,
    a ``point`` column holds $w_t$ at the probed steps."""
    check_positive("lr", lr)
    steps, every = check_int("steps", steps), check_int("every", every)
    if steps % every:
        raise ConfigError("every", every, f"a divisor of steps (= {steps})")
    res = run(
        {"gd": Optimizer(GD(lr))},
        obj,
        steps,
        probe_every=every,
        log_every=1,
        probes=Probes(tol=clip_tol(1e-6, obj.dtype), alignment=False),
        stop=Stop(raise_on_divergence=True),
        custom_probes=(_Point(),) if keep_points else (),
    )
    m = res.metrics.sort_values("step")
    out = pd.DataFrame(
        {
            "step": m["step"].to_numpy(int),
            "loss": m["loss"].to_numpy(np.float64),
            "sharpness": m["sharpness"].to_numpy(np.float64),
        }
    )
    if keep_points:
        out["point"] = m["point"].to_numpy()
    return out


def onset_and_peak(
    steps: np.ndarray, sharpness: np.ndarray, thr: float
) -> tuple[int | None, int | None]:
    r"""GD's EoS onset, the first probed step with $\lambda_1\ge$ ``thr``, and the first probed
    step after it at which $\lambda_1$ falls (the oscillation along the top eigenvector has
    grown from round-off and stabilizes $\lambda_1$; until then $\lambda_1$ overshoots
    ``thr``). None where there is none."""
    steps, lam = np.asarray(steps), np.asarray(sharpness, np.float64)
    if steps.shape != lam.shape or steps.ndim != 1:
        raise ConfigError("sharpness.shape", lam.shape, f"{steps.shape} (one per probed step)")
    hit = np.flatnonzero(lam >= thr)
    if not hit.size:
        return None, None
    i = int(hit[0])
    down = np.flatnonzero(np.diff(lam[i:]) < 0)
    return int(steps[i]), (int(steps[i + 1 + down[0]]) if down.size else None)


def eos_phase(steps: np.ndarray, start: int, end: int) -> np.ndarray:
    """Mask of ``steps`` in the EoS phase ``[start, end]``."""
    steps = np.asarray(steps)
    return (steps >= start) & (steps <= end)


def transformer_eos_experiment(
    out: Path, quick: bool, setting: TransformerEoSSetting | None = None
) -> list[dict]:
    """Run the three measurements of ``setting`` (default: `QUICK` or `FULL`) into ``out``."""
    s = setting if setting is not None else (QUICK if quick else FULL)
    if not isinstance(s, TransformerEoSSetting):
        raise ConfigError("setting", s, "a TransformerEoSSetting")
    thr = 2.0 / s.lr
    out = Path(out)
    with jax.enable_x64(True):
        obj = transformer_objective(s)
        # 1. GD from init: progressive sharpening, then lambda_1 at 2/lr
        g = gd_sharpening(obj, lr=s.lr, steps=s.gd_steps, every=s.every, keep_points=True)
        # 3. GD beside gradient flow and the central flow, from GD's iterate at flow_start
        n = max(s.flow_start, 1)
        res = run(Optimizer(GD(s.lr)), obj, n, probe_every=n, probes=NO_PROBES, keep_points=True)
        w_start = res.trajectory()[s.flow_start]  # w_0 .. w_n
        wide, gd_loss = gd_beside_flows(
            obj.with_w0(w_start),
            lr=s.lr,
            steps=s.flow_steps,
            every=s.flow_every,
            k=1,
            window=s.window,
        )
        # 2. Adam from init: preconditioned sharpness against its threshold
        rule = Adam(s.adam_lr, s.beta1, s.beta2, s.adam_eps)
        ad = effective_sharpness(obj, rule, s.adam_steps, every=s.adam_every)
    wide.insert(0, "gd_step", wide["step"] + s.flow_start)
    probed = g[g["sharpness"].notna()]
    ps, lam = probed["step"].to_numpy(), probed["sharpness"].to_numpy()
    onset, peak = onset_and_peak(ps, lam, thr)
    settle = 2 * s.window
    nan = float("nan")
    if peak is None:
        eos, cf_eos = np.zeros(len(ps), bool), np.zeros(len(wide), bool)
    else:
        eos = eos_phase(ps, peak + settle, s.gd_steps)
        cf_eos = eos_phase(
            wide["gd_step"].to_numpy(), peak + settle, s.flow_start + s.flow_steps - s.window
        )
    lam_eos = lam[eos] / thr
    e = wide[cf_eos]
    err_pred = (e["pred_loss_cf_avg"] / e["loss_gd_avg"] - 1.0).abs()
    err_flow = (e["loss_cf"] / e["loss_gd_avg"] - 1.0).abs()
    med = lambda x: float(np.median(x)) if len(x) else nan  # noqa: E731
    late = ad.iloc[len(ad) // 2 :]
    rows = [
        row(
            "GD lambda_1 at init / (2/lr) (starts well below the edge)",
            0.5,
            float(lam[0] / thr),
            0.0,
            at_most=True,
        ),
        row(
            "GD: fraction of the run in the EoS phase (from lambda_1's first fall past 2/lr "
            "+ 2 windows)",
            0.25,
            float(eos.sum() * s.every / s.gd_steps),
            0.0,
            at_least=True,
        ),
        row(
            "GD progressive sharpening: lambda_1 at that step / lambda_1 at init",
            2.0,
            float(lam[ps == onset][0] / lam[0]) if onset is not None else nan,
            0.0,
            at_least=True,
        ),
        row(
            "GD lambda_1 / (2/lr), mean over the EoS phase",
            1.0,
            float(np.mean(lam_eos)) if lam_eos.size else nan,
            0.1,
        ),
        row(
            "GD lambda_1 / (2/lr), 5th percentile over the EoS phase (held, not passing)",
            1.0,
            float(np.percentile(lam_eos, 5)) if lam_eos.size else nan,
            0.1,
            at_least=True,
        ),
        row(
            "GD lambda_1 / (2/lr), 95th percentile over the EoS phase",
            1.0,
            float(np.percentile(lam_eos, 95)) if lam_eos.size else nan,
            0.2,
            at_most=True,
        ),
        row(
            "Adam: lambda_1(P^-1 H) at init / threshold (starts far below)",
            0.1,
            float(ad["ratio"].iloc[0]),
            0.0,
            at_most=True,
        ),
        row(
            "Adam: lambda_1(P^-1 H) / threshold, mean over the 2nd half",
            1.0,
            float(late["ratio"].mean()),
            0.15,
        ),
        row(
            "central flow: median abs(window-avg prediction / GD window-avg loss - 1), EoS phase",
            0.0,
            med(err_pred),
            0.005,
        ),
        row(
            "the same for L(w(t)) alone (no tr Sigma/lr) / for the prediction (the term counts)",
            3.0,
            med(err_flow) / med(err_pred) if len(err_pred) and med(err_pred) > 0 else nan,
            0.0,
            at_least=True,
        ),
        row(
            "central-flow lambda_1 / (2/lr), mean over the EoS phase",
            1.0,
            float(e["sharpness_cf"].mean() / thr) if len(e) else nan,
            0.01,
        ),
    ]
    # GD's points at init, at the onset and at 8 steps of the EoS phase (for checks by others)
    keep = [0] + ([onset] if onset is not None else [])
    if eos.any():
        keep += [int(t) for t in np.unique(ps[eos][np.linspace(0, eos.sum() - 1, 8).astype(int)])]
    at = g.set_index("step").loc[keep]
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "gd_points.npz",
        step=np.asarray(keep),
        w=np.stack([np.asarray(w, np.float64) for w in at["point"]]),
        sharpness=at["sharpness"].to_numpy(np.float64),
    )
    g = g.drop(columns="point")
    write_frame(g, out / "gd.csv")
    write_frame(wide, out / "central_flow.csv")
    write_frame(ad, out / "adam.csv")
    gd_loss_avg = moving_average(gd_loss, s.window)
    transformer_eos_figures(
        out,
        g,
        wide,
        gd_loss,
        gd_loss_avg,
        rule=GD(s.lr).describe(),
        start=s.flow_start,
        window=s.window,
        onset=onset,
        eos_from=(peak + settle) if peak is not None else None,
    )
    adam_eos_figures(out, {"adam": ad}, {"adam": rule.describe()})
    dim = obj.dim
    write_table(
        out,
        rows,
        f"Transformer at the Edge of Stability ({s.n_layers}-block decoder, d={s.d_model}, "
        f"{dim} parameters; {s.task} L={s.length} V={s.vocab}, {s.n} sequences, MSE; "
        f"GD lr={s.lr:g}, Adam lr={s.adam_lr:g})",
    )
    return rows


REPRODUCTIONS = (
    Reproduction(
        "transformer-eos",
        "Cohen et al. (2021, 2022, 2025): EoS, adaptive EoS and central flows, on a transformer",
        "a pre-LN decoder sorting tokens: GD sharpens to 2/lr and stays; Adam's preconditioned "
        "sharpness at its threshold; the central flow predicts GD's averaged loss",
        transformer_eos_experiment,
    ),
)
"""The transformer at the Edge of Stability."""
