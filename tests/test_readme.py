"""The README's Python examples run as written and print numbers that independent computations
(closed forms, a NumPy GD loop, SciPy's ODE solver, a dense ``jax.hessian``) reproduce; its
command lines name real subcommands, presets, experiments and flags."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _exec(i: int, capsys) -> tuple[dict, str]:
    ns: dict = {"__name__": "readme"}
    exec(compile(BLOCKS[i], f"README.md python block {i + 1}", "exec"), ns)
    out = capsys.readouterr().out
    assert out.strip(), "a README example printed nothing"
    return ns, out


def _valley_hessian(x: float, y: float) -> np.ndarray:
    """The Hessian of L = (1 + x^2) y^2, by hand."""
    return np.array([[2 * y * y, 4 * x * y], [4 * x * y, 2 * (1 + x * x)]])


def _number(pattern: str, out: str) -> float:
    match = re.search(pattern, out, flags=re.M)
    assert match, f"{pattern!r} not in the printed output:\n{out}"
    return float(match.group(1))


def test_there_are_three_python_examples():
    assert len(BLOCKS) == 3


def test_curvature_and_limiting_flow_example(capsys):
    _, out = _exec(0, capsys)
    exact = np.linalg.eigvalsh(_valley_hessian(2.0, 0.3))[-1]
    assert _number(r"lambda_1 = (\S+),", out) == pytest.approx(exact, rel=1e-5)
    # Gradient flow keeps ln x + x^2/2 - y^2/2 fixed, so Phi(2, 0.3) = (x0, 0) with
    # ln x0 + x0^2/2 = ln 2 + 2 - 0.045; normalized GD's limiting flow on {y = 0} is
    # dx/dtau = -(1/4) d/dx log(2(1 + x^2)), which lowers ln x + x^2/2 by tau/2.
    target = np.log(2.0) + 2.0 - 0.3**2 / 2 - 1.0 / 2
    x_tau = brentq(lambda x: np.log(x) + x * x / 2 - target, 0.1, 3.0)
    X = json.loads(re.search(r"X\(tau=1\) = (\[[^\]]*\])", out).group(1))
    assert X[0] == pytest.approx(x_tau, abs=1e-3) and abs(X[1]) < 1e-6
    assert _number(r"lambda_1\(X\) = (\S+)", out) == pytest.approx(2 * (1 + x_tau**2), rel=1e-3)


def test_lockstep_example(capsys):
    ns, out = _exec(1, capsys)
    lr, steps = 0.05, 200
    w = np.array([2.0, 0.3])
    for _ in range(steps):  # GD by hand
        x, y = w
        w = w - lr * np.array([2 * x * y * y, 2 * (1 + x * x) * y])
    flow = solve_ivp(
        lambda t, v: [-2 * v[0] * v[1] ** 2, -2 * (1 + v[0] ** 2) * v[1]],
        (0.0, lr * steps),
        [2.0, 0.3],
        method="Radau",
        rtol=1e-10,
        atol=1e-12,
    )
    w_gf = flow.y[:, -1]
    printed = {
        name: np.array(json.loads(vec))
        for name, vec in re.findall(r"^(\w+): w = (\[[^\]]*\])", out, flags=re.M)
    }
    np.testing.assert_allclose(printed["gd"], w, atol=1e-5)
    np.testing.assert_allclose(printed["gf"], w_gf, atol=1e-4)
    row = re.search(rf"^\d+\s+{steps}\s+gd\s+(\S+)\s+(\S+)", out, flags=re.M)
    assert row, out
    assert float(row.group(1)) == pytest.approx(np.linalg.eigvalsh(_valley_hessian(*w))[-1], 1e-4)
    assert float(row.group(2)) == pytest.approx(np.linalg.norm(w - w_gf), rel=2e-2)
    assert ns["result"].status == "completed"


def test_own_model_example(capsys):
    ns, out = _exec(2, capsys)
    objective, result = ns["objective"], ns["result"]
    x, y = np.asarray(ns["x"], np.float64), np.asarray(ns["y"])
    w = np.asarray(result.point(), np.float64)
    w1, w2 = w[: 5 * 16].reshape(5, 16), w[5 * 16 :].reshape(16, 3)  # ravel order: w1, w2
    outputs = np.tanh(x @ w1) @ w2
    row = re.search(r"^\d+\s+200\s+(\S+)\s+(\S+)\s+(\S+)$", out, flags=re.M)
    assert row, out
    loss, sharpness, accuracy = (float(g) for g in row.groups())
    assert loss == pytest.approx(0.5 * np.mean(np.sum((outputs - np.eye(3)[y]) ** 2, 1)), 1e-4)
    assert accuracy == pytest.approx(np.mean(np.argmax(outputs, 1) == y), abs=1e-6)
    dense = np.asarray(jax.jit(jax.hessian(objective))(result.point()), np.float64)
    assert sharpness == pytest.approx(np.linalg.eigvalsh(0.5 * (dense + dense.T))[-1], rel=2e-3)


def _help(argv: list[str], capsys) -> str:
    from eoslab.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_readme_command_lines_are_real(capsys):
    from eoslab import reproduce
    from eoslab.cli import COMMANDS
    from eoslab.experiments import DEFAULT_PRESET, PRESETS

    text = README.read_text()
    assert "make demo" in text and "make test" in text
    lines = re.findall(r"^eoslab (\w+)(.*?)(?:\s+#.*)?$", text, flags=re.M)
    assert lines and {cmd for cmd, _ in lines} <= set(COMMANDS)
    for cmd, rest in lines:
        args = rest.split()
        flags = [a for a in args if a.startswith("--") and a != "--help"]
        if cmd == "run":
            presets = [a for a in args if a in PRESETS]
            assert presets or "--config" in args, f"eoslab run{rest}: no known preset"
            preset = presets[0] if presets else DEFAULT_PRESET  # a config's fields: any preset's
            helps = _help(["run"], capsys) + _help(["run", preset], capsys)
        else:
            helps = _help([cmd], capsys)
        if cmd == "reproduce" and args and not args[0].startswith("--"):
            assert args[0] in reproduce.REPRODUCTIONS
        for flag in flags:
            assert flag in helps, f"eoslab {cmd}{rest}: {flag} is not a flag"
