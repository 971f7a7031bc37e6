"""Every-step sharpness as users feel it (issue 29): 200 GD steps probed at every step against
the same 200 steps unprobed, whole runs in one process, interleaved; and where a probed step's
time goes outside its Hessian products.

Workloads (float32, MSE ``mse_half``, full batch, GD):

* ``eos-gd``: the preset (fc-tanh 40-200-200-10, 4,000 MNIST-1D examples, lr 0.1) after 1,200
  unprobed steps (its edge of stability);
* ``fc-tanh 5k digits``: 3072-200-200-10 on the 5,000 mnist-5k digits (the every-step bench's),
  lr 1.9/lambda_1(w_0), after 220 unprobed steps;
* ``fashion mlp``: tanh MLP 784-256-256-10 on the first 4,000 Fashion-MNIST training images
  (Debian's ``dataset-fashion-mnist``), lr 1.9/lambda_1(w_0), from w_0 (before the edge).

``whole`` times ``CompiledProcess.scan`` of 200 steps (one compiled ``lax.scan``, what
`eoslab.runner.run` runs between host probes at the two ends), unprobed and with the in-scan
tracker (`StepSharpness`), compiled once, then ``reps`` interleaved repetitions; ratios of
medians and the min/max of the per-repetition ratios. ``pieces`` times 20-step scans of: the plain
step; the floor (the gradient and one Hessian product of a carried vector from one
linearization); the floor plus the tracker's work without its further rounds; the whole tracker.

    cd benchmarks && python bench_every_floor.py --only="fashion mlp" --reps=5
"""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import tyro

from eoslab import Objective
from eoslab.curvature import top_eigenpairs
from eoslab.curvature.step_tracker import StepTracker
from eoslab.runner.probe import InStep, linearization
from eoslab.runner.probes import StepSharpness


def fashion_mlp(n: int = 4000) -> Objective:
    from eoslab.data import load
    from eoslab.models import create

    ds = load("fashion-mnist", n=n)
    apply, params = create(
        "mlp", jax.random.PRNGKey(0), tuple(ds.input_shape), 10, widths=(256, 256)
    )
    return Objective.from_model(apply, params, (ds.x_train, ds.y_train), "mse_half")


def workloads() -> dict:
    import bench_every_step as b

    def fashion():
        obj = fashion_mlp()
        lam0 = float(top_eigenpairs(obj, obj.w0, 1, tol=1e-4).values[0])
        return obj, 1.9 / lam0, 0

    allw = b.workloads(False)
    return {
        "eos-gd": allw["eos-gd"],
        "fc-tanh 5k digits": allw["fc-tanh 5k digits"],
        "fashion mlp": fashion,
    }


def _start(obj, w, tracker):
    res = top_eigenpairs(obj, w, 1, tol=tracker.tol)
    guard = res.next_vector
    if not bool(jnp.any(guard != 0)):
        guard = jnp.roll(res.vectors[:, 0], 1)
    return (tracker.warm(res.vectors, guard, res.operator_norm),)


class Floor(eqx.Module):
    """The step's gradient and one product of the carried vector, from one linearization."""

    name: str = "floor"

    def prepare(self, objective, process, state):
        lin = linearization(objective, process.point(state))
        return (lin.loss, lin.grad), lin

    def __call__(self, objective, process, state, step, row, aux, carry):
        v = carry
        hv = aux.matmat(v[:, None])[:, 0]
        lam = jnp.vdot(v, hv)
        return {"sharpness": lam}, hv / jnp.linalg.norm(hv)


def _time(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    if not hasattr(out, "metrics"):
        jax.block_until_ready(out)
    return time.perf_counter() - t0


def bench(name, make, steps: int, reps: int, piece_steps: int) -> dict:
    from bench_every_step import warmed

    obj, lr, proc, state, w = warmed(make)
    tracker = StepTracker(k=1, tol=1e-3, max_rounds=8)
    carry = _start(obj, w, tracker)
    probe = InStep((StepSharpness(tracker),), "gd")
    v0 = carry[0].vectors[0]

    variants = {
        "plain": lambda n: proc.scan(obj, state, n).state,
        "floor": lambda n: proc.scan(obj, state, n, observer=Floor(), carry=v0).state,
        "tracker": lambda n: proc.scan(obj, state, n, observer=probe, carry=carry),
    }
    # whole runs
    out = {"D": obj.dim, "lr": lr}
    t_compile = {k: _time(variants[k], steps) for k in ("plain", "tracker")}
    out["compile_s"] = t_compile
    whole = {"plain": [], "tracker": []}
    for r in range(reps):
        for k in ("plain", "tracker") if r % 2 == 0 else ("tracker", "plain"):
            whole[k].append(_time(variants[k], steps))
    ratios = np.asarray(whole["tracker"]) / np.asarray(whole["plain"])
    res = variants["tracker"](steps)
    mv = np.asarray(res.rows["sharpness_matvecs"])
    out.update(
        plain_s=float(np.median(whole["plain"])),
        probed_s=float(np.median(whole["tracker"])),
        whole_ratio=float(np.median(whole["tracker"]) / np.median(whole["plain"])),
        whole_ratio_min=float(ratios.min()),
        whole_ratio_max=float(ratios.max()),
        mv_median=float(np.median(mv)),
        mv_mean=float(np.mean(mv)),
        mv_max=int(mv.max()),
        worst_rel_bound=float(
            np.max(
                np.asarray(res.rows["sharpness_error"]) / np.abs(np.asarray(res.rows["sharpness"]))
            )
        ),
    )
    # the same 200 steps through `eoslab.runner.run` (what a user calls): the Lanczos start,
    # the host probes at the two ends and the rows included; compiled by a first call each
    from eoslab.runner import Probes, run

    off = Probes(sharpness=False, alignment=False, effective=False)
    on = Probes(every_step=True, alignment=False, effective=False)
    w_start = proc.point(state)

    def user(probes):
        return lambda: run(proc, obj, steps, w0=w_start, probe_every=steps, probes=probes)

    runs = {"plain": user(off), "tracker": user(on)}
    out["run_first_s"] = {k: _time(f) for k, f in runs.items()}
    timed = {k: [] for k in runs}
    for r in range(reps):
        for k in ("plain", "tracker") if r % 2 == 0 else ("tracker", "plain"):
            timed[k].append(_time(runs[k]))
    rr = np.asarray(timed["tracker"]) / np.asarray(timed["plain"])
    out.update(
        run_plain_s=float(np.median(timed["plain"])),
        run_probed_s=float(np.median(timed["tracker"])),
        run_ratio=float(np.median(timed["tracker"]) / np.median(timed["plain"])),
        run_ratio_min=float(rr.min()),
        run_ratio_max=float(rr.max()),
    )
    if not piece_steps:
        out["pieces"], out["piece_plain_s"] = {"floor": np.nan, "tracker": np.nan}, np.nan
        return out
    # pieces
    for k in variants:
        _time(variants[k], piece_steps)
    piece = {k: [] for k in variants}
    for r in range(reps):
        for k in variants if r % 2 == 0 else reversed(list(variants)):
            piece[k].append(_time(variants[k], piece_steps))
    base = np.median(piece["plain"])
    out["pieces"] = {k: float(np.median(v) / base) for k, v in piece.items()}
    out["piece_plain_s"] = float(base / piece_steps)
    return out


def main(only: str = "", steps: int = 200, reps: int = 5, piece_steps: int = 20) -> None:
    sel = [x for x in only.split(",") if x]
    results = {}
    for name, make in workloads().items():
        if sel and name not in sel:
            continue
        print(f"{name} ...", flush=True)
        results[name] = r = bench(name, make, steps, reps, piece_steps)
        print(r, flush=True)
    print()
    print(
        "| workload | `run`, unprobed | `run`, probed | whole-run ratio (median; min-max) "
        "| first `run` (compiling): unprobed, probed |"
    )
    print("|---|---|---|---|---|")
    for name, x in results.items():
        f = x["run_first_s"]
        print(
            f"| {name} | {x['run_plain_s']:.2f} s | {x['run_probed_s']:.2f} s "
            f"| {x['run_ratio']:.2f}x ({x['run_ratio_min']:.2f}-{x['run_ratio_max']:.2f}) "
            f"| {f['plain']:.1f} s, {f['tracker']:.1f} s |"
        )
    print()
    print(
        "| workload | D | unprobed 200 steps | probed 200 steps | whole-run ratio (median; min-max "
        "of reps) | products/step (median, mean, max) | worst rel. bound | plain / floor / "
        "tracker (20-step scans) | compile: plain, probed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, x in results.items():
        p = x["pieces"]
        print(
            f"| {name} | {x['D']:,} | {x['plain_s']:.2f} s | {x['probed_s']:.2f} s "
            f"| {x['whole_ratio']:.2f}x "
            f"({x['whole_ratio_min']:.2f}-{x['whole_ratio_max']:.2f}) "
            f"| {x['mv_median']:.0f}, {x['mv_mean']:.2f}, {x['mv_max']} "
            f"| {x['worst_rel_bound']:.1e} "
            f"| 1 / {p['floor']:.2f} / {p['tracker']:.2f} "
            f"| {x['compile_s']['plain']:.1f} s, {x['compile_s']['tracker']:.1f} s |"
        )


if __name__ == "__main__":
    tyro.cli(main)
