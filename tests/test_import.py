"""``import eoslab`` stays light: the heavy dependencies load on first use, not at import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ["cvxpy", "matplotlib", "sklearn", "diffrax", "pandas", "pyarrow", "optax", "scipy"]


def _loaded_after(*steps: str) -> list[list[str]]:
    """The heavy packages in ``sys.modules`` after each statement, in a fresh interpreter."""
    lines = ["import json, sys", f"heavy = set({HEAVY!r})", "seen = []"]
    for step in steps:
        lines += [step, "seen.append(sorted({m.split('.')[0] for m in sys.modules} & heavy))"]
    lines.append("print(json.dumps(seen))")
    out = subprocess.run(
        [sys.executable, "-c", "\n".join(lines)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.subprocess
def test_import_eoslab_loads_no_heavy_dependency():
    (after_import,) = _loaded_after("import eoslab")
    assert after_import == []


@pytest.mark.subprocess
def test_lazy_subpackages_load_on_first_use():
    import eoslab

    assert {"experiments", "report", "reproduce"} <= set(dir(eoslab))
    base, experiments, report = _loaded_after(
        "import eoslab",
        "eoslab.experiments.Experiment(steps=5)",
        "eoslab.report.plot_runs",
    )
    assert base == [] and experiments == []
    assert "pandas" in report  # loaded when asked for, not before
