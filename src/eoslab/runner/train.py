r"""`train`: full-batch training with curvature probes, stopping rules and a resumable run store.

The steps between two probes run inside one compiled ``lax.scan``; at every ``probe_every``-th step
the probes measure the point (top Hessian eigenvalues through a warm-started `EigenTracker`, the
preconditioned sharpness $\lambda_1(P^{-1}H)$ of adaptive rules, the gradient's alignment with the
top eigenvector, and any custom probe). Cheap per-step numbers (loss, gradient norm, effective LR,
threshold) come out of the scan for every ``log_every``-th step; probe columns are missing (NaN) on
the rows where nothing was probed: an unmeasured value is never a made-up 0.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array

from ..curvature import EigenTracker
from ..dynamics.rules import Rule
from ..errors import ConfigError, check_positive
from ..objective import Objective, as_objective
from .progress import Progress
from .store import RunStore, read_metrics

__all__ = ["Probes", "Stop", "Run", "train", "load_run", "ProbeFn"]

ProbeFn = Callable[[Array, Objective, dict], dict]
"""A custom probe: ``probe(w, objective, cache) -> {name: scalar or 1-D array}``.

``cache`` holds what the runner already measured at ``w``: ``loss``, ``grad`` (of the base loss),
``eig`` (the `EigResult`, if sharpness is probed), ``step``.
"""


@dataclasses.dataclass(frozen=True)
class Probes:
    """What is measured at each probed step (every ``probe_every`` steps).

    Attributes:
        sharpness: track the top-``k`` Hessian eigenvalues of the base loss $L$.
        k: how many top eigenvalues (the ``eigs`` column).
        tol: relative tolerance of the eigenvalues.
        grow_above: grow ``k`` while the next eigenvalue exceeds this (None: fixed ``k``).
        effective: for adaptive rules, also track $\\lambda_1(P^{-1}H)$ (``eff_sharpness``).
        alignment: $g^\top H g / (\\|g\\|^2 \\lambda_1)$ (``grad_top_alignment``, one more HVP).
        max_matvecs: budget of HVPs per eigen-solve (None: the solver's default).
        stableness: $S_L(w, \\eta_t)$, the top eigenvalue's sup along the step's segment times
            $\\eta_t$ (``stableness`` column; ``stableness_points`` eigen-solves per probe).
        custom: extra probes ``probe(w, objective, cache) -> dict`` (e.g. accuracy).
    """

    sharpness: bool = True
    k: int = 1
    tol: float = 1e-3
    grow_above: float | None = None
    effective: bool = True
    alignment: bool = True
    max_matvecs: int | None = None
    stableness: bool = False
    stableness_points: int = 5
    custom: tuple[ProbeFn, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError("probes.k", self.k, "an integer >= 1")
        check_positive("probes.tol", self.tol)


@dataclasses.dataclass(frozen=True)
class Stop:
    """When a run stops before its step budget (checked at each probed step).

    Attributes:
        loss_below: stop once the loss is at or below this.
        accuracy_above: stop once ``accuracy`` (from a probe) is at or above this.
        raise_on_divergence: raise `DivergenceError` instead of returning a diverged `Run`.
    """

    loss_below: float | None = None
    accuracy_above: float | None = None
    raise_on_divergence: bool = False


@dataclasses.dataclass
class Run:
    """The outcome of `train` (or `load_run`).

    Attributes:
        metrics: one row per logged step (probe columns filled on probed steps).
        w: the final flat parameters (the last finite ones if the run diverged).
        status: ``"completed"``, ``"diverged"``, ``"loss_goal"``, ``"accuracy_goal"``,
            or ``"running"`` (a run directory whose process stopped before the end).
        message: a one-line account of how the run ended.
        step: the number of steps taken.
        path: the run directory, if any.
        config: the recorded config (``config.json``), if any.
    """

    metrics: pd.DataFrame
    w: Any
    status: str
    message: str
    step: int
    path: Path | None = None
    config: dict | None = None

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"


# --------------------------------------------------------------------------------- helpers
@dataclasses.dataclass(frozen=True)
class _Precond:
    r"""$u \mapsto L(D u)$ with $D = P^{-1/2}$: its Hessian is $D H D$, similar to $P^{-1}H$."""

    fn: Callable[[Array, Any], Array]

    def __call__(self, u: Array, data: Any) -> Array:
        inner, d = data
        return self.fn(u * d, inner)


def _preconditioned(base: Objective, p: Array) -> tuple[Objective, Array]:
    d = 1.0 / jnp.sqrt(p)
    obj = dataclasses.replace(base, fn=_Precond(base.fn), data=(base.data, d))
    return obj, d


def _tree_where(pred, a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def _make_step(rule: Rule, sqrt_mode: bool):
    """One measured step: the numbers of row ``t`` and the point ``t + 1``."""

    def step(obj: Objective, base: Objective, w, state, alive):
        loss, g = jax.value_and_grad(obj)(w)
        w_new, s_new, info = rule.step(w, state, g, loss)
        lr_eff, thr = info.lr_eff, info.threshold
        if sqrt_mode:  # report on L: grad L = 2 s grad s, lr on L = lr_eff / (2 s)
            s = loss
            loss = base(w)
            two_s = 2.0 * s
            g = g * two_s
            lr_eff = jnp.where(two_s > 0, lr_eff / jnp.where(two_s > 0, two_s, 1.0), 0.0)
            thr = thr * two_s
        finite_loss = jnp.isfinite(loss) & jnp.all(jnp.isfinite(g))
        ok = alive & finite_loss & jnp.all(jnp.isfinite(w_new))
        w_out = jnp.where(ok, w_new, w)
        s_out = _tree_where(ok, s_new, state)
        row = {
            "loss": loss,
            "grad_norm": jnp.linalg.norm(g),
            "lr_eff": lr_eff,
            "threshold": thr,
            "finite_loss": alive & finite_loss,
            "ok": ok,
        }
        return (w_out, s_out, ok), row, g, s_new

    return step


@eqx.filter_jit
def _chunk(rule: Rule, sqrt_mode: bool, obj, base, w, state, n):
    # The rule is an argument, not a cache key: its functions are static leaves compared by
    # identity, so two rules that close over different hyperparameters never share a compile.
    step = _make_step(rule, sqrt_mode)

    def body(carry, _):
        w, state, alive = carry
        carry, row, _, _ = step(obj, base, w, state, alive)
        return carry, row

    return jax.lax.scan(body, (w, state, jnp.asarray(True)), None, length=n)


@eqx.filter_jit
def _measure(rule: Rule, sqrt_mode: bool, obj, base, w, state):
    _, row, g, s_next = _make_step(rule, sqrt_mode)(obj, base, w, state, jnp.asarray(True))
    return row, g, s_next


@eqx.filter_jit
def _alignment(base, w, g, lam):
    hg = jax.jvp(jax.grad(base), (w,), (g,))[1]
    return jnp.vdot(g, hg) / (jnp.vdot(g, g) * lam)


def _default_config(rule: Rule, steps, probe_every, log_every, seed, obj: Objective) -> dict:
    return {
        "rule": {"name": rule.name, **rule.hyper},
        "steps": steps,
        "probe_every": probe_every,
        "log_every": log_every,
        "seed": seed,
        "dim": obj.dim,
        "dtype": str(obj.dtype),
        "transform": obj.transform,
    }


class _Probe:
    """Runs the probes at a point; holds the warm-started trackers (checkpointed with the run)."""

    def __init__(self, obj: Objective, base: Objective, rule: Rule, probes: Probes, seed: int):
        self.obj, self.base, self.rule, self.cfg = obj, base, rule, probes
        self.tracker = (
            EigenTracker(
                base,
                k=min(probes.k, base.dim),
                tol=probes.tol,
                grow_above=probes.grow_above,
                max_k=max(20, probes.k),
                max_matvecs=probes.max_matvecs,
                seed=seed,
            )
            if probes.sharpness
            else None
        )
        self.eff_tracker = (
            EigenTracker(base, k=1, tol=probes.tol, max_matvecs=probes.max_matvecs, seed=seed + 1)
            if probes.sharpness and probes.effective and rule.adaptive
            else None
        )

    def __call__(self, step: int, w, loss, g, s_next, lr_eff) -> dict:
        row: dict[str, Any] = {}
        cache: dict[str, Any] = {"step": step, "loss": loss, "grad": g}
        if self.tracker is not None:
            res = self.tracker.update(w)
            vals = np.asarray(res.values, np.float64)
            lam = float(vals[0])
            row["sharpness"] = lam
            row["eigs"] = vals.tolist()
            row["sharpness_matvecs"] = int(res.matvecs)
            row["sharpness_error"] = float(res.error_bound[0])
            cache["eig"] = res
            if self.cfg.alignment:
                gn = float(jnp.vdot(g, g))
                row["grad_top_alignment"] = (
                    float(_alignment(self.base, w, g, res.values[0])) if gn > 0 else math.nan
                )
            if self.eff_tracker is not None:
                p = self.rule.preconditioner(s_next)
                pobj, d = _preconditioned(self.base, p)
                self.eff_tracker.loss = pobj
                eres = self.eff_tracker.update(w / d)
                row["eff_sharpness"] = float(eres.values[0])
                row["sharpness_matvecs"] += int(eres.matvecs)
                cache["eff_eig"] = eres
        if self.cfg.stableness and lr_eff > 0 and math.isfinite(lr_eff):
            from ..curvature.stableness import stableness

            st = stableness(
                self.base, w, lr_eff, n_points=self.cfg.stableness_points, tol=self.cfg.tol
            )
            row["stableness"] = float(st.value)
        for probe in self.cfg.custom:
            out = probe(w, self.base, cache)
            for key, val in dict(out).items():
                arr = np.asarray(val)
                row[key] = arr.item() if arr.ndim == 0 else arr.tolist()
        return row

    # -- checkpoint support (the trackers' warm starts and keys make probes reproducible)
    def state(self) -> dict[str, np.ndarray]:
        out = {}
        for name, tr in (("tracker", self.tracker), ("eff_tracker", self.eff_tracker)):
            if tr is None:
                continue
            out.update({f"{name}_{k}": v for k, v in tr.state().items()})
        return out

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        for name, tr in (("tracker", self.tracker), ("eff_tracker", self.eff_tracker)):
            if tr is None or f"{name}_key" not in arrays:
                continue
            prefix = f"{name}_"
            tr.load_state({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})


def _rows_from_chunk(out: dict, t0: int, log_every: int, probe_row: dict | None):
    """Rows for the steps of one chunk, and where (if anywhere) the run diverged."""
    arrs = {k: np.asarray(v) for k, v in out.items()}
    n = len(arrs["ok"])
    bad = np.flatnonzero(~arrs["ok"])
    diverged_at = None
    last_row = n - 1
    reason = ""
    if bad.size:
        i = int(bad[0])
        if not arrs["finite_loss"][i]:
            last_row, diverged_at = i - 1, t0 + i
            reason = f"the loss became {arrs['loss'][i]:.4g}"
        else:
            last_row, diverged_at = i, t0 + i + 1
            reason = "the parameters became non-finite"
    rows = []
    for i in range(last_row + 1):
        step = t0 + i
        if i != 0 and step % log_every != 0:
            continue
        row = {"step": step}
        for key in ("loss", "grad_norm", "lr_eff", "threshold"):
            row[key] = float(arrs[key][i])
        if i == 0 and probe_row:
            row.update(probe_row)
        rows.append(row)
    frozen_step = t0 + (int(bad[0]) if bad.size else n)
    return rows, diverged_at, reason, frozen_step


_COLUMNS = [
    "step",
    "loss",
    "grad_norm",
    "lr_eff",
    "threshold",
    "sharpness",
    "eff_sharpness",
    "eigs",
    "sharpness_matvecs",
    "sharpness_error",
    "grad_top_alignment",
    "lr_sharpness",
]


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if len(df) == 0:
        return df
    for col in ("sharpness", "eff_sharpness", "grad_top_alignment", "sharpness_error"):
        if col not in df:
            df[col] = np.nan
    if "sharpness_matvecs" not in df:
        df["sharpness_matvecs"] = pd.array([pd.NA] * len(df), dtype="Int64")
    else:
        df["sharpness_matvecs"] = df["sharpness_matvecs"].astype("Int64")
    if "eigs" not in df:
        df["eigs"] = None
    curv = df["eff_sharpness"].where(df["eff_sharpness"].notna(), df["sharpness"])
    df["lr_sharpness"] = df["lr_eff"] * curv
    df["step"] = df["step"].astype("int64")
    front = [c for c in _COLUMNS if c in df]
    return df[front + [c for c in df.columns if c not in front]]


# --------------------------------------------------------------------------------- train
def train(
    objective: Objective | Callable[[Array], Array],
    rule: Rule,
    steps: int,
    *,
    probe_every: int = 10,
    probes: Probes | None = None,
    out: str | Path | None = None,
    stop: Stop | None = None,
    seed: int = 0,
    log_every: int = 1,
    flush_seconds: float = 10.0,
    resume: bool = False,
    config: dict | None = None,
    progress: bool | None = False,
    w0: Array | None = None,
    devices: int | None = None,
    microbatch: int | None = None,
    memory_budget_bytes: int | None = None,
) -> Run:
    r"""Run ``rule`` on ``objective`` for ``steps`` full-batch steps, probing curvature on the way.

    Args:
        objective: an `Objective` (or a plain ``loss(w)`` with ``w0``); for ``objective.sqrt()``
            the rule trains on $\sqrt{L - L_{\min}}$ while ``loss``, ``grad_norm``, ``lr_eff``,
            ``threshold`` and ``sharpness`` describe the base loss $L$.
        rule: an update rule from `eoslab.rules`.
        steps: the step budget.
        probe_every: probe every this many steps (and at the last step).
        probes: what to measure (`Probes`; default: top eigenvalue and alignment).
        out: a run directory to write (new, or existing with ``resume=True``); None keeps
            everything in memory.
        stop: early stopping (`Stop`): loss goal, accuracy goal, divergence handling.
        seed: seed of the eigen-solvers' random starts.
        log_every: keep the cheap per-step numbers every this many steps.
        flush_seconds: write a metrics part and a checkpoint at least this often (at probe steps).
        resume: continue the run in ``out`` from its last checkpoint.
        config: the config to record in ``config.json`` (default: the rule and the arguments).
        progress: show a progress bar (None: on a terminal only).
        w0: start here instead of ``objective.w0``.
        devices: shard the examples over this many devices (`eoslab.parallel.shard_objective`;
            same numbers as one device, to float tolerance).
        microbatch, memory_budget_bytes: accumulate loss, gradient and HVPs over micro-batches
            of this size, or the largest size within the budget (`eoslab.parallel.microbatched`).

    Returns:
        A `Run`. Divergence (a non-finite loss or parameters) stops the run with ``status =
        "diverged"`` and a message, keeping every metric measured before it (and a warning).
    """
    obj = as_objective(objective, w0)
    if microbatch is not None or memory_budget_bytes is not None:
        from ..parallel import microbatched

        obj = microbatched(obj, batch_size=microbatch, memory_budget_bytes=memory_budget_bytes)
    if devices is not None and devices != 1:
        from ..parallel import shard_objective

        obj = shard_objective(obj, devices=devices)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ConfigError("steps", steps, "an integer >= 0")
    if isinstance(probe_every, bool) or not isinstance(probe_every, int) or probe_every < 1:
        raise ConfigError("probe_every", probe_every, "an integer >= 1")
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ConfigError("log_every", log_every, "an integer >= 1")
    if not isinstance(rule, Rule):
        raise ConfigError("rule", rule, "an update rule from eoslab.rules (e.g. rules.gd(0.1))")
    probes = Probes() if probes is None else probes
    stop = Stop() if stop is None else stop
    steps = int(steps)
    sqrt_mode = obj.transform == "sqrt"
    base = obj.base()
    w = jnp.asarray(obj.w0 if w0 is None else w0, obj.dtype)
    state = rule.init(w)
    probe = _Probe(obj, base, rule, probes, seed)

    store = RunStore(out) if out is not None else None
    t = 0
    if store is not None:
        if resume:
            if not store.exists():
                raise ConfigError("resume", str(out), "a run directory with config.json")
            man = store.read_manifest()
            if man.get("status") not in ("running", "unknown"):
                return load_run(out)
            ck = store.latest_checkpoint()
            if ck is not None:
                t, path = ck
                arrays = store.read_checkpoint(path)
                w = jnp.asarray(arrays["w"], obj.dtype)
                leaves, treedef = jax.tree_util.tree_flatten(state)
                saved = [arrays[f"state_{i}"] for i in range(len(leaves)) if f"state_{i}" in arrays]
                if len(saved) != len(leaves) or arrays["w"].shape != w.shape:
                    raise ConfigError(
                        "resume", str(out), "a checkpoint made by the same rule and model"
                    )
                state = jax.tree_util.tree_unflatten(
                    treedef,
                    [
                        jnp.asarray(a, dtype=jnp.asarray(b).dtype)
                        for a, b in zip(saved, leaves, strict=True)
                    ],
                )
                probe.load(arrays)
            store.truncate_metrics(t)
        else:
            cfg = (
                config
                if config is not None
                else _default_config(rule, steps, probe_every, log_every, seed, obj)
            )
            store.create(cfg)

    bar = Progress(steps, initial=t, enabled=progress)
    pending: list[dict] = []
    all_rows: list[dict] = []
    last_flush = time.monotonic()
    status, message = "completed", f"completed {steps} steps"
    last_ckpt: Path | None = None

    def flush(step: int, manifest_status: str = "running", msg: str = "") -> None:
        nonlocal pending, last_flush, last_ckpt
        all_rows.extend(pending)
        if store is not None:
            store.write_part(_frame(pending))
            arrays = {"w": np.asarray(w), "step": np.asarray(step)}
            for i, leaf in enumerate(jax.tree_util.tree_leaves(state)):
                arrays[f"state_{i}"] = np.asarray(leaf)
            arrays.update(probe.state())
            last_ckpt = store.write_checkpoint(step, arrays)
            store.write_manifest(
                {
                    "status": manifest_status,
                    "step": step,
                    "steps": steps,
                    "checkpoint": str(last_ckpt.relative_to(store.path)),
                    "checkpoint_step": step,
                    "message": msg,
                }
            )
            store.prune_checkpoints(last_ckpt)
        pending = []
        last_flush = time.monotonic()

    def probe_row(step, w, state) -> tuple[dict, dict]:
        row, g, s_next = _measure(rule, sqrt_mode, obj, base, w, state)
        row = {k: np.asarray(v) for k, v in row.items()}
        loss = float(row["loss"])
        pr = probe(step, w, loss, g, s_next, float(row["lr_eff"]))
        return row, pr

    try:
        while True:
            on_probe = t % probe_every == 0 or t == steps
            pr: dict | None = None
            if on_probe:
                mrow, pr = probe_row(t, w, state)
                curv = pr.get("eff_sharpness", pr.get("sharpness"))
                bar.update(t, float(mrow["loss"]), curv, float(mrow["threshold"]))
                goal = None
                if stop.loss_below is not None and float(mrow["loss"]) <= stop.loss_below:
                    goal = (
                        "loss_goal",
                        f"the loss reached {float(mrow['loss']):.4g} "
                        f"<= {stop.loss_below:g} at step {t}",
                    )
                acc = pr.get("accuracy")
                if (
                    stop.accuracy_above is not None
                    and acc is not None
                    and acc >= stop.accuracy_above
                ):
                    goal = (
                        "accuracy_goal",
                        f"the accuracy reached {acc:.4g} >= {stop.accuracy_above:g} at step {t}",
                    )
                if t == steps or goal is not None:
                    if bool(mrow["finite_loss"]):
                        final = {
                            "step": t,
                            **{
                                k: float(mrow[k])
                                for k in ("loss", "grad_norm", "lr_eff", "threshold")
                            },
                            **pr,
                        }
                        pending.append(final)
                    if goal is not None:
                        status, message = goal
                    break
            n = min(probe_every - t % probe_every, steps - t)
            (w, state, _), out_arrays = _chunk(rule, sqrt_mode, obj, base, w, state, n)
            rows, diverged_at, reason, frozen = _rows_from_chunk(out_arrays, t, log_every, pr)
            pending.extend(rows)
            if diverged_at is not None:
                last = rows[-1] if rows else None
                status = "diverged"
                message = (
                    f"diverged at step {diverged_at}: {reason}"
                    + (
                        f" (last finite loss {last['loss']:.4g} at step {last['step']})"
                        if last
                        else ""
                    )
                    + f"; {len(all_rows) + len(pending)} rows of metrics kept"
                )
                t = frozen
                break
            t += n
            if t < steps and time.monotonic() - last_flush >= flush_seconds:
                flush(t)
        flush(t, status, message)
    finally:
        bar.close()

    if status == "diverged":
        if stop.raise_on_divergence:
            from ..errors import DivergenceError

            raise DivergenceError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)

    if store is not None:
        metrics = store.metrics()
        cfg = store.read_config()
    else:
        metrics = _frame(all_rows)
        cfg = None
    return Run(
        metrics=metrics,
        w=w,
        status=status,
        message=message,
        step=t,
        path=store.path if store else None,
        config=cfg,
    )


def load_run(path: str | Path) -> Run:
    """Read a run directory back: metrics (all parts), final parameters, status and config."""
    store = RunStore(path)
    cfg = store.read_config()
    man = store.read_manifest()
    ck = store.latest_checkpoint()
    w = None
    if ck is not None:  # numpy, so a float64 run stays float64 without jax_enable_x64
        w = store.read_checkpoint(ck[1])["w"]
    return Run(
        metrics=read_metrics(store.path),
        w=w,
        status=man.get("status", "unknown"),
        message=man.get("message", ""),
        step=int(man.get("step", 0)),
        path=store.path,
        config=cfg,
    )
