"""Certified clusters at every step (issue 29): the block of all eigenvalues above a fraction of
2/lr (`ClusterTracker`, ``Probes(every_step=True, cluster_above=...)``) against the lambda_1-only
tracker (`StepTracker`) on the synthetic fc-tanh 5k overshoot.

fc-tanh 3072-200-200-10 on 5,000 CIFAR-shaped synthetic inputs (random labels), float32, MSE, GD
at lr = 1.2/lambda_1(w_0); after ``start`` unprobed steps GD is in its overshoot (about 9
eigenvalues 3-15% above 2/lr). From the same states, chunk by chunk (10 steps, one
``lax.scan`` each), interleaved: the unprobed scan, the scan with the lambda_1 tracker, the scan
with the cluster tracker. Per tracker: products per step, seconds per step, the whole window's
time over the unprobed one; at sampled steps each certified value of the block against a float64
Lanczos reference at tol 1e-7 (the same point, the objective rebuilt in float64).

    cd benchmarks && python bench_every_cluster.py --start=170 --chunks=6
"""

from __future__ import annotations

import time

import jax

jax.config.update("jax_enable_x64", True)  # the float64 references; the runs stay float32

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

from eoslab import Objective  # noqa: E402
from eoslab.curvature import top_eigenpairs  # noqa: E402
from eoslab.curvature.step_tracker import ClusterTracker, StepTracker  # noqa: E402
from eoslab.dynamics.optimizer import Optimizer  # noqa: E402
from eoslab.dynamics.rules import GD  # noqa: E402
from eoslab.models import create  # noqa: E402
from eoslab.runner.probe import InStep  # noqa: E402
from eoslab.runner.probes import StepCluster, StepSharpness  # noqa: E402

CHUNK = 10


def fc_tanh(n: int, dtype: str) -> Objective:
    """The bench suite's synthetic fc-tanh on ``n`` examples (its inputs, labels and init)."""
    kx, ky = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.normal(kx, (n, 3072), jnp.float32)
    y = jax.random.randint(ky, (n,), 0, 10)
    apply, params = create("fc-tanh", jax.random.PRNGKey(0), (3072,), 10)
    if dtype == "float64":
        x = x.astype(jnp.float64)
    return Objective.from_model(apply, params, (x, y), "mse_half", dtype=dtype)


def main(
    n: int = 5000,
    start: int = 170,
    chunks: int = 6,
    samples: int = 3,
    frac: float = 0.75,
    max_k: int = 16,
    tol: float = 1e-3,
    chunk_cols: int = 1,
    gap: bool = True,
) -> None:
    """``gap``: the cluster's quadratic gap bounds (False: residual bounds only)."""
    obj = fc_tanh(n, "float32")
    lam0 = float(top_eigenpairs(obj, obj.w0, 1, tol=1e-4).values[0])
    lr = 1.2 / lam0
    thr = 2.0 / lr
    proc = Optimizer(GD(lr))
    state = proc.scan(obj, proc.init(obj, obj.w0), start).state
    w = proc.point(state)
    t0 = time.perf_counter()
    res = top_eigenpairs(obj, w, max_k + 1, tol=tol)
    print(
        f"start: Lanczos top {max_k + 1} in {time.perf_counter() - t0:.0f} s, "
        f"values / (2/lr): {np.round(np.asarray(res.values) / thr, 3)}",
        flush=True,
    )
    step_tr = StepTracker(k=1, tol=tol, max_rounds=8)
    guard = res.vectors[:, 1]
    single = (step_tr.warm(res.vectors[:, :1], guard, res.operator_norm),)
    cl = ClusterTracker(max_k=max_k, frac=frac, tol=tol, chunk=chunk_cols, gap=gap)
    size0 = int(np.sum(np.asarray(res.values) >= frac * thr))
    cluster = (cl.warm(res.vectors, jax.random.key(0), res.operator_norm, size0),)
    probes = {
        "lambda_1": InStep((StepSharpness(step_tr),), "gd"),
        "cluster": InStep((StepCluster(cl),), "gd"),
    }
    carry = {"lambda_1": single, "cluster": cluster}

    def scan(name, st):
        if name == "plain":
            return proc.scan(obj, st, CHUNK)
        return proc.scan(obj, st, CHUNK, observer=probes[name], carry=carry[name])

    for name in ("plain", *probes):  # compile
        jax.block_until_ready(scan(name, state).state)
    secs = {k: [] for k in ("plain", *probes)}
    rows = {k: [] for k in probes}
    points = []
    for c in range(chunks):
        points.append(np.asarray(proc.point(state)))
        order = ("plain", *probes) if c % 2 == 0 else (*reversed(probes), "plain")
        out = {}
        for name in order:
            t0 = time.perf_counter()
            out[name] = scan(name, state)
            jax.block_until_ready(out[name].state)
            secs[name].append(time.perf_counter() - t0)
        for name in probes:
            rows[name].append({k: np.asarray(v) for k, v in out[name].rows.items()})
            carry[name] = out[name].carry
        state = out["cluster"].state
        print(f"chunk {c}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in secs.items()), flush=True)
        for name in probes:
            r = rows[name][-1]
            print(
                f"  {name}: products {r['sharpness_matvecs'].tolist()}, "
                f"size {r.get('cluster_size', np.ones(1, int)).tolist()}, "
                f"rel. bounds {np.round(r['sharpness_error'] / abs(r['sharpness']), 6).tolist()}",
                flush=True,
            )
    cat = {k: {c: np.concatenate([r[c] for r in v]) for c in v[0]} for k, v in rows.items()}
    # float64 references at the first step of sampled chunks
    obj64 = fc_tanh(n, "float64")
    checks = []
    for c in np.linspace(0, chunks - 1, samples).round().astype(int):
        i = c * CHUNK
        size = int(cat["cluster"]["cluster_size"][i])
        t0 = time.perf_counter()
        ref = top_eigenpairs(obj64, jnp.asarray(points[c], jnp.float64), size + 2, tol=1e-7)
        ref_vals = np.asarray(ref.values)
        vals = cat["cluster"]["eigs"][i][:size].astype(np.float64)
        bnds = cat["cluster"]["eigs_error"][i][:size].astype(np.float64)
        lam1, b1 = (
            float(cat["lambda_1"]["sharpness"][i]),
            float(cat["lambda_1"]["sharpness_error"][i]),
        )
        checks.append(
            {
                "step": start + i,
                "size": size,
                "above": int(np.sum(ref_vals >= frac * thr)),
                "max_err_over_bound": float(np.max(np.abs(vals - ref_vals[:size]) / bnds)),
                "max_rel_err": float(np.max(np.abs(vals - ref_vals[:size]) / ref_vals[:size])),
                "max_rel_bound": float(np.max(bnds / np.abs(vals))),
                "lambda_1 err/bound": abs(lam1 - ref_vals[0]) / b1,
                "ref_s": time.perf_counter() - t0,
                "ref_over_thr": np.round(ref_vals / thr, 3).tolist(),
            }
        )
        print(checks[-1], flush=True)
    plain = np.asarray(secs["plain"])
    print()
    print(
        f"fc-tanh {n} synthetic, lr {lr:.4g} (2/lr = {thr:.4g}), "
        f"steps {start}-{start + chunks * CHUNK - 1}, "
        f"cluster above {frac} x 2/lr (max {max_k}), tol {tol}, chunk {chunk_cols}, gap {gap}"
    )
    lam1 = np.asarray(secs["lambda_1"])
    print(
        f"cluster / lambda_1 wall time (sum of chunks): {np.sum(secs['cluster']) / lam1.sum():.2f}x"
    )
    per = np.asarray(secs["cluster"]) / lam1
    print(f"cluster / lambda_1 per chunk: {np.round(per, 2).tolist()}")
    print()
    print(
        "| tracker | products/step: median, mean, max | block size: median (min-max) "
        "| median of products - block size | s/step (median chunk) "
        "| window / unprobed (sum of chunks) | worst certified rel. bound | steps converged |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in probes:
        r = cat[name]
        mv = r["sharpness_matvecs"]
        sz = r["cluster_size"] if "cluster_size" in r else np.ones_like(mv)
        s = np.asarray(secs[name])
        if name == "cluster":
            rel = np.nanmax(r["eigs_error"] / np.abs(r["eigs"]))
            conv = np.mean(
                np.all((r["eigs_error"] <= tol * np.abs(r["eigs"])) | np.isnan(r["eigs"]), axis=1)
            )
        else:
            rel = np.max(r["sharpness_error"] / np.abs(r["sharpness"]))
            conv = np.mean(r["sharpness_error"] <= tol * np.abs(r["sharpness"]))
        print(
            f"| {name} | {np.median(mv):.0f}, {np.mean(mv):.2f}, {np.max(mv)} "
            f"| {np.median(sz):.0f} ({np.min(sz)}-{np.max(sz)}) | {np.median(mv - sz):.0f} "
            f"| {np.median(s) / CHUNK:.3f} | {s.sum() / plain.sum():.2f}x "
            f"| {rel:.1e} | {conv:.0%} |"
        )
    print(f"| unprobed | | | | {np.median(plain) / CHUNK:.3f} | 1.00x | | |")


if __name__ == "__main__":
    tyro.cli(main)
