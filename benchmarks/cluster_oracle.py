"""How well can *any* history predict the next step's top eigenvector? An oracle check.

`StepTracker` certifies lambda_1 with one Hessian product when the vector it predicts from the
last steps' vectors has a residual below the tolerance. This script gives the predictors the
best history there is: the exact top eigenvector $v_1(w_s)$ of every past step (Lanczos at
1e-6, top 10), and reports the relative residual $\\|Hp-\\theta p\\|/\\theta$ of each prediction
$p$ at the new point, from true products. A step certifies in one product only if some
prediction's residual is below ``tol`` (1e-3); where even the oracle's are far above it, every
tracker that starts from a history needs further rounds there.

    cd benchmarks && ../.venv/bin/python cluster_oracle.py --workload="fc-tanh 5k" --start=170

Prints a markdown table (about a minute a step on fc-tanh 5k on 2 cores).
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np
import tyro
from bench_curvature import hessian_mv

from eoslab.curvature.eigen import top_eigenpairs
from eoslab.dynamics.optimizer import Optimizer
from eoslab.dynamics.rules import GD

HISTORY = 5  # the predictors read v_(t-1) ... v_(t-5), as StepTracker keeps them

#: h[i] = v_(t-1-i): each maps the history to a prediction of v_t
PREDICTORS = {
    "last": lambda h: h[0],
    "line": lambda h: 2 * h[0] - h[1],
    "line + period 2": lambda h: h[0] + h[1] - h[2],
    "same parity": lambda h: h[1],
    "same-parity line": lambda h: 2 * h[1] - h[3],
}


def _recurrence(h: list[np.ndarray]) -> np.ndarray:
    r"""$h_0+c_1\Delta_0+c_2\Delta_1$ with $\Delta_j\approx c_1\Delta_{j+1}+c_2\Delta_{j+2}$ fitted
    (least squares) over $j=0,1$: the tracker's fitted candidate, without its clipping."""
    D = [h[i] - h[i + 1] for i in range(len(h) - 1)]
    A = np.concatenate([np.stack(D[j + 1 : j + 3], 1) for j in range(2)])
    c = np.linalg.lstsq(A, np.concatenate(D[:2]), rcond=None)[0]
    return h[0] + c[0] * D[0] + c[1] * D[1]


def main(workload: str = "fc-tanh 5k", start: int = 170, steps: int = 12, k: int = 10) -> None:
    """``steps`` GD steps from step ``start`` of the bench's ``workload``."""
    import bench_every_step

    obj, lr, _ = bench_every_step.workloads(False)[workload]()
    proc = Optimizer(GD(lr))
    state = proc.scan(obj, proc.init(obj, obj.w0), start).state
    predictors = {**PREDICTORS, "fitted recurrence": _recurrence}
    hist: list[np.ndarray] = []
    prev = None
    print(
        f"| step | top {k} eigenvalues / (2/lr) | 1 - |v1 . v1(t-1)| | sin angle, top-9 "
        "subspace vs t-1 | " + " | ".join(predictors) + " |"
    )
    print("|---" * (4 + len(predictors)) + "|")
    for t in range(steps):
        w = proc.point(state)
        t0 = time.perf_counter()
        res = top_eigenpairs(obj, w, k, tol=1e-6, v0=prev)
        V = np.asarray(res.vectors, np.float64)
        v1 = V[:, 0] if not hist or V[:, 0] @ hist[0] >= 0 else -V[:, 0]
        cells = [f"{start + t}", " ".join(f"{x * lr / 2:.3f}" for x in np.asarray(res.values))]
        if prev is None:
            cells += ["", ""]
        else:
            P = np.asarray(prev, np.float64)[:, :9]
            cells.append(f"{1 - abs(v1 @ hist[0]):.1e}")
            cells.append(f"{np.linalg.norm(V[:, :9] - P @ (P.T @ V[:, :9]), 2):.2f}")
        for f in predictors.values():
            if len(hist) < HISTORY:
                cells.append("")
                continue
            p = f(hist)
            p = jnp.asarray(p / np.linalg.norm(p), w.dtype)
            hp = hessian_mv(obj, w, p)
            theta = jnp.vdot(p, hp)
            cells.append(f"{float(jnp.linalg.norm(hp - theta * p) / theta):.1e}")
        print(
            "| " + " | ".join(cells) + f" |  <!-- {time.perf_counter() - t0:.0f} s -->", flush=True
        )
        hist = [v1] + hist[: HISTORY - 1]
        prev = res.vectors
        state = proc.scan(obj, state, 1).state


if __name__ == "__main__":
    tyro.cli(main)
