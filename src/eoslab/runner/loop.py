r"""`run`: the one loop. It advances a set of processes in lockstep, probes them, stores them.

Between two probed steps each compiled process takes its steps in one ``lax.scan`` (a host
process, such as an SDP-driven central flow, in its own host loop); at every ``probe_every``-th
step every process is probed with the same probes (`Probes`), and with several processes the
distances between them are measured. All rows go to one table with a ``process`` column; cheap
per-step numbers (loss, gradient norm, effective LR, threshold) are kept every ``log_every``-th
step of compiled processes, probe columns are missing (NaN) on rows where nothing was probed.
All processes are checkpointed together and resume together, to the same numbers.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ..curvature import top_eigenpairs
from ..curvature.operator import HessianOperator
from ..curvature.step_tracker import StepTracker, StepTrackerState
from ..dynamics.process import Process, advance, measure, sharpness_row
from ..errors import ConfigError, DamagedRunWarning, DivergenceError, RunInterrupted, check_int
from ..objective import LossLike, Objective, as_objective
from .probes import ProbeFn, Probes, ProbeSet, distances, phi_probe
from .progress import Progress
from .records import RESUMABLE, Run, Stop, frame, load_run
from .store import Damage, RunStore

__all__ = ["run"]


def _values(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if k == "finite_loss":
            continue
        arr = np.asarray(v)
        out[k] = float(arr) if arr.ndim == 0 else arr.tolist()
    return out


def _as_processes(processes: Mapping[str, Process] | Process) -> dict[str, Process]:
    if isinstance(processes, Process):
        processes = {"main": processes}
    if not isinstance(processes, Mapping) or not processes:
        raise ConfigError("processes", processes, "a Process or a non-empty {name: Process} dict")
    for name, p in processes.items():
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError("processes", name, "names made of letters, digits, '-' and '_'")
        if not isinstance(p, Process):
            raise ConfigError(f"processes.{name}", p, "an eoslab.dynamics.Process")
    return dict(processes)


class _Lockstep:
    """The processes, their states and probes; one checkpoint holds them all."""

    def __init__(
        self,
        procs: dict[str, Process],
        obj: Objective,
        w0: Array,
        cfg: Probes,
        seed: int,
        keep_points: bool,
        custom: tuple = (),
    ):
        self.procs, self.obj, self.keep_points = procs, obj, keep_points
        self.states = {n: p.init(obj, w0) for n, p in procs.items()}
        # the sharpness at every step: measured inside the compiled loop, fused with the step
        in_loop = {n: cfg.sharpness and cfg.every_step and p.compiled for n, p in procs.items()}
        self.step_tracker = _step_tracker(cfg, obj.dim) if any(in_loop.values()) else None
        # a process's step tracker starts from a Lanczos solve at its first probe
        self.tstates: dict[str, StepTrackerState | None] = {n: None for n in procs if in_loop[n]}
        self.seed = seed
        self.probes = {
            n: ProbeSet(obj, cfg, seed + 2 * i, custom, in_loop=in_loop[n])
            for i, n in enumerate(procs)
        }
        self.cfg = cfg
        self.probes_before: tuple[int | None, dict] = (None, {})
        self.distances = cfg.distances and len(procs) > 1

    def point(self, name: str) -> Array:
        return self.procs[name].point(self.states[name])

    def measure(self, t: int, *, may_end: bool) -> dict[str, dict]:
        """The probed rows of every process at step ``t`` (probes skipped on non-finite points).

        ``may_end``: the run may stop at ``t``, so its last checkpoint (at ``t``) must hold the
        probes' warm starts from *before* probing ``t``, for a resume to measure ``t`` exactly as
        the uninterrupted run did. Other checkpoints are written before their step is probed.
        """
        if may_end:
            self.probes_before = (t, {n: self._probe_state(n) for n in self.procs})
        rows = {}
        for n, p in self.procs.items():
            st = self.states[n]
            if p.compiled:
                mrow = measure(p, self.obj, st, self.keep_points)
                if n in self.tstates and bool(jnp.isfinite(mrow["loss"])):
                    mrow = {**mrow, **self._sharpness(n, p.point(st))}
            else:
                mrow = p.measure(self.obj, st)
                if self.keep_points:
                    mrow = {**mrow, "w": p.point(st)}
            row = {"step": t, "process": n, **_values(mrow)}
            if math.isfinite(row["loss"]) and bool(jnp.all(jnp.isfinite(p.point(st)))):
                row.update(self.probes[n](n, t, p, self.obj, st, row))
            rows[n] = row
        pts = {n: np.asarray(self.point(n)) for n in self.procs}
        if self.distances:
            for n, extra in distances(pts).items():
                rows[n].update(extra)
        if self.cfg.phi:
            base = self.obj.base()
            for n in self.procs:
                if not np.all(np.isfinite(pts[n])):
                    continue
                x, extra = phi_probe(base, jnp.asarray(pts[n]), self.cfg.phi_gtol, self.cfg.tol)
                rows[n].update(extra)
                if self.distances:
                    x = np.asarray(x, np.float64)
                    for q in self.procs:
                        if q != n:
                            rows[n][f"phi_dist_{q}"] = float(np.linalg.norm(x - pts[q]))
        return rows

    def advance(self, t0: int, n: int, log_every: int) -> tuple[list[dict], int | None, str]:
        """``n`` steps of every process; rows of steps ``t0+1 .. t0+n-1`` (the probe has row
        ``t0``), and where the first process to diverge did so (None if none did). After a
        divergence at step ``s`` every process is left at step ``s`` (re-run from ``t0``), so the
        final checkpoint holds one consistent step."""
        before = dict(self.states)
        rows, diverged_at, reason = self._advance(t0, n, log_every)
        if diverged_at is not None and diverged_at < t0 + n:
            self.states = before
            if diverged_at > t0:
                self._advance(t0, diverged_at - t0, log_every)
            rows = [r for r in rows if r["step"] < diverged_at]
        return rows, diverged_at, reason

    def _advance(self, t0: int, n: int, log_every: int) -> tuple[list[dict], int | None, str]:
        rows: list[dict] = []
        diverged_at, reason = None, ""
        for name, p in self.procs.items():
            if not p.compiled:
                new = p.advance(self.obj, self.states[name], n)
                if not bool(jnp.all(jnp.isfinite(p.point(new)))):
                    if diverged_at is None or t0 + n < diverged_at:
                        diverged_at, reason = t0 + n, f"{name}: the point became non-finite"
                    continue
                self.states[name] = new
                continue
            if name in self.tstates:
                self.states[name], out, ok, self.tstates[name] = advance(
                    p,
                    self.obj,
                    self.states[name],
                    n,
                    self.keep_points,
                    self.step_tracker,
                    self.tstates[name],
                )
            else:
                self.states[name], out, ok = advance(
                    p, self.obj, self.states[name], n, self.keep_points
                )
            arrs = {k: np.asarray(v) for k, v in out.items()}
            ok = np.asarray(ok)
            bad = np.flatnonzero(~ok)
            last = n - 1
            if bad.size:
                i = int(bad[0])
                if not arrs["finite_loss"][i]:
                    last, at = i - 1, t0 + i
                    why = f"{name}: the loss became {arrs['loss'][i]:.4g}"
                else:
                    last, at = i, t0 + i + 1
                    why = f"{name}: the parameters became non-finite"
                if diverged_at is None or at < diverged_at:
                    diverged_at, reason = at, why
            for i in range(1, last + 1):
                if (t0 + i) % log_every == 0:
                    rows.append(
                        {
                            "step": t0 + i,
                            "process": name,
                            **_values({k: v[i] for k, v in arrs.items()}),
                        }
                    )
        return rows, diverged_at, reason

    # -- checkpoints: plain arrays, one key per leaf
    def arrays(self, step: int) -> dict[str, np.ndarray]:
        out = {}
        t, before = self.probes_before
        for n in self.procs:
            for i, leaf in enumerate(jax.tree_util.tree_leaves(self.states[n])):
                out[f"{n}__state_{i}"] = np.asarray(leaf)
            out[f"{n}__point"] = np.asarray(self.point(n))
            probe = before[n] if t == step else self._probe_state(n)
            out.update({f"{n}__probe_{k}": v for k, v in probe.items()})
        return out

    def load(self, arrays: dict[str, np.ndarray], where: str) -> None:
        for n in self.procs:
            leaves, treedef = jax.tree_util.tree_flatten(self.states[n])
            saved = [arrays.get(f"{n}__state_{i}") for i in range(len(leaves))]
            extra = f"{n}__state_{len(leaves)}" in arrays
            if (
                any(s is None for s in saved)
                or extra
                or any(np.shape(s) != np.shape(b) for s, b in zip(saved, leaves, strict=True))
            ):
                raise ConfigError(
                    "resume", where, f"a checkpoint made by the same processes ({n!r} differs)"
                )
            self.states[n] = jax.tree_util.tree_unflatten(
                treedef,
                [jnp.asarray(a, jnp.asarray(b).dtype) for a, b in zip(saved, leaves, strict=True)],
            )
            prefix = f"{n}__probe_"
            saved = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            self.probes[n].load(saved)
            if n in self.tstates and "step_vectors" in saved:
                dtypes = {"count": jnp.int32}
                saved.setdefault("step_norm", np.zeros(()))  # older runs: re-estimated as it goes
                self.tstates[n] = StepTrackerState(
                    **{
                        f: jnp.asarray(saved[f"step_{f}"], dtypes.get(f, self.obj.dtype))
                        for f in StepTrackerState._fields
                    }
                )
            elif n in self.tstates and "step_V" in saved:  # older runs: columns, no history
                V = jnp.asarray(saved["step_V"], self.obj.dtype)
                self.tstates[n] = self.step_tracker.warm(V[:, :-1], V[:, -1])

    def _sharpness(self, n: str, w: Array) -> dict:
        """The step tracker's row at ``w``; its first call solves with Lanczos to start it."""
        tr, tst = self.step_tracker, self.tstates[n]
        if tst is None:
            i = list(self.procs).index(n)
            res = top_eigenpairs(
                HessianOperator(self.obj.base(), w),
                k=tr.k,
                tol=tr.tol,
                max_matvecs=self.cfg.max_matvecs,
                key=jax.random.key(self.seed + 2 * i + 1),
            )
            guard = res.next_vector
            if not bool(jnp.any(guard != 0)):
                guard = jax.random.normal(jax.random.key(self.seed + 2 * i + 1), w.shape, w.dtype)
            self.tstates[n] = tr.warm(res.vectors, guard, res.operator_norm)
            return {
                "sharpness": res.values[0],
                "eigs": res.values,
                "sharpness_error": res.error_bound[0],
                "sharpness_matvecs": res.matvecs,
            }
        self.tstates[n], row = _sharpness(tr, self.obj, w, tst)
        return row

    def _probe_state(self, n: str) -> dict[str, np.ndarray]:
        """The probes' warm starts of process ``n`` (its step tracker's included)."""
        out = self.probes[n].state()
        if self.tstates.get(n) is not None:
            out.update({f"step_{f}": np.asarray(x) for f, x in self.tstates[n]._asdict().items()})
        return out


def _step_tracker(cfg: Probes, dim: int) -> StepTracker:
    block = cfg.k + 1
    rounds = 8 if cfg.max_matvecs is None else max(1, cfg.max_matvecs // block)
    rounds = min(rounds, dim // block)
    if rounds < 1:
        raise ConfigError("probes.every_step", True, f"False for a {dim}-parameter problem")
    return StepTracker(k=cfg.k, tol=cfg.tol, max_rounds=rounds)


@eqx.filter_jit
def _sharpness(tracker: StepTracker, obj: Objective, w: Array, tstate: StepTrackerState):
    tstate, row, _, _ = sharpness_row(tracker, obj, w, tstate)
    return tstate, row


def _recover(store: RunStore, dmg: Damage) -> int:
    """Move damaged files aside and say so; the step to resume from (0: start over)."""
    start = dmg.resume_step
    if dmg.lost_rows or (start == 0 and dmg.files):
        start = 0
    for rel, why in dmg.files:
        if rel == "manifest.json":
            what = "it is rebuilt from the checkpoints and parts on disk"
        else:
            what = f"moved to {store.move_aside(rel).relative_to(store.path)}"
        warnings.warn(f"{store.path}/{rel} is {why}: {what}", DamagedRunWarning, stacklevel=3)
    if dmg.files:
        if start == 0:
            for f in sorted(store.metrics_dir.glob("part-*.parquet")):
                store.move_aside(f"metrics/{f.name}")
            how = "no whole checkpoint covers the lost rows: resuming from step 0 recomputes them"
        else:
            how = f"resuming from the checkpoint at step {start}; later rows are recomputed"
        warnings.warn(f"{store.path}: {how}", DamagedRunWarning, stacklevel=3)
    return start


def _goal(stop: Stop, row: dict, t: int) -> tuple[str, str] | None:
    loss = row.get("loss", math.nan)
    if stop.loss_below is not None and loss <= stop.loss_below:
        return "loss_goal", f"the loss reached {loss:.4g} <= {stop.loss_below:g} at step {t}"
    acc = row.get("accuracy")
    if stop.accuracy_above is not None and acc is not None and acc >= stop.accuracy_above:
        return (
            "accuracy_goal",
            f"the accuracy reached {acc:.4g} >= {stop.accuracy_above:g} at step {t}",
        )
    return None


def run(
    processes: Mapping[str, Process] | Process,
    objective: LossLike,
    steps: int,
    *,
    w0: Array | None = None,
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
    keep_points: bool = False,
    custom_probes: tuple[ProbeFn, ...] = (),
) -> Run:
    r"""Advance ``processes`` in lockstep from one start for ``steps`` steps, probing on the way.

    Args:
        processes: ``{name: Process}`` (a single `Process` is named ``"main"``), e.g.
            ``{"gd": Optimizer(rules.GD(0.1)), "flow": GradientFlow(lr=0.1)}``.
        objective: an `Objective` (or a plain ``loss(w)`` with ``w0``).
        steps: the step budget.
        w0: the common start (default ``objective.w0``).
        probe_every: probe every this many steps (and at the last step).
        probes: what to measure (`Probes`; default: top eigenvalue, alignment, distances).
        out: a run directory to write (new, or existing with ``resume=True``); None keeps
            everything in memory.
        stop: early stopping (`Stop`), judged on the first process.
        seed: seed of the eigen-solvers' random starts.
        log_every: keep the per-step rows of compiled processes every this many steps.
        flush_seconds: write a metrics part and a checkpoint at least this often.
        resume: continue the run in ``out`` from its last checkpoint.
        config: the config to record in ``config.json`` (default: the processes and arguments).
        progress: show a progress bar (None: on a terminal only).
        keep_points: add each logged row's point as a ``w`` column (small problems).
        custom_probes: extra probes ``probe(w, objective, cache) -> {name: value}`` run at every
            probed step of every process (e.g. accuracy).

    Returns:
        A `Run`. Divergence (a non-finite loss or point in any process) stops the run with
        ``status = "diverged"`` and a message, keeping every metric measured before it.

    Raises:
        RunInUseError: ``out`` is being written by another process (one writer per run
            directory, `RunStore.lock`, held from before the resume's checks to the end).
        RunInterrupted: SIGINT or SIGTERM arrived (main thread, with ``out``): the steps under
            way are finished, every row measured is written with a checkpoint at the step
            reached, and the manifest says "interrupted" and how to resume. A second signal
            stops at once (the last checkpoint stays).
        OSError: a write failed (e.g. a full disk): the manifest says "interrupted" with the
            error, best effort; the last checkpoint stays.
    """
    procs = _as_processes(processes)
    obj = as_objective(objective, w0)
    steps = check_int("steps", steps, 0)
    probe_every = check_int("probe_every", probe_every, 1)
    log_every = check_int("log_every", log_every, 1)
    probes = Probes() if probes is None else probes
    stop = Stop() if stop is None else stop
    w = jnp.asarray(obj.w0 if w0 is None else w0, obj.dtype)
    lock = _Lockstep(procs, obj, w, probes, seed, keep_points, tuple(custom_probes))
    if out is None:
        return _drive(
            lock, procs, None, 0, steps, probe_every, log_every, stop, progress, flush_seconds
        )

    store = RunStore(out)
    with _Signals() as signals, contextlib.ExitStack() as held:
        t = 0
        if resume:
            if not store.exists():
                raise ConfigError("resume", str(out), "a run directory with config.json")
            held.enter_context(store.lock("resume"))  # before verify: another writer's fresh
            dmg = store.verify()  # parts are no damage, and are never moved aside
            if not dmg.files and store.read_manifest().get("status") not in RESUMABLE:
                return load_run(out)
            t = _recover(store, dmg)
            if t > 0:
                lock.load(store.read_checkpoint(dmg.checkpoint), str(out))
            store.truncate_metrics(t)
        else:
            store.check_new()  # refused before anything is touched
            store.path.mkdir(parents=True, exist_ok=True)
            held.enter_context(store.lock("run"))
            store.create(  # checks again, holding the lock: two runs never share a directory
                config
                if config is not None
                else _default_config(procs, steps, obj, seed, probe_every, log_every)
            )
        return _drive(
            lock,
            procs,
            store,
            t,
            steps,
            probe_every,
            log_every,
            stop,
            progress,
            flush_seconds,
            signals,
        )


class _Signals:
    """SIGINT and SIGTERM, while a run writes its directory: the first sets ``signum``, which the
    loop reads between two chunks of steps (where every process's state and the step agree); a
    second one stops at once. Only in the main thread (the only one Python delivers signals to);
    a signal ignored on entry (a background job's SIGINT) stays ignored; the previous handlers
    come back on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                prev = signal.getsignal(sig)
                if prev is None or prev == signal.SIG_IGN:  # None: set outside Python, kept
                    continue
                self._previous[sig] = prev
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            raise RunInterrupted(signum, f"{name} again: stopped at once")
        self.signum = signum
        with contextlib.suppress(OSError):  # not print(): it may interrupt a print
            os.write(
                2,
                f"eoslab: {name}: saving every row measured and a checkpoint after the "
                f"current steps (send {name} again to stop at once)\n".encode(),
            )


def _drive(
    lock: _Lockstep,
    procs: dict[str, Process],
    store: RunStore | None,
    t: int,
    steps: int,
    probe_every: int,
    log_every: int,
    stop: Stop,
    progress: bool | None,
    flush_seconds: float,
    signals: _Signals | None = None,
) -> Run:
    """The loop of `run` from step ``t``: probe, advance, flush; holding the store's lock."""
    first = next(iter(procs))
    bar = Progress(steps, initial=t, enabled=progress)
    bar.notice(f"eoslab: compiling {', '.join(procs)} (the first steps and probes take longer)")
    pending: list[dict] = []
    kept = 0
    last_flush = time.monotonic()
    status, message = "completed", f"completed {steps} steps"

    def flush(step: int, manifest_status: str = "running", msg: str = "") -> None:
        nonlocal pending, last_flush, kept
        kept += len(pending)
        order = list(procs)
        pending.sort(key=lambda r: (r["step"], order.index(r["process"])))
        if store is not None:
            store.write_part(frame(pending))
            ckpt = store.write_checkpoint(step, {"step": np.asarray(step), **lock.arrays(step)})
            store.write_manifest(
                {
                    "status": manifest_status,
                    "step": step,
                    "steps": steps,
                    "checkpoint": str(ckpt.relative_to(store.path)),
                    "checkpoint_step": step,
                    "message": msg,
                }
            )
            store.prune_checkpoints(ckpt)
        else:
            all_rows.extend(pending)
        pending = []
        last_flush = time.monotonic()

    all_rows: list[dict] = []
    try:
        while True:
            if t % probe_every == 0 or t == steps:
                goals = stop.loss_below is not None or stop.accuracy_above is not None
                rows = lock.measure(t, may_end=t == steps or goals)
                head = rows[first]
                bar.update(
                    t,
                    head["loss"],
                    head.get("eff_sharpness", head.get("sharpness")),
                    head.get("threshold"),
                )
                bad = [n for n, r in rows.items() if not math.isfinite(r["loss"])]
                if bad:
                    status = "diverged"
                    lost = rows[bad[0]]["loss"]
                    message = f"diverged at step {t}: {bad[0]}: the loss became {lost:.4g}"
                    pending.extend(r for n, r in rows.items() if n not in bad)
                    break
                pending.extend(rows.values())
                goal = _goal(stop, head, t)
                if t == steps or goal is not None:
                    if goal is not None:
                        status, message = goal
                    break
            n = min(probe_every - t % probe_every, steps - t)
            rows, diverged_at, reason = lock.advance(t, n, log_every)
            pending.extend(rows)
            if diverged_at is not None:
                status = "diverged"
                t = diverged_at
                message = f"diverged at step {diverged_at}: {reason}"
                break
            t += n
            if t < steps and signals is not None and signals.signum is not None:
                # the checkpoint at t is taken before t is probed, as a timed flush's is
                name = signal.Signals(signals.signum).name
                message = (
                    f"interrupted by {name} at step {t}: every row measured before it is kept, "
                    f"with a checkpoint at step {t}; continue with: eoslab resume {store.path}"
                )
                flush(t, "interrupted", message)
                raise RunInterrupted(signals.signum, message)
            if t < steps and time.monotonic() - last_flush >= flush_seconds:
                flush(t)
        if status == "diverged":
            message += f"; {kept + len(pending)} rows of metrics kept"
        flush(t, status, message)
    except RunInterrupted as exc:
        if store is not None and store.read_manifest().get("status") != "interrupted":
            store.set_status("interrupted", f"{exc}; {_resume_hint(store)}")
        raise
    except KeyboardInterrupt:
        if store is not None:  # the last checkpoint stays; the manifest says how to continue
            store.set_status("interrupted", f"interrupted near step {t}; {_resume_hint(store)}")
        raise
    except OSError as exc:  # a full disk, a removed directory: the last checkpoint stays
        if store is not None:
            store.set_status(
                "interrupted", f"stopped near step {t} by {exc}; {_resume_hint(store)}"
            )
        raise
    finally:
        bar.close()

    if status == "diverged":
        if stop.raise_on_divergence:
            raise DivergenceError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    if store is not None:
        metrics, cfg = store.metrics(), store.read_config()
    else:
        metrics, cfg = frame(all_rows), None
    points = {n: lock.point(n) for n in procs}
    return Run(
        metrics=metrics,
        w=points[first],
        status=status,
        message=message,
        step=t,
        path=store.path if store else None,
        config=cfg,
        points=points,
    )


def _resume_hint(store: RunStore) -> str:
    return (
        "every row up to the last checkpoint is kept; once the cause is dealt with, continue with: "
        f"eoslab resume {store.path}"
    )


def _default_config(procs, steps, obj, seed, probe_every, log_every) -> dict:
    return {
        "processes": {n: p.describe() for n, p in procs.items()},
        "steps": steps,
        "probe_every": probe_every,
        "log_every": log_every,
        "seed": seed,
        "dim": obj.dim,
        "dtype": str(obj.dtype),
        "transform": obj.transform,
    }
