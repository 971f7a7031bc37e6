"""`make bench`: run every benchmark and write a Markdown table to benchmarks/results/.

Usage: python benchmarks/run.py [--quick]
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path

import jax

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}; {os.cpu_count()} cores; jax {jax.__version__} on "
        f"{jax.default_backend()} ({len(jax.devices())} device(s)); "
        f"Python {platform.python_version()}"
    )


def main() -> None:
    quick = "--quick" in sys.argv
    import bench_curvature

    parts = [f"# eoslab benchmarks ({dt.date.today()})", "", f"Machine: {machine()}", ""]
    print("running curvature benchmark ...", flush=True)
    parts.append(bench_curvature.to_markdown(bench_curvature.run(quick=quick)))
    import bench_suite

    print("running benchmark suite (eoslab vs classic) ...", flush=True)
    parts.append(bench_suite.to_markdown(bench_suite.run(quick=quick)))
    import bench_every_step

    print("running the every-step sharpness benchmark ...", flush=True)
    parts.append(bench_every_step.to_markdown(bench_every_step.run(quick=quick)))
    try:
        import bench_runner
    except ImportError:
        bench_runner = None
    if bench_runner is not None:
        print("running runner benchmark ...", flush=True)
        parts.append(bench_runner.to_markdown(bench_runner.run()))
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    text = "\n".join(parts)
    path = out / ("latest-quick.md" if quick else "latest.md")
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    print(text)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
