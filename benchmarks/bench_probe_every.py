"""Whole-run wall time of probing at every step (issue 25): ``probe_every=1`` with the default
probes against 200 unprobed steps, on the eos-gd preset at its edge of stability.

The eos-gd preset (fc-tanh 40-200-200-10 on 4,000 MNIST-1D examples, MSE, float32, GD lr 0.1)
is first run 1,200 unprobed steps (its sharpness then sits near 2/lr = 20). From that point
each variant is one call of `eoslab.runner.run` for 200 steps, timed whole (compiling excluded:
every variant runs once before the timing), with the variants interleaved in each repetition so
that a busy machine slows them alike:

* ``unprobed``: ``probe_every=200``, every probe off (the 200 steps in one ``lax.scan``);
* ``probe_every=1``: the default `Probes()`;
* ``probe_every=1 + accuracy``: the same with the accuracy probe, as ``eoslab run eos-gd
  --probe-every 1`` and `eoslab.train` add it;
* ``every_step, probe_every=200``: `Probes(every_step=True)`, the other probes at steps 0 and 200;
* ``every_step, probe_every=1``: `Probes(every_step=True)` with ``probe_every=1``.

Columns, for the wall time and for the process's CPU time (all threads; less sensitive to a
shared machine's load): the median over the repetitions and its spread (min-max), the ratio of
the medians to the unprobed one, and the median (min-max) of each repetition's own ratio. Then the
certified values: the sharpness and its bound at every step, ``probe_every=1`` against each
``every_step`` spelling (largest difference; 0 means the same bits).

Usage: python benchmarks/bench_probe_every.py [--reps 5] [--steps 200]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from eoslab.dynamics.optimizer import Optimizer
from eoslab.dynamics.rules import GD
from eoslab.experiments.build import build
from eoslab.experiments.presets import get_preset
from eoslab.runner import Probes, run

WARMUP = 1200
OFF = Probes(sharpness=False, alignment=False, effective=False, distances=False)


def _accuracy(obj):
    try:
        from eoslab.runner import Accuracy

        return Accuracy.of(obj)
    except ImportError:  # before issue 25: a function probe
        from eoslab.runner import accuracy_probe

        return accuracy_probe(obj)


def variants(steps: int) -> dict[str, dict]:
    return {
        "unprobed": dict(probe_every=steps, probes=OFF),
        "probe_every=1": dict(probe_every=1, probes=Probes()),
        "probe_every=1 + accuracy": dict(probe_every=1, probes=Probes(), accuracy=True),
        f"every_step, probe_every={steps}": dict(probe_every=steps, probes=Probes(every_step=True)),
        "every_step, probe_every=1": dict(probe_every=1, probes=Probes(every_step=True)),
    }


def main(reps: int = 5, steps: int = 200) -> None:
    obj = build(get_preset("eos-gd")).objective
    proc = Optimizer(GD(0.1))  # one object: every run shares its compiled steps
    t0 = time.perf_counter()
    try:
        w = proc.scan(obj, proc.init(obj, obj.w0), WARMUP).state.w
    except AttributeError:  # before issue 25
        from eoslab.dynamics.process import advance

        w = advance(proc, obj, proc.init(obj, obj.w0), WARMUP)[0].w
    jax.block_until_ready(w)
    print(f"warm-up: {WARMUP} steps in {time.perf_counter() - t0:.1f} s")
    acc = _accuracy(obj)
    vs = variants(steps)

    def once(kw: dict):
        kw = dict(kw)
        extra = (acc,) if kw.pop("accuracy", False) else ()
        t, c = time.perf_counter(), time.process_time()
        r = run(proc, obj, steps, w0=w, custom_probes=extra, **kw)
        jax.block_until_ready(r.point())
        return time.perf_counter() - t, time.process_time() - c, r.metrics

    metrics = {name: once(kw)[2] for name, kw in vs.items()}  # compile every variant
    wall: dict[str, list[float]] = {name: [] for name in vs}
    cpu: dict[str, list[float]] = {name: [] for name in vs}
    for rep in range(reps):
        for name, kw in vs.items():
            t, c, _ = once(kw)
            wall[name].append(t)
            cpu[name].append(c)
        print(
            f"repetition {rep + 1}/{reps} (wall / cpu s): "
            + ", ".join(f"{wall[n][-1]:.2f} / {cpu[n][-1]:.2f}" for n in vs)
        )

    print()
    print(f"eos-gd at step {WARMUP}, {steps} steps per run, {reps} interleaved repetitions")
    for what, times in (("wall time", wall), ("CPU time of the process", cpu)):
        base = np.asarray(times["unprobed"])
        print()
        cols = ["variant", f"{what}: median (min-max)", "ratio of medians"]
        print("| " + " | ".join([*cols, "per-repetition ratio: median (min-max)"]) + " |")
        print("|---|---|---|---|")
        for name in vs:
            t = np.asarray(times[name])
            r = t / base
            print(
                f"| {name} | {np.median(t):.2f} s ({t.min():.2f}-{t.max():.2f}) | "
                f"{np.median(t) / np.median(base):.2f}x | "
                f"{np.median(r):.2f}x ({r.min():.2f}-{r.max():.2f}) |"
            )
    print()
    one = metrics["probe_every=1"]
    cols = ["against probe_every=1", "steps with a sharpness", "max abs diff sharpness"]
    print("| " + " | ".join([*cols, "max abs diff bound", "worst bound / sharpness"]) + " |")
    print("|---|---|---|---|---|")
    for name in (f"every_step, probe_every={steps}", "every_step, probe_every=1"):
        m = metrics[name]
        a = one["sharpness"].to_numpy(float)
        b = m["sharpness"].to_numpy(float)
        ea = one["sharpness_error"].to_numpy(float)
        eb = m["sharpness_error"].to_numpy(float)
        print(
            f"| {name} | {np.isfinite(b).sum()} of {len(b)} | {np.nanmax(np.abs(a - b)):.3g} | "
            f"{np.nanmax(np.abs(ea - eb)):.3g} | {np.nanmax(eb / np.abs(b)):.2g} |"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    main(args.reps, args.steps)
