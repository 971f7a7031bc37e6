r"""`run`: the one loop. It advances a set of processes in lockstep, probes them, stores them.

Between two probed steps each compiled process takes its steps in one ``lax.scan`` (a host
process, such as an SDP-driven central flow, in its own host loop); at every ``probe_every``-th
step every process is probed with the same probes (`Probes` builds them; ``custom_probes`` adds
the user's), and with several processes the distances between them are measured. Where a
compiled process is probed at every step (``probe_every=1`` or ``Probes.every_step``), its
in-step probes (`ScanProbe`) run inside its scan, and the loop comes back to the host only where
a host probe is due (every ``Probes.host_every`` steps for the built-in ones). All rows go to
one table with a ``process`` column; cheap per-step numbers (loss, gradient norm, effective LR,
threshold) are kept every ``log_every``-th step of compiled processes, probe columns are missing
(NaN) on rows where nothing was probed. All processes and every probe's state are checkpointed
together and resume together, to the same numbers.
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
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ..dynamics.process import CompiledProcess, HostProcess, Process, observed_step
from ..errors import ConfigError, DamagedRunWarning, DivergenceError, RunInterrupted, check_int
from ..objective import LossLike, Objective, as_objective
from .probe import At, GroupProbe, InStep, Probe, ScanProbe, check_probes
from .probes import Probes, Sharpness
from .progress import Progress
from .records import RESUMABLE, Run, Stop, frame, load_run
from .schedule import REASONS, ScheduleState
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


def _arrays(row: Mapping[str, Any]) -> dict[str, Array]:
    """A probed row's numbers as arrays (a compiled probe sees them as traced values)."""
    return {k: jnp.asarray(v) for k, v in row.items() if k != "process"}


def _as_processes(processes: Mapping[str, Process] | Process) -> dict[str, Process]:
    if isinstance(processes, Process):
        processes = {"main": processes}
    if not isinstance(processes, Mapping) or not processes:
        raise ConfigError("processes", processes, "a Process or a non-empty {name: Process} dict")
    for name, p in processes.items():
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError("processes", name, "names made of letters, digits, '-' and '_'")
        if not isinstance(p, (CompiledProcess, HostProcess)):
            raise ConfigError(
                f"processes.{name}", p, "an eoslab.dynamics.CompiledProcess or HostProcess"
            )
    return dict(processes)


@eqx.filter_jit
def _point_row(process, objective, state, observer, step, carry, keep_points: bool):
    """The row at the point of ``state`` (the row of the step from it, not taken), with the
    observer's columns: ``(row, carry)``."""
    _, row, carry = observed_step(process, objective, state, observer, step, carry)
    return ({**row, "w": process.point(state)} if keep_points else row), carry


@eqx.filter_jit
def _observe(observer: InStep, process, objective, state, step, row, carry):
    """The observer's columns at the point of ``state``, without a step: ``(columns, carry)``."""
    _, aux = observer.prepare(objective, process, state)
    return observer(objective, process, state, step, row, aux, carry)


#: The checkpoint's prefix of the group probes' states (no process has this name).
_GROUP = ".group"
#: The checkpoint's key of a process's adaptive schedule (no probe has this key).
_SCHEDULE = ".schedule"


class _Plan(NamedTuple):
    """One process's probes: those inside its step (every step), then those at probed steps
    (``coarse``: the built-in ones that run every ``host_every`` steps in every-step mode)."""

    in_step: InStep | None
    probed: tuple[tuple[Probe, bool], ...]  # (probe, coarse)


def _like(saved: np.ndarray, fresh: Any) -> Array:
    """A checkpointed array in the dtype and device layout of the fresh state's leaf (a run
    whose parameters are sharded resumes sharded, whichever layout saved it)."""
    arr = np.asarray(saved, jnp.asarray(fresh).dtype)
    if isinstance(fresh, jax.Array) and len(fresh.sharding.device_set) > 1:
        return jax.device_put(arr, fresh.sharding)
    return jnp.asarray(arr)


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
        probe_every: int = 10,
        goals: bool = False,
    ):
        self.procs, self.obj, self.keep_points = procs, obj, keep_points
        self.states = {n: p.init(obj, w0) for n, p in procs.items()}
        self.probe_every = probe_every
        self.host_every = cfg.cadence(probe_every)
        extra = tuple(custom)
        in_step = cfg.in_step(probe_every)
        every_in_step = in_step and all(isinstance(p, CompiledProcess) for p in procs.values())
        self.plans: dict[str, _Plan] = {}
        for i, (n, p) in enumerate(procs.items()):
            # the built-in probes beside a step probed inside run every host_every steps (the
            # sharpness on the host too, where the problem is too small for the step's tracker)
            inside = in_step and isinstance(p, CompiledProcess)
            built = tuple(
                (q, inside and not isinstance(q, Sharpness))
                for q in cfg.build(p, obj, seed + 2 * i, probe_every)
            )
            mine = built + tuple((q, False) for q in extra if not isinstance(q, GroupProbe))
            if inside:
                inner = tuple(q for q, _ in mine if isinstance(q, ScanProbe))
                rest = tuple((q, c) for q, c in mine if not isinstance(q, ScanProbe))
                self.plans[n] = _Plan(InStep(inner, n) if inner else None, rest)
            else:
                self.plans[n] = _Plan(None, mine)
            keys = [q.key for q, _ in mine]
            if len(set(keys)) < len(keys):
                raise ConfigError("custom_probes", keys, "probes with distinct keys (Probe.key)")
        self.group = tuple((q, every_in_step) for q in cfg.build_group(len(procs))) + tuple(
            (q, False) for q in extra if isinstance(q, GroupProbe)
        )
        keys = [q.key for q, _ in self.group]
        if len(set(keys)) < len(keys):
            raise ConfigError("custom_probes", keys, "group probes with distinct keys (Probe.key)")
        # every probe's state, by process and key (None: not started); the group's by key
        self.pstates: dict[str, dict[str, Any]] = {n: {} for n in procs}
        self.gstates: dict[str, Any] = {}
        self.probes_before: tuple[int | None, dict] = (None, {})
        # the loop comes back to the host every `chunk` steps: at every probed step, or, where
        # every process is probed in its step and nothing else is due sooner, every host_every
        fine = any(not c for plan in self.plans.values() for _, c in plan.probed)
        fine = fine or any(not c for _, c in self.group) or goals
        self.chunk = self.host_every if every_in_step and not fine else probe_every
        # the adaptive schedule (None: fixed), and each process's schedule state
        self.schedule = cfg.adaptive(probe_every)
        self.sched = {n: ScheduleState.empty() for n in procs}

    def point(self, name: str) -> Array:
        return self.procs[name].point(self.states[name])

    def _at(self, t: int, n: str, state: Any, row: Mapping, notes: dict | None = None) -> At:
        return At(t, n, self.procs[n], self.obj, state, row, None, notes)

    def _state(self, n: str, probe: Probe, at: At) -> Any:
        st = self.pstates[n].get(probe.key)
        return probe.init(at) if st is None else st

    def _carry(self, n: str, t: int) -> Any:
        """The in-step probes' states (started at the point of step ``t`` if new)."""
        plan = self.plans[n]
        if plan.in_step is None:
            return None
        at = self._at(t, n, self.states[n], {})
        return tuple(self._state(n, q, at) for q in plan.in_step.probes)

    def _set_carry(self, n: str, carry: Any) -> None:
        plan = self.plans[n]
        if plan.in_step is not None:
            for q, st in zip(plan.in_step.probes, carry, strict=True):
                self.pstates[n][q.key] = st

    def measure(self, t: int, *, may_end: bool) -> dict[str, dict]:
        """The rows of every process at step ``t``, every probe run, without stepping (the last
        step of a run). ``may_end``: see `_snapshot`."""
        self._snapshot(t, may_end)
        rows = self._probe(t, self._rows_at(t), self.states, final=True)
        if self.schedule is not None:
            self._plan(t, rows, "last")
        return rows

    def _rows_at(self, t: int) -> dict[str, dict]:
        """Every process's row at step ``t`` (its in-step probes' columns too), without a step."""
        base = {}
        for n, p in self.procs.items():
            st = self.states[n]
            if isinstance(p, CompiledProcess):
                plan = self.plans[n]
                row, carry = _point_row(
                    p,
                    self.obj,
                    st,
                    plan.in_step,
                    jnp.asarray(t),
                    self._carry(n, t),
                    self.keep_points,
                )
                self._set_carry(n, carry)
            else:
                row = p.measure(self.obj, st)
                if self.keep_points:
                    row = {**row, "w": p.point(st)}
            base[n] = row
        return base

    def _snapshot(self, t: int, may_end: bool) -> None:
        """The run may stop at ``t``, so its last checkpoint (at ``t``) must hold the probes'
        states from *before* probing ``t``, for a resume to measure ``t`` exactly as the
        uninterrupted run did. Other checkpoints are written before their step is probed."""
        if may_end:
            before = {n: self._probe_arrays(n) for n in self.procs}
            self.probes_before = (t, {**before, _GROUP: self._group_arrays()})

    def _probe(self, t: int, base: dict[str, dict], states: dict, final: bool) -> dict[str, dict]:
        """The probed rows at ``t`` from each process's row ``base`` and ``states`` at ``t``:
        the probes due run on the processes whose loss and point are finite."""
        coarse = final or t % self.host_every == 0
        rows = {}
        for n, p in self.procs.items():
            st = states[n]
            row = {"step": t, "process": n, **_values(base[n])}
            rows[n] = row
            if not (math.isfinite(row["loss"]) and bool(jnp.all(jnp.isfinite(p.point(st))))):
                continue
            notes: dict = {}
            for probe, is_coarse in self.plans[n].probed:
                if is_coarse and not coarse:
                    continue
                at = self._at(t, n, st, row, notes)
                pst = self._state(n, probe, at)
                if isinstance(probe, ScanProbe):
                    cols, pst = _observe(
                        InStep((probe,), n), p, self.obj, st, jnp.asarray(t), _arrays(row), (pst,)
                    )
                    cols, pst = _values(cols), pst[0]
                else:
                    cols, pst = probe(at, pst)
                self.pstates[n][probe.key] = pst
                row.update(cols)
        pts = {n: np.asarray(self.procs[n].point(states[n])) for n in self.procs}
        pts = {n: w for n, w in pts.items() if np.all(np.isfinite(w))}
        for probe, is_coarse in self.group:
            if is_coarse and not coarse:
                continue
            gst = self.gstates.get(probe.key)
            gst = probe.init(tuple(self.procs)) if gst is None else gst
            out, self.gstates[probe.key] = probe(pts, self.obj, gst)
            for n, cols in out.items():
                rows[n].update(cols)
        return rows

    def advance(self, t0: int, n: int, log_every: int, *, may_end: bool) -> _Chunk:
        """``n`` steps of every process from the probed step ``t0``: the probed rows at ``t0``,
        the rows of steps ``t0+1 .. t0+n-1`` (every ``log_every``-th), and where the first
        process to diverge did so (None if none did). `rewind` goes back."""
        self._snapshot(t0, may_end)
        self.before = (dict(self.states), {n: dict(s) for n, s in self.pstates.items()})
        base, rows, diverged_at, reason, _ = self._advance(t0, n, log_every)
        probed = self._probe(t0, base, self.before[0], final=False)
        return _Chunk(probed, rows, diverged_at, reason, n)

    def advance_adaptive(self, t0: int, left: int, log_every: int, *, may_end: bool) -> _Chunk:
        """As `advance`, with the adaptive schedule: probe ``t0`` first, let the schedule pick
        the gap to the next probe (at most ``left`` steps), and take it in compiled chunks
        (`AdaptiveSchedule.pieces`), feeding the schedule their losses; a loss rise ends a long
        gap early (`AdaptiveSchedule.cut`)."""
        self._snapshot(t0, may_end)
        self.before = (dict(self.states), {n: dict(s) for n, s in self.pstates.items()})
        probed = self._probe(t0, self._rows_at(t0), self.states, final=False)
        gap = min(self._plan(t0, probed), left)
        rows: list[dict] = []
        done, diverged_at, reason = 0, None, ""
        for piece in self.schedule.pieces(gap):
            base, more, diverged_at, reason, losses = self._advance(t0 + done, piece, log_every)
            if done and (t0 + done) % log_every == 0:  # a piece's first row: not a probed one
                rows.extend(
                    {"step": t0 + done, "process": name, **_values(row)}
                    for name, row in base.items()
                )
            rows.extend(more)
            done += piece
            if diverged_at is not None:
                break
            for name, loss in losses.items():
                self.sched[name] = self.schedule.observe(self.sched[name], loss)
            cut = (self.schedule.cut(st, gap, t0 + done) for st in self.sched.values())
            if done < gap and any(cut):
                for name in self.sched:
                    self.sched[name] = self.sched[name]._replace(
                        reason=np.asarray(REASONS.index("loss_rise"))
                    )
                break
        return _Chunk(probed, rows, diverged_at, reason, done)

    def _plan(self, t: int, rows: dict[str, dict], why: str | None = None) -> int:
        """Record the probe at ``t`` in each process's schedule, its ``probe_reason`` in its
        row (``why``, else the reason planned), and the gap to the next probe: the shortest
        any process asks for."""
        gaps = []
        for n, row in rows.items():
            st = self.sched[n]
            row["probe_reason"] = why or REASONS[int(st.reason)]
            lam, cost = row.get("sharpness", math.nan), row.get("sharpness_matvecs", 0)
            if isinstance(lam, float) and math.isfinite(lam):
                st = self.schedule.record(st, t, lam, int(cost))
                dec = self.schedule.gap(st, t, float(row.get("threshold", math.nan)))
            else:  # a process that was not probed here (its point is not finite)
                dec = self.schedule.gap(st, t, math.nan)
            self.sched[n] = st
            gaps.append(dec)
        dec = min(gaps)
        for n in self.sched:
            self.sched[n] = self.sched[n]._replace(reason=np.asarray(REASONS.index(dec.reason)))
        return dec.gap

    def rewind(self, t0: int, to: int, log_every: int) -> None:
        """Back to step ``t0`` (the in-step probes' states too), then forward to ``to``: after a
        divergence at ``to`` every process is left at that step, so the final checkpoint holds
        one consistent step."""
        states, pstates = self.before
        self.states = dict(states)
        for n, plan in self.plans.items():
            if plan.in_step is not None:
                for q in plan.in_step.probes:
                    if q.key in pstates[n]:
                        self.pstates[n][q.key] = pstates[n][q.key]
                    else:
                        self.pstates[n].pop(q.key, None)
        if to > t0:
            self._advance(t0, to - t0, log_every)

    def _advance(self, t0: int, n: int, log_every: int):
        """``n`` steps of every process from ``t0``: the rows at ``t0``, the logged rows after
        it, where the first to diverge did so and why, and each compiled process's losses at
        the steps it took."""
        base: dict[str, dict] = {}
        rows: list[dict] = []
        losses: dict[str, np.ndarray] = {}
        diverged_at, reason = None, ""
        for name, p in self.procs.items():
            if isinstance(p, HostProcess):
                row = p.measure(self.obj, self.states[name])
                base[name] = {**row, "w": p.point(self.states[name])} if self.keep_points else row
                new = p.advance(self.obj, self.states[name], n)
                if not bool(jnp.all(jnp.isfinite(p.point(new)))):
                    if diverged_at is None or t0 + n < diverged_at:
                        diverged_at, reason = t0 + n, f"{name}: the point became non-finite"
                    continue
                self.states[name] = new
                continue
            plan = self.plans[name]
            carry = self._carry(name, t0)
            out = p.scan(
                self.obj,
                self.states[name],
                n,
                keep_points=self.keep_points,
                observer=plan.in_step,
                carry=carry,
                t0=t0,
            )
            self.states[name] = out.state
            self._set_carry(name, out.carry)
            arrs = {k: np.asarray(v) for k, v in out.rows.items()}
            ok = np.asarray(out.ok)
            base[name] = {k: v[0] for k, v in arrs.items()}
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
            losses[name] = arrs["loss"][: last + 1]
            for i in range(1, last + 1):
                if (t0 + i) % log_every == 0:
                    rows.append(
                        {
                            "step": t0 + i,
                            "process": name,
                            **_values({k: v[i] for k, v in arrs.items()}),
                        }
                    )
        return base, rows, diverged_at, reason, losses

    # -- checkpoints: plain arrays, one key per leaf
    def arrays(self, step: int) -> dict[str, np.ndarray]:
        out = {}
        t, before = self.probes_before
        for n in self.procs:
            for i, leaf in enumerate(jax.tree_util.tree_leaves(self.states[n])):
                out[f"{n}__state_{i}"] = np.asarray(leaf)
            out[f"{n}__point"] = np.asarray(self.point(n))
            probe = before[n] if t == step else self._probe_arrays(n)
            out.update({f"{n}__probe_{k}": v for k, v in probe.items()})
        group = before[_GROUP] if t == step else self._group_arrays()
        out.update({f"{_GROUP}__probe_{k}": v for k, v in group.items()})
        return out

    def _group_arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for q, _ in self.group:
            st = self.gstates.get(q.key)
            if st is not None:
                out.update({f"{q.key}_{k}": v for k, v in q.arrays(st).items()})
        return out

    def _probes(self, n: str) -> list[Probe]:
        plan = self.plans[n]
        inner = list(plan.in_step.probes) if plan.in_step is not None else []
        return inner + [q for q, _ in plan.probed]

    def _probe_arrays(self, n: str) -> dict[str, np.ndarray]:
        """Process ``n``'s probes' states as ``{KEY_NAME: array}`` (and its schedule's)."""
        out = {}
        if self.schedule is not None:
            out.update({f"{_SCHEDULE}_{f}": v for f, v in self.sched[n]._asdict().items()})
        for q in self._probes(n):
            st = self.pstates[n].get(q.key)
            if st is not None:
                out.update({f"{q.key}_{k}": v for k, v in q.arrays(st).items()})
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
                [_like(a, b) for a, b in zip(saved, leaves, strict=True)],
            )
            if self.schedule is not None:
                prefix = f"{n}__probe_{_SCHEDULE}_"
                mine = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
                if set(mine) != set(ScheduleState._fields):
                    raise ConfigError("resume", where, "a checkpoint of an adaptive schedule")
                self.sched[n] = ScheduleState(**{f: np.asarray(mine[f]) for f in mine})
            at = self._at(-1, n, self.states[n], {})
            for q in self._probes(n):
                prefix = f"{n}__probe_{q.key}_"
                mine = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
                if mine:
                    self.pstates[n][q.key] = q.load(mine, at)
        for q, _ in self.group:
            prefix = f"{_GROUP}__probe_{q.key}_"
            mine = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            if mine:
                self.gstates[q.key] = q.load(mine, tuple(self.procs))


class _Chunk(NamedTuple):
    probed: dict[str, dict]  # the rows at the chunk's first step, probed
    rows: list[dict]  # the logged rows of its other steps, up to a divergence
    diverged_at: int | None
    reason: str
    n: int  # the steps it took (up to a divergence) or meant to


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
    custom_probes: tuple[Probe, ...] = (),
    notes: dict | None = None,
) -> Run:
    r"""Advance ``processes`` in lockstep from one start for ``steps`` steps, probing on the way.

    Args:
        processes: ``{name: Process}`` (a single `Process` is named ``"main"``), e.g.
            ``{"gd": Optimizer(rules.GD(0.1)), "flow": GradientFlow(lr=0.1)}``.
        objective: an `Objective` (or a plain ``loss(w)`` with ``w0``).
        steps: the step budget.
        w0: the common start (default ``objective.w0``).
        probe_every: probe every this many steps (and at the last step). With 1 (or
            ``probes.every_step``) compiled processes are probed inside their compiled steps,
            and the probes that cost more than a step run every ``probes.host_every`` steps
            (`Probes`).
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
        custom_probes: more probes, run on every process like the built-in ones: probe objects
            (`eoslab.runner.ScanProbe`, `HostProbe`, `GroupProbe`; e.g. `Accuracy`,
            `BatchSharpness`). A `ScanProbe` runs inside the compiled step where the sharpness
            does (every step); host and group probes run at every probed step.
        notes: facts about the run kept in ``config.json`` (``notes``) and in every manifest,
            e.g. ``{"synthetic_data": ...}`` when a stand-in dataset replaced a missing one.

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
    if w0 is not None and isinstance(obj.w0, jax.Array):  # laid out as the objective's own
        w = jax.device_put(w, obj.w0.sharding)
    goals = stop.loss_below is not None or stop.accuracy_above is not None
    custom = check_probes(custom_probes)
    lock = _Lockstep(procs, obj, w, probes, seed, keep_points, custom, probe_every, goals)
    if out is None:
        return _drive(
            lock, procs, None, 0, steps, probe_every, log_every, stop, progress, flush_seconds
        )

    store = RunStore(out, notes)
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
    goals = stop.loss_below is not None or stop.accuracy_above is not None
    try:
        while True:
            if t == steps:  # the last step: every probe, no step after it
                rows = lock.measure(t, may_end=True)
            elif lock.schedule is not None:
                chunk = lock.advance_adaptive(t, steps - t, log_every, may_end=goals)
                n, rows = chunk.n, chunk.probed
            else:
                n = min(lock.chunk - t % lock.chunk, steps - t)
                chunk = lock.advance(t, n, log_every, may_end=goals)
                rows = chunk.probed
            head = rows[first]
            bar.update(
                t,
                head["loss"],
                head.get("eff_sharpness", head.get("sharpness")),
                head.get("threshold"),
            )
            bad = [q for q, r in rows.items() if not math.isfinite(r["loss"])]
            if bad:
                status = "diverged"
                lost = rows[bad[0]]["loss"]
                message = f"diverged at step {t}: {bad[0]}: the loss became {lost:.4g}"
                pending.extend(r for q, r in rows.items() if q not in bad)
                if t < steps:
                    lock.rewind(t, t, log_every)
                break
            pending.extend(rows.values())
            goal = _goal(stop, head, t)
            if t == steps or goal is not None:
                if goal is not None:
                    status, message = goal
                    if t < steps:
                        lock.rewind(t, t, log_every)
                break
            pending.extend(chunk.rows)
            if chunk.diverged_at is not None:
                if chunk.diverged_at < t + n:
                    lock.rewind(t, chunk.diverged_at, log_every)
                    pending = [r for r in pending if r["step"] < chunk.diverged_at]
                status = "diverged"
                t = chunk.diverged_at
                message = f"diverged at step {chunk.diverged_at}: {chunk.reason}"
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
        status=status,
        message=message,
        step=t,
        path=store.path if store else None,
        config=cfg,
        final_points=points,
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
        "matmul_dtype": obj.matmul_dtype,
        "transform": obj.transform,
    }
