"""Runner benchmark: steps per second of full-batch GD with the sharpness probed every step, every
10 steps, and never, on the `eos-gd` preset (fc-tanh 40-200-200-10, 4,000 MNIST-1D examples, MSE),
and the fraction of the time spent in curvature.

Falls back to a same-sized synthetic tanh net on random data when the dataset is unavailable.

Usage: python benchmarks/bench_runner.py [--quick]
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def _synthetic_objective(n: int = 4000):
    from eoslab import Objective

    rng = np.random.default_rng(0)
    sizes = [(40, 200), (200, 200), (200, 10)]
    x = jnp.asarray(rng.normal(size=(n, 40)), jnp.float32)
    y = jnp.asarray(np.eye(10)[rng.integers(0, 10, n)], jnp.float32)
    params = [
        (jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]), jnp.float32), jnp.zeros(s[1], jnp.float32))
        for s in sizes
    ]

    def loss(p):
        h = x
        for i, (W, b) in enumerate(p):
            h = h @ W + b
            if i < len(p) - 1:
                h = jnp.tanh(h)
        return 0.5 * jnp.mean(jnp.sum((h - y) ** 2, axis=-1))

    return Objective.from_pytree(loss, params)


def _objective():
    """The eos-gd preset's objective, or a same-sized synthetic one; and its description."""
    try:
        from eoslab.experiments import PRESETS, build

        built = build(PRESETS["eos-gd"])
        return built.objective, "eos-gd preset: fc-tanh on 4,000 MNIST-1D examples, MSE"
    except Exception as exc:  # noqa: BLE001 - any missing piece: fall back
        return _synthetic_objective(), f"synthetic fc-tanh 40-200-200-10, n=4000 ({exc})"


def _timed(obj, steps: int, probe_every: int, sharpness: bool) -> float:
    from eoslab.dynamics import rules
    from eoslab.runner import Probes, train

    probes = Probes(sharpness=sharpness, alignment=False)
    # warm-up: compile the scan of this length and the probes
    train(obj, rules.GD(0.1), min(steps, 2 * probe_every), probe_every=probe_every, probes=probes)
    t0 = time.perf_counter()
    run = train(obj, rules.GD(0.1), steps, probe_every=probe_every, probes=probes)
    jax.block_until_ready(run.point())
    return time.perf_counter() - t0


def run(quick: bool = False) -> list[dict]:
    """Rows: setting, steps, seconds, steps/s, fraction of the time in curvature probes."""
    obj, what = _objective()
    n_every1 = 20 if quick else 100
    n_every10 = 100 if quick else 500
    rows = []
    t_plain10 = _timed(obj, n_every10, 10, sharpness=False)
    t_plain1 = _timed(obj, n_every1, 1, sharpness=False)
    for label, steps, every, t_plain in (
        ("sharpness every step", n_every1, 1, t_plain1),
        ("sharpness every 10 steps", n_every10, 10, t_plain10),
    ):
        t = _timed(obj, steps, every, sharpness=True)
        rows.append(
            {
                "setting": label,
                "problem": what,
                "dim": obj.dim,
                "steps": steps,
                "seconds": t,
                "steps_per_s": steps / t,
                "curvature_fraction": max(0.0, (t - t_plain) / t),
            }
        )
    rows.append(
        {
            "setting": "no probes (10-step scans)",
            "problem": what,
            "dim": obj.dim,
            "steps": n_every10,
            "seconds": t_plain10,
            "steps_per_s": n_every10 / t_plain10,
            "curvature_fraction": 0.0,
        }
    )
    return rows


def to_markdown(rows: list[dict]) -> str:
    out = ["## Runner: full-batch GD steps per second with curvature probes", ""]
    if rows:
        out.append(f"Problem: {rows[0]['problem']} (D = {rows[0]['dim']:,}).")
        out.append("")
    out.append("| setting | steps | seconds | steps/s | time in curvature |")
    out.append("|---|---:|---:|---:|---:|")
    for r in rows:
        out.append(
            f"| {r['setting']} | {r['steps']} | {r['seconds']:.2f} | "
            f"{r['steps_per_s']:.1f} | {100 * r['curvature_fraction']:.0f}% |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(to_markdown(run(quick="--quick" in sys.argv)))
