"""The ``transformer`` preset: its model options, and the same numbers on 4 host CPU devices as on
one (``--devices 4``: the sequences sharded over a mesh, padded with zero-weight sequences when
their number is not a multiple of 4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eoslab.experiments import PRESETS, Experiment, ModelProblem, build, from_dict, to_dict

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _transformer_params(v: int, t: int, d: int, layers: int, m: int) -> int:
    """Count of a pre-LN decoder's parameters, layer by layer: embeddings (V + T) d; per block
    two LayerNorms (2d each), qkv (d+1)3d, output (d+1)d, MLP (d+1)m + (m+1)d; final LN 2d and
    head (d+1)V."""
    block = 2 * 2 * d + (d + 1) * 3 * d + (d + 1) * d + (d + 1) * m + (m + 1) * d
    return (v + t) * d + layers * block + 2 * d + (d + 1) * v


def test_the_preset_and_its_model_options():
    exp = PRESETS["transformer"]
    p = exp.problem
    assert p.model == "transformer" and p.dataset.startswith("sort-")
    assert from_dict(to_dict(exp)) == exp and exp.batch_size is None  # full-batch GD
    small = Experiment(
        problem=ModelProblem(
            model="transformer",
            dataset="sort-L4-V10",
            n=8,
            loss="cross_entropy",
            model_options={"d_model": 8, "n_layers": 1, "n_heads": 4, "d_mlp": 12},
        )
    )
    built = build(small)
    assert built.objective.dim == _transformer_params(10, 7, 8, 1, 12)
    assert built.info["dim"] == built.objective.dim
    assert len(built.custom_probes) == 1  # the per-token accuracy
    d = to_dict(small)
    assert d["problem"]["model_options"] == {"d_model": 8, "n_layers": 1, "n_heads": 4, "d_mlp": 12}
    assert from_dict(d) == small


_SCRIPT = """
import sys
from eoslab.cli import main
out, devices, n = sys.argv[1], sys.argv[2], sys.argv[3]
sys.exit(main(["run", "transformer", "--problem.n", n, "--steps", "6", "--probe-every", "3",
               "--probes.tol", "1e-5", "--devices", devices, "--out", out, "--quiet",
               "--no-plot"]))
"""


def _run(tmp_path: Path, name: str, devices: int, n: int) -> Path:
    env = dict(
        os.environ,
        XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    out = tmp_path / name
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(out), str(devices), str(n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.subprocess
@pytest.mark.multidevice
@pytest.mark.slow
def test_four_devices_give_the_numbers_of_one(tmp_path):
    import eoslab

    n = 62  # not a multiple of 4: two zero-weight sequences pad the last shard
    one = eoslab.load_run(_run(tmp_path, "one", 1, n)).metrics
    four = eoslab.load_run(_run(tmp_path, "four", 4, n)).metrics
    assert list(one["step"]) == list(four["step"]) == list(range(7))
    worst = {}
    for col in ("loss", "grad_norm", "sharpness", "accuracy"):
        ok = one[col].notna()
        assert ok.sum() >= (7 if col in ("loss", "grad_norm") else 3), col
        a, b = one[col][ok].to_numpy(), four[col][ok].to_numpy()
        worst[col] = float(np.max(np.abs(a - b) / np.abs(a)))
        np.testing.assert_allclose(b, a, rtol=1e-4, err_msg=col)
    print("max relative difference, 4 devices vs 1:", worst)
    assert one["loss"].iloc[-1] < one["loss"].iloc[0]  # GD is doing something
