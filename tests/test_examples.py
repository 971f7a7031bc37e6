"""The "your own model" examples run, and the sharpness they print is the top eigenvalue of the
dense Hessian (``jax.hessian``, all D x D entries) at the run's final point."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run_example(name: str, capsys) -> tuple[dict, object, str]:
    ns = runpy.run_path(str(EXAMPLES / name), run_name="example")  # not __main__: no run yet
    run = ns["main"](steps=50, lr=0.3, probe_every=25)
    return ns, run, capsys.readouterr().out


def _check_printed_sharpness(ns: dict, run, out: str) -> None:
    assert run.status == "completed" and run.step == 50
    table = re.findall(r"^\s+(\d+)\s+\S+", out, flags=re.M)
    assert [int(s) for s in table] == [0, 25, 50]
    printed = float(re.search(r"final sharpness (\S+) vs 2/lr = (\S+)", out).group(1))
    assert re.search(r"vs 2/lr = 6\.66667", out)
    objective = ns["make_objective"]()  # the same start: the example is deterministic
    w = jnp.asarray(run.point(), objective.dtype)
    dense = np.asarray(jax.jit(jax.hessian(objective))(w), np.float64)
    assert dense.shape == (objective.dim, objective.dim)
    lam = np.linalg.eigvalsh(0.5 * (dense + dense.T))[-1]
    assert printed == pytest.approx(lam, rel=2e-3)
    # and the first printed row is the start: the loss there, by the objective itself
    first_loss = float(re.search(r"^\s+0\s+(\S+)", out, flags=re.M).group(1))
    assert first_loss == pytest.approx(float(objective(objective.w0)), rel=1e-3)


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
def test_equinox_example(capsys):
    ns, run, out = _run_example("equinox_model.py", capsys)
    assert out.startswith("Equinox MLP, 1251 parameters")
    _check_printed_sharpness(ns, run, out)


def test_flax_example(capsys):
    pytest.importorskip("flax")
    ns, run, out = _run_example("flax_model.py", capsys)
    assert out.startswith("Flax MLP, 1251 parameters")
    _check_printed_sharpness(ns, run, out)
    # the accuracy column is on by default for integer labels: argmax of the outputs, by hand
    objective = ns["make_objective"]()
    x, y = ns["spirals"]()
    params = objective.unravel(jnp.asarray(run.point(), objective.dtype))
    outputs = np.asarray(ns["MLP"]().apply(params, jnp.asarray(x)))
    printed_acc = float(re.search(r"^\s+50\s+\S+\s+(\S+)", out, flags=re.M).group(1))
    assert printed_acc == pytest.approx(np.mean(np.argmax(outputs, axis=1) == y), abs=1e-3)
