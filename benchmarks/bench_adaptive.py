"""The adaptive probe schedule against fixed ones at equal cost (issue 27, item 3), on eos-gd.

The eos-gd preset (fc-tanh 40-200-200-10 on 4,000 MNIST-1D examples, MSE, float32, GD lr 0.1,
2/lr = 20) is run for ``--steps`` steps:

* the reference: the certified sharpness at every step, inside the compiled steps
  (``Probes(every_step=True)``), cached in ``--cache`` (it takes minutes);
* each schedule: one call of `eoslab.runner.run` with the host sharpness probe (warm-started
  Lanczos, tol 1e-3; the alignment off), fixed every N steps or ``schedule="adaptive"`` with a
  budget of Hessian products per step (its longest gap ``--longest``), each cached too.

GD's trajectory does not depend on when it is probed (checked: the losses at the probed steps
equal the reference's), so every schedule sees the same curve. From each schedule's probed
values the curve lambda_1(t) is rebuilt at every step by linear interpolation and compared with
the reference: the median, 95th percentile and worst relative error over all steps, and the
median in progressive sharpening (before the reference's onset) and at the edge (after it);
the Hessian products the certified probe spent (all of them, the first cold solve included);
and the onset: the first probed step with lambda_1 >= 2/lr, against the reference's first step.

Usage: python benchmarks/bench_adaptive.py [--steps 2500] [--cache /tmp/eoslab_adaptive]
       [--longest 200] [--fixed 10 20 30 50] [--fractions 0.27 0.2] [--unlimited]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from eoslab.dynamics.optimizer import Optimizer
from eoslab.dynamics.rules import GD
from eoslab.experiments.build import build
from eoslab.experiments.presets import get_preset
from eoslab.runner import Probes, run

LR = 0.1
OFF = dict(alignment=False, effective=False, distances=False)


def _objective():
    return build(get_preset("eos-gd")).objective


def _cached(path: Path, make) -> dict[str, np.ndarray]:
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return dict(z)
    t = time.perf_counter()
    out = make()
    out["seconds"] = np.asarray(time.perf_counter() - t)
    np.savez(path, **out)
    return out


def reference(obj, steps: int, cache: Path) -> dict[str, np.ndarray]:
    """lambda_1 and the loss at every step, certified in the compiled steps."""

    def make():
        probes = Probes(every_step=True, **OFF)
        m = run(Optimizer(GD(LR)), obj, steps, probe_every=steps, probes=probes).metrics
        return {
            "step": m["step"].to_numpy(),
            "sharpness": m["sharpness"].to_numpy(float),
            "loss": m["loss"].to_numpy(float),
            "matvecs": m["sharpness_matvecs"].to_numpy(float),
            "error": m["sharpness_error"].to_numpy(float),
        }

    return _cached(cache / f"ref_every_step_{steps}.npz", make)


def schedule(obj, steps: int, cache: Path, name: str, probe_every: int, **kw) -> dict:
    """The probed steps, values, products and reasons of one schedule."""

    def make():
        probes = Probes(**OFF, **kw)
        m = run(Optimizer(GD(LR)), obj, steps, probe_every=probe_every, probes=probes).metrics
        p = m[m["sharpness"].notna()]
        reasons = p["probe_reason"] if "probe_reason" in p else ["fixed"] * len(p)
        return {
            "step": p["step"].to_numpy(),
            "sharpness": p["sharpness"].to_numpy(float),
            "loss": p["loss"].to_numpy(float),
            "matvecs": p["sharpness_matvecs"].to_numpy(float),
            "reason": np.asarray(list(reasons), dtype=str),
        }

    return _cached(cache / f"{name}_{steps}.npz", make)


def score(ref: dict, probed: dict) -> dict[str, float]:
    t, lam = ref["step"], ref["sharpness"]
    onset = int(t[np.argmax(lam >= 2 / LR)]) if np.any(lam >= 2 / LR) else None
    rebuilt = np.interp(t, probed["step"], probed["sharpness"])
    err = np.abs(rebuilt - lam) / lam
    above = probed["step"][probed["sharpness"] >= 2 / LR]
    same = np.array_equal(probed["loss"], ref["loss"][probed["step"]])
    out = {
        "probes": len(probed["step"]),
        "products": float(np.sum(probed["matvecs"])),
        "median": float(np.median(err)),
        "p95": float(np.quantile(err, 0.95)),
        "worst": float(np.max(err)),
        "same_trajectory": same,
        "onset": onset,
        "detected": int(above[0]) if above.size else None,
    }
    if onset is not None:
        out["median_sharpening"] = float(np.median(err[t < onset]))
        out["median_edge"] = float(np.median(err[t >= onset]))
    return out


def main(
    steps: int,
    cache: Path,
    longest: int,
    fixed: list[int],
    fractions: list[float],
    unlimited: bool = False,
) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    obj = _objective()
    ref = reference(obj, steps, cache)
    print(f"reference: {steps} steps, every step certified, {float(ref['seconds']):.0f} s")
    results: dict[str, dict] = {}
    for n in fixed:
        res = schedule(obj, steps, cache, f"fixed{n}", n)
        results[f"fixed, every {n}"] = score(ref, res)
        print(f"fixed every {n}: {float(res['seconds']):.0f} s", flush=True)
    base = results["fixed, every 10"]["products"] if 10 in fixed else None
    for frac in fractions:
        budget = frac * base / steps
        name = f"adaptive_b{budget:.4f}_l{longest}"
        res = schedule(obj, steps, cache, name, longest, schedule="adaptive", budget=budget)
        label = f"adaptive, budget {budget:.3f}/step ({frac:.2f} x every 10), longest {longest}"
        results[label] = score(ref, res)
        reasons, counts = np.unique(res["reason"], return_counts=True)
        results[label]["reasons"] = ", ".join(
            f"{r} {c}" for r, c in zip(reasons, counts, strict=True)
        )
        print(f"{label}: {float(res['seconds']):.0f} s", flush=True)
    if unlimited:
        res = schedule(obj, steps, cache, f"adaptive_none_l{longest}", longest, schedule="adaptive")
        label = f"adaptive, no budget, longest {longest}"
        results[label] = score(ref, res)
        reasons, counts = np.unique(res["reason"], return_counts=True)
        results[label]["reasons"] = ", ".join(
            f"{r} {c}" for r, c in zip(reasons, counts, strict=True)
        )

    print()
    onset = next(iter(results.values()))["onset"]
    print(
        f"eos-gd, {steps} steps, 2/lr = {2 / LR:g}; reference onset (first step with "
        f"lambda_1 >= 2/lr): step {onset}"
    )
    print()
    cols = [
        "schedule",
        "probes",
        "Hessian products",
        "x every 10",
        "median rel. error",
        "p95",
        "worst",
        "median: sharpening / edge",
        "onset detected (late by)",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for name, r in results.items():
        rel = f"{r['products'] / base:.2f}" if base else "-"
        det = "never" if r["detected"] is None else f"{r['detected']} (+{r['detected'] - onset})"
        print(
            f"| {name} | {r['probes']} | {r['products']:.0f} | {rel} | {100 * r['median']:.2f}% | "
            f"{100 * r['p95']:.2f}% | {100 * r['worst']:.1f}% | "
            f"{100 * r.get('median_sharpening', np.nan):.2f}% / "
            f"{100 * r.get('median_edge', np.nan):.2f}% | {det} |"
        )
    print()
    for name, r in results.items():
        if "reasons" in r:
            print(f"- {name}: probes by reason: {r['reasons']}")
    print()
    print(
        "Same trajectory as the reference at every probed step: "
        + ", ".join(f"{n}: {r['same_trajectory']}" for n, r in results.items())
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/eoslab_adaptive"))
    ap.add_argument("--longest", type=int, default=100)
    ap.add_argument("--fixed", type=int, nargs="*", default=[10, 20, 30, 50])
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.27, 0.2])
    ap.add_argument("--unlimited", action="store_true", help="also the schedule without budget")
    args = ap.parse_args()
    main(args.steps, args.cache, args.longest, args.fixed, args.fractions, args.unlimited)
