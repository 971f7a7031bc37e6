"""Benchmark suite (issue 7): eoslab against the classic PyTorch + scipy ``eigsh`` approach.

Per workload (all float32, MSE ``mse_half``, full batch):

* ``fc-tanh``: 3072-200-200-10 tanh net on CIFAR-shaped synthetic inputs (5,000 examples);
* ``cnn-tanh``: the CNN preset (2 conv3x3 of width 32, tanh, 2x2 max pool) on 32x32x3 synthetic
  inputs;
* ``mnist-mlp``: the 784-128-10 GELU net on the built-in ``mnist-5k`` (its 4,000 training digits).

Measured: seconds per GD step (inside a 10-step ``lax.scan``, as `eoslab.train` runs them), per
HVP, per certified ($\\le 10^{-3}$ relative) top eigenvalue cold (Lanczos, random start) and warm
(`EigenTracker` along the GD trajectory), and per *probed
step* (GD step + warm sharpness); achieved FLOP rate (XLA's cost analysis of the compiled program
/ time) against the machine's float32 matmul peak (a large ``jnp`` matmul); data-parallel scaling
over 1, 2 and 4 host devices (subprocesses with ``XLA_FLAGS``, `eoslab.parallel.shard_objective`).

Classic: the same networks and weights in PyTorch; gradients and double-backward HVPs
(``torch.autograd.grad`` twice) over physical batches of 1,000 as in locuslab/edge-of-stability,
top eigenvalue by ``scipy.sparse.linalg.eigsh`` on a ``LinearOperator`` from a random (cold)
start. The classic code calls ``eigsh(op, k)`` with ARPACK's default ``tol=0`` (machine
precision); here it gets ``tol=1e-3, which='LA'``, its cheapest setting at our certified accuracy,
so the ratios understate eoslab's lead. The classic approach has no warm start: its probed step is
a GD step plus a cold ``eigsh``. Torch is a benchmark-only extra (``pip install -e .[bench]``);
without it the classic columns are skipped with a note.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse.linalg as sla
from bench_curvature import best_time, hessian_mv  # noqa: E402

from eoslab import Objective
from eoslab.curvature import EigenTracker, HessianOperator, top_eigenpairs
from eoslab.models import create

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
WORKLOADS = ("fc-tanh", "cnn-tanh", "mnist-mlp")
PHYSICAL_BATCH = 1000  # locuslab/edge-of-stability's default physical batch size


# --------------------------------------------------------------------------- workloads
def sizes(quick: bool) -> dict[str, int]:
    """Training examples per workload (quick mode shrinks the synthetic sets)."""
    return {
        "fc-tanh": 1000 if quick else 5000,
        "cnn-tanh": 100 if quick else 1000,
        "mnist-mlp": 4000,
    }


def build(name: str, n: int) -> tuple[Objective, object, object]:
    """``(objective, apply, params)`` of workload ``name`` on ``n`` examples (float32).

    ``vgg11-av`` (GPU check) uses CIFAR-10's first ``n`` training images when eoslab finds them,
    else CIFAR-shaped synthetic inputs."""
    key = jax.random.PRNGKey(0)
    x = None
    if name == "mnist-mlp":
        from eoslab.data import load

        ds = load("mnist-5k")
        x, y = ds.x_train[:n], ds.y_train[:n]
        shape = tuple(ds.input_shape)
    elif name == "fc-tanh-digits":  # fc-tanh's shape on real images: every mnist-5k digit
        from eoslab.data.builtin import mnist_5k
        from eoslab.data.registry import standardize

        xtr, ytr, xte, yte = mnist_5k()
        img = np.concatenate([xtr, xte])[:n].reshape(-1, 28, 28)
        img = np.pad(img, ((0, 0), (2, 2), (2, 2)))  # 32x32
        flat = np.repeat(img[..., None], 3, axis=-1).reshape(len(img), -1)  # 3 equal channels
        x = jnp.asarray(standardize(flat, flat[:1], "global")[0])
        y = jnp.asarray(np.concatenate([ytr, yte])[:n])
        shape = (3072,)
        name = "fc-tanh"
    elif name == "vgg11-av":
        shape = (32, 32, 3)
        try:
            from eoslab.data import load

            ds = load("cifar10", n=n)
            x, y = ds.x_train, ds.y_train
        except Exception:  # noqa: BLE001 - CIFAR absent: synthetic inputs
            x = None
    else:
        shape = (3072,) if name == "fc-tanh" else (32, 32, 3)
    if x is None:
        kx, ky = jax.random.split(jax.random.PRNGKey(1))
        x = jax.random.normal(kx, (n, *shape), jnp.float32)
        y = jax.random.randint(ky, (n,), 0, 10)
    apply, params = create(name, key, shape, 10)
    return Objective.from_model(apply, params, (x, y), "mse_half"), apply, params


_gd_step = eqx.filter_jit(lambda o, w, lr: w - lr * jax.grad(o)(w))
SCAN_STEPS = 10


@eqx.filter_jit
def _gd_scan(obj: Objective, w, lr):
    """``SCAN_STEPS`` GD steps in one ``lax.scan``: how `eoslab.train` runs steps between probes."""
    step = lambda w, _: (w - lr * jax.grad(obj)(w), None)
    return jax.lax.scan(step, w, None, length=SCAN_STEPS)[0]


@eqx.filter_jit
def _hvp_loop(obj: Objective, w, v):
    """Three HVPs chained in a ``fori_loop``: how an HVP runs inside compiled Lanczos."""
    return jax.lax.fori_loop(0, 3, lambda i, u: HessianOperator(obj, w).mv(u) * 1e-2, v)


def _flops(fn, *args) -> float:
    """FLOPs of the compiled program ``fn(*args)`` by XLA's cost analysis (NaN if unknown)."""
    dyn, static = eqx.partition(args, eqx.is_array)
    compiled = jax.jit(lambda d: fn(*eqx.combine(d, static))).lower(dyn).compile()
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    return float((ca or {}).get("flops", float("nan")))


def matmul_peak(quick: bool) -> dict:
    """Best observed float32 matmul rate (FLOP/s) of ``jnp`` on this machine: the 'peak'."""
    n = 2048 if quick else 4096
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    jax.block_until_ready(mm(a, b))
    ts = []
    for _ in range(5 if quick else 10):  # best of: a peak, not a typical rate
        t0 = time.perf_counter()
        jax.block_until_ready(mm(a, b))
        ts.append(time.perf_counter() - t0)
    t = min(ts)
    return {"n": n, "seconds": t, "flops_per_s": 2.0 * n**3 / t}


# --------------------------------------------------------------------------- eoslab side
def bench_eoslab(obj: Objective, quick: bool, probe_steps: int | None = None) -> dict:
    w = obj.w0
    v = jax.random.normal(jax.random.PRNGKey(7), w.shape, w.dtype)
    reps = 3 if quick else 10
    lr0 = jnp.asarray(0.0, w.dtype)
    t_step = best_time(lambda: _gd_scan(obj, w, lr0), reps) / SCAN_STEPS
    t_hvp = best_time(lambda: hessian_mv(obj, w, v), reps)
    t_loop = best_time(lambda: _hvp_loop(obj, w, v), 1 if quick else 3) / 3
    f_step = _flops(lambda o, w: w - 0.1 * jax.grad(o)(w), obj, w)
    f_hvp = _flops(lambda o, w, v: HessianOperator(o, w).mv(v), obj, w, v)

    top_eigenpairs(obj, w, 1, tol=1e-3, key=jax.random.PRNGKey(99))  # compile
    cold_s, cold_mv = [], []
    for i in range(2 if quick else 3):
        t = time.perf_counter()
        r = top_eigenpairs(obj, w, 1, tol=1e-3, key=jax.random.PRNGKey(i))
        jax.block_until_ready(r.values)
        cold_s.append(time.perf_counter() - t)
        cold_mv.append(int(r.matvecs))
    lam0 = float(r.values[0])
    lr = jnp.asarray(1.0 / lam0, w.dtype)

    tracker = EigenTracker(obj, k=1, tol=1e-3)
    tracker.update(w)  # the first update is cold; not counted
    warm_s, warm_mv, probed_s, rel_bound, converged = [], [], [], [], []
    for _ in range(probe_steps or (5 if quick else 40)):
        t0 = time.perf_counter()
        w = jax.block_until_ready(_gd_step(obj, w, lr))
        t1 = time.perf_counter()
        r = tracker.update(w)
        jax.block_until_ready(r.values)
        t2 = time.perf_counter()
        warm_s.append(t2 - t1)
        probed_s.append(t2 - t0)
        warm_mv.append(int(r.matvecs))
        rel_bound.append(float(r.error_bound[0] / abs(r.values[0])))
        converged.append(bool(r.converged))
    return {
        "D": obj.dim,
        "lambda0": lam0,
        "lr": float(lr),
        "step_s": t_step,
        "hvp_s": t_hvp,
        "loop_hvp_s": t_loop,
        "step_flops": f_step,
        "hvp_flops": f_hvp,
        "cold_s": float(np.median(cold_s)),
        "cold_mv": float(np.median(cold_mv)),
        "warm_s": float(np.median(warm_s)),
        "warm_mv_median": float(np.median(warm_mv)),
        "warm_mv_max": int(np.max(warm_mv)),
        "warm_rel_bound_max": float(np.max(rel_bound)),
        "warm_all_converged": all(converged),
        "probed_s": float(np.median(probed_s)),
        "lambda_end": float(r.values[0]),
        "w_end": w,
    }


# --------------------------------------------------------------------------- classic side
def _torch_net(name: str, apply, params):
    """The same network and weights in PyTorch (NCHW convs; features flattened in NHWC order)."""
    import torch
    from torch import nn

    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)
    act = {"tanh": nn.Tanh, "gelu": nn.GELU}[apply.activation]

    def linear(p):
        lin = nn.Linear(*np.shape(p["w"]))
        with torch.no_grad():
            lin.weight.copy_(t(p["w"]).T)
            lin.bias.copy_(t(p["b"]))
        return lin

    if name == "cnn-tanh":

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                convs = []
                for i in range(apply.num_conv):
                    p = params[f"conv{i}"]
                    kh, kw, ci, co = np.shape(p["w"])
                    c = nn.Conv2d(ci, co, kh, padding=kh // 2)
                    with torch.no_grad():
                        c.weight.copy_(t(p["w"]).permute(3, 2, 0, 1))
                        c.bias.copy_(t(p["b"]))
                    convs.append(c)
                self.convs = nn.ModuleList(convs)
                self.head = linear(params["head"])
                self.act = act()

            def forward(self, x):  # x: NHWC
                h = x.permute(0, 3, 1, 2)
                for c in self.convs:
                    h = nn.functional.max_pool2d(self.act(c(h)), 2)
                return self.head(h.permute(0, 2, 3, 1).flatten(1))

        return Net()
    layers = [nn.Flatten()]
    hidden = sorted(k for k in params if k.startswith("dense"))
    for k in hidden:
        layers += [linear(params[k]), act()]
    layers.append(linear(params["head"]))
    return nn.Sequential(*layers)


def bench_classic(name: str, obj: Objective, apply, params, quick: bool) -> dict:
    """GD step, double-backward HVP and cold eigsh in PyTorch, as locuslab/edge-of-stability."""
    import torch
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    net = _torch_net(name, apply, params)
    X = torch.tensor(np.asarray(obj.data["x"]))
    Y = torch.nn.functional.one_hot(torch.tensor(np.asarray(obj.data["y"])).long(), 10).float()
    n = X.shape[0]
    ps = [p for p in net.parameters() if p.requires_grad]
    loss_fn = lambda out, y: 0.5 * ((out - y) ** 2).sum()  # summed, divided by n below

    def batches():
        for i in range(0, n, PHYSICAL_BATCH):
            yield X[i : i + PHYSICAL_BATCH], Y[i : i + PHYSICAL_BATCH]

    def gradient():
        g = torch.zeros(sum(p.numel() for p in ps))
        for xb, yb in batches():
            loss = loss_fn(net(xb), yb) / n
            g += parameters_to_vector([t.contiguous() for t in torch.autograd.grad(loss, ps)])
        return g

    def hvp(vec):
        out = torch.zeros_like(vec)
        for xb, yb in batches():
            loss = loss_fn(net(xb), yb) / n
            grads = torch.autograd.grad(loss, ps, create_graph=True)
            dot = parameters_to_vector([t.contiguous() for t in grads]).mul(vec).sum()
            hv = torch.autograd.grad(dot, ps, retain_graph=True)
            out += parameters_to_vector([t.contiguous() for t in hv])
        return out

    def gd_step(lr):
        g = gradient()
        with torch.no_grad():
            vector_to_parameters(parameters_to_vector(ps) - lr * g, ps)

    def timed(fn, reps):
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return float(np.min(ts))  # best of reps, as best_time

    d = sum(p.numel() for p in ps)
    vec = torch.randn(d)
    reps = 3 if quick else 10
    t_step = timed(lambda: gd_step(0.0), reps)
    t_hvp = timed(lambda: hvp(vec), reps)

    count = [0]

    def mv(v):
        count[0] += 1
        return hvp(torch.tensor(np.asarray(v).ravel(), dtype=torch.float32)).numpy()

    op = sla.LinearOperator((d, d), matvec=mv, dtype=np.float32)
    eig_s, eig_mv, lams = [], [], []
    for i in range(1 if quick else 2):
        count[0] = 0
        v0 = np.random.default_rng(i).normal(size=d).astype(np.float32)
        t = time.perf_counter()
        lam = sla.eigsh(op, k=1, which="LA", v0=v0, tol=1e-3, return_eigenvectors=False)
        eig_s.append(time.perf_counter() - t)
        eig_mv.append(count[0])
        lams.append(float(lam[-1]))
    return {
        "D": d,
        "step_s": t_step,
        "hvp_s": t_hvp,
        "eig_s": float(np.median(eig_s)),
        "eig_mv": float(np.median(eig_mv)),
        "lambda0": lams[0],
        "probed_s": t_step + float(np.median(eig_s)),
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------- scaling
_CHILD = """
import json, sys, time
sys.path.insert(0, {here!r})
import jax, jax.numpy as jnp
import bench_suite as b
from eoslab.parallel import shard_objective
from bench_curvature import hessian_mv
obj, _, _ = b.build("fc-tanh", {n})
obj = shard_objective(obj, devices={d})
w = obj.w0
v = jnp.ones_like(w)
lr = jnp.asarray(0.0, w.dtype)
step = b.best_time(lambda: b._gd_step(obj, w, lr), {reps})
t_hvp = b.best_time(lambda: hessian_mv(obj, w, v), {reps})
print("RESULT" + json.dumps({{"devices": len(jax.devices()), "step_s": step, "hvp_s": t_hvp}}))
"""


def scaling(n: int, quick: bool) -> list[dict]:
    """GD step and HVP time of ``fc-tanh`` sharded over 1, 2, 4 host devices (one process each)."""
    out = []
    for d in (1, 2, 4):
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={d}"
        env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
        env["JAX_PLATFORMS"] = "cpu"
        code = _CHILD.format(here=str(HERE), n=n, d=d, reps=3 if quick else 10)
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
        if proc.returncode or not lines:
            out.append({"devices": d, "error": proc.stderr[-500:]})
        else:
            out.append(json.loads(lines[-1][6:]))
    return out


# --------------------------------------------------------------------------- driver
def run(
    quick: bool = False,
    workloads: dict[str, int] | None = None,
    probe_steps: int | None = None,
    scale: bool = True,
) -> dict:
    """Every measurement of the suite; ``quick`` shrinks sizes and repetitions.

    ``workloads`` (name -> examples) replaces the default set (`sizes`); the classic side runs for
    the default workloads only; ``probe_steps`` sets the GD steps with warm probes."""
    try:
        import torch

        torch_note = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        torch = None
        torch_note = "torch not installed (pip install -e '.[bench]'): classic columns skipped"
    result = {
        "quick": quick,
        "load_start": os.getloadavg(),
        "backend": f"{jax.default_backend()} x{len(jax.devices())}",
        "peak": matmul_peak(quick),
        "torch": torch_note,
        "workloads": {},
    }
    for name, n in (workloads or sizes(quick)).items():
        print(f"  bench_suite: {name} (n={n}) ...", flush=True)
        obj, apply, params = build(name, n)
        e = bench_eoslab(obj, quick, probe_steps)
        e.pop("w_end")
        classic = torch is not None and name in WORKLOADS and jax.default_backend() == "cpu"
        c = bench_classic(name, obj, apply, params, quick) if classic else None
        result["workloads"][name] = {"n": n, "eoslab": e, "classic": c}
    result["scaling"] = []
    if scale and jax.default_backend() == "cpu":
        print("  bench_suite: scaling ...", flush=True)
        result["scaling"] = scaling(sizes(quick)["fc-tanh"], quick)
    result["load_end"] = os.getloadavg()
    return result


def _ratio(a: float | None, b: float) -> str:
    return "" if a is None else f"**{a / b:.1f}x**"


def to_markdown(r: dict) -> str:
    peak = r["peak"]["flops_per_s"]
    lines = [
        "### Benchmark suite: eoslab vs the classic approach" + (" (quick)" if r["quick"] else ""),
        "",
        f"Backend {r.get('backend', '?')}; float32 matmul peak (jnp, {r['peak']['n']}^2): "
        f"{peak / 1e9:.1f} GFLOP/s. "
        f"Load average (1/5/15 min) at start {', '.join(f'{x:.1f}' for x in r['load_start'])}, "
        f"at end {', '.join(f'{x:.1f}' for x in r['load_end'])} (shared machine). "
        f"Classic: {r['torch']}; double-backward HVP over physical batches of {PHYSICAL_BATCH}, "
        "scipy eigsh (which='LA', tol=1e-3) cold start. Step and HVP times are the best of "
        "repeated runs on both sides. eoslab: Lanczos with certified 1e-3 "
        "relative error; warm = EigenTracker along GD at lr = 1/lambda_1(w0).",
        "",
        "| workload | measure | eoslab | classic | classic / eoslab |",
        "|---|---|---|---|---|",
    ]
    for name, w in r["workloads"].items():
        e, c = w["eoslab"], w["classic"]
        label = f"{name} (N={w['n']}, D={e['D']})"
        g = lambda k: None if c is None else c[k]
        fmt = lambda x, p=4: "" if x is None else f"{x:.{p}f}"
        rows = [
            ("GD step, in a scan as the runner (s)", e["step_s"], g("step_s")),
            ("HVP (s)", e["hvp_s"], g("hvp_s")),
            ("HVP inside a compiled loop (s)", e["loop_hvp_s"], g("hvp_s")),
            ("certified lambda_1, cold (s)", e["cold_s"], g("eig_s")),
            ("certified lambda_1, warm (s)", e["warm_s"], g("eig_s")),
            ("probed step: GD + lambda_1 (s)", e["probed_s"], g("probed_s")),
        ]
        for i, (m, a, b) in enumerate(rows):
            lines.append(
                f"| {label if i == 0 else ''} | {m} | {fmt(a)} | {fmt(b)} | {_ratio(b, a)} |"
            )
        c_mv = "" if c is None else f"{c['eig_mv']:.0f}"
        c_mv_ratio = "" if c is None else f"{c['eig_mv'] / e['warm_mv_median']:.1f}x (warm)"
        lines.append(
            f"| | HVPs per lambda_1: cold / warm median (max) | {e['cold_mv']:.0f} / "
            f"{e['warm_mv_median']:.0f} ({e['warm_mv_max']}) | {c_mv} | {c_mv_ratio} |"
        )
        rate_s, rate_h = e["step_flops"] / e["step_s"], e["hvp_flops"] / e["hvp_s"]
        lines.append(
            f"| | achieved GFLOP/s, GD step / HVP (% of peak) | "
            f"{rate_s / 1e9:.1f} ({100 * rate_s / peak:.0f}%) / {rate_h / 1e9:.1f} "
            f"({100 * rate_h / peak:.0f}%) | "
            + (
                ""
                if c is None
                else f"{e['step_flops'] / c['step_s'] / 1e9:.1f} / "
                f"{e['hvp_flops'] / c['hvp_s'] / 1e9:.1f}"
            )
            + " | |"
        )
        lines.append(
            f"| | lambda_1(w0): eoslab / classic; warm certified bound (max rel.) | "
            f"{e['lambda0']:.4g} | {fmt(g('lambda0'), 4)} | "
            f"bound {e['warm_rel_bound_max']:.1e}, all converged: "
            f"{e['warm_all_converged']} |"
        )
    lines += [
        "",
        "Data-parallel scaling (fc-tanh, sharded over host devices, one process):",
        "",
        "| devices | GD step (s) | HVP (s) | speed-up (HVP) |",
        "|---|---|---|---|",
    ]
    base = next((s["hvp_s"] for s in r["scaling"] if "hvp_s" in s), None)
    for s in r["scaling"]:
        if "error" in s:
            lines.append(f"| {s['devices']} | failed | | |")
            continue
        lines.append(
            f"| {s['devices']} | {s['step_s']:.4f} | {s['hvp_s']:.4f} | {base / s['hvp_s']:.2f}x |"
        )
    lines += [
        "",
        "Classic GFLOP/s counts eoslab's (XLA) FLOPs for the same computation. Host "
        f"devices share this machine's {os.cpu_count()} cores, so CPU scaling measures "
        "the overhead of sharding, not added compute.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    res = run(quick="--quick" in sys.argv)
    print(to_markdown(res))
