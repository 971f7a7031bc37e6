"""GPU check (issue 28): for each GPU-sized preset, seconds per step, seconds per probe, Hessian
products per probe, peak device memory measured next to the CPU-side prediction
(`eoslab.experiments.memory`, compiled on XLA:CPU in a subprocess), and compile times.

Usage (repository root; `benchmarks/gpu_check.sh` calls it):
    python benchmarks/gpu_check.py [--dry-run] [--steps S] [--json OUT]
``--dry-run`` runs the ``-tiny`` variants for 3 steps (minutes on a CPU): the same code path.
Data: ``$EOSLAB_DATA`` (CIFAR-10 batches, a text file); absent, the synthetic stand-ins.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import warnings

FULL = {  # preset -> overrides of n (examples) that keep the whole check under 8 minutes
    "resnet20-cifar": 5000,
    "vgg11-cifar": 5000,
    "vit-tiny-cifar": 5000,
    "gpt-small": int(os.environ.get("GPT_N", "32")),
}
TINY = {
    "resnet20-cifar-tiny": 64,
    "vgg11-cifar-tiny": 64,
    "vit-tiny-cifar-tiny": 64,
    "gpt-small-tiny": 8,
}

_PREDICT = """
import json, sys, dataclasses, warnings
warnings.simplefilter("ignore")
from eoslab.experiments import PRESETS
from eoslab.experiments.memory import memory_report
name, n = sys.argv[1], int(sys.argv[2])
exp = PRESETS[name]
exp = dataclasses.replace(exp, problem=dataclasses.replace(exp.problem, n=n))
rep = memory_report(exp, batch=n, functions=("step", "step + sharpness"), remat="none")
print(json.dumps({r.name: r.at_batch.peak for r in rep.rows}))
"""


def start_prediction(name: str, n: int) -> tuple[subprocess.Popen, float]:
    """Start the CPU-side prediction of the step's and the step + sharpness's peak bytes: a
    subprocess on XLA:CPU (the GPU's memory is not touched), compiling while the GPU measures."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-c", _PREDICT, name, str(n)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, time.perf_counter()


def finish_prediction(started: tuple[subprocess.Popen, float]) -> dict:
    proc, t = started
    try:
        out, err = proc.communicate(timeout=float(os.environ.get("PREDICT_TIMEOUT", "300")))
        pred = json.loads(out.strip().splitlines()[-1]) if proc.returncode == 0 else {}
        if proc.returncode != 0:
            print(f"  CPU-side prediction failed: {err.strip()[-500:]}", file=sys.stderr)
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        proc.kill()
        print(f"  CPU-side prediction failed: {exc}", file=sys.stderr)
        pred = {}
    pred["seconds"] = time.perf_counter() - t
    return pred


def peak_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats()
    return None if not stats else int(stats.get("peak_bytes_in_use", 0))


def measure(name: str, n: int, steps: int) -> dict:
    import jax

    from eoslab.curvature import top_eigenpairs
    from eoslab.dynamics.optimizer import Optimizer
    from eoslab.experiments import PRESETS, build

    exp = PRESETS[name]
    exp = dataclasses.replace(
        exp, problem=dataclasses.replace(exp.problem, n=n), batch_size=None, compare={}
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = time.perf_counter()
        built = build(exp)
        t_build = time.perf_counter() - t
    synthetic = any("synthetic" in str(w.message) for w in caught)
    obj = built.objective
    proc = Optimizer(exp.rule)
    state = proc.init(obj, obj.w0)
    step = jax.jit(proc.step)
    t = time.perf_counter()
    compiled = step.lower(obj, state).compile()
    t_compile = time.perf_counter() - t
    state, row = compiled(obj, state)
    jax.block_until_ready(state)
    t = time.perf_counter()
    for _ in range(steps):
        state, row = compiled(obj, state)
    jax.block_until_ready(state)
    s_step = (time.perf_counter() - t) / steps
    w = proc.point(state)
    t = time.perf_counter()
    res = top_eigenpairs(obj, w, exp.probes.k, tol=exp.probes.tol)  # cold: compile + solve
    jax.block_until_ready(res.values)
    t_probe_first = time.perf_counter() - t
    t = time.perf_counter()
    res = top_eigenpairs(obj, w, exp.probes.k, tol=exp.probes.tol)
    jax.block_until_ready(res.values)
    s_probe = time.perf_counter() - t
    return {
        "preset": name,
        "n": n,
        "params": int(obj.dim),
        "synthetic_data": synthetic,
        "build_s": t_build,
        "step_compile_s": t_compile,
        "s_per_step": s_step,
        "first_probe_s": t_probe_first,
        "s_per_probe": s_probe,
        "hvps_per_probe": int(res.matvecs),
        "sharpness": float(res.values[0]),
        "bound": float(res.error_bound[0]),
        "loss": float(row["loss"]),
        "peak_bytes_measured": peak_bytes(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny variants, 3 steps (CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per preset")
    ap.add_argument("--only", nargs="*", default=None, help="presets to check")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    import jax

    presets = TINY if args.dry_run else FULL
    if args.only:
        presets = {k: v for k, v in presets.items() if k in args.only}
    steps = args.steps or (3 if args.dry_run else 20)
    print(f"backend {jax.default_backend()}, devices {jax.devices()}", flush=True)
    rows = []
    started = {name: start_prediction(name, n) for name, n in presets.items()}
    for name, n in presets.items():
        print(f"-- {name} (n={n}) --", flush=True)
        row = measure(name, n, steps)
        pred = finish_prediction(started[name])
        row["pred_step_bytes"] = pred.get("step")
        row["pred_step_sharpness_bytes"] = pred.get("step + sharpness")
        row["predict_s"] = pred["seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(
        "| preset | params | n | s/step | s/probe | HVPs/probe | peak GB measured | "
        "peak GB predicted (step / step+sharpness, XLA:CPU) | step compile s | first probe s "
        "| synthetic |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def gb(x):
        return "n/a" if x is None else f"{x / 1e9:.2f}"

    for r in rows:
        print(
            f"| {r['preset']} | {r['params']:,} | {r['n']} | {r['s_per_step']:.4f} | "
            f"{r['s_per_probe']:.3f} | {r['hvps_per_probe']} | {gb(r['peak_bytes_measured'])} | "
            f"{gb(r['pred_step_bytes'])} / {gb(r['pred_step_sharpness_bytes'])} | "
            f"{r['step_compile_s']:.1f} | {r['first_probe_s']:.1f} | {r['synthetic_data']} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
