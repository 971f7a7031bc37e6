"""`eoslab run ... --devices N` and `--microbatch B` give the numbers of a plain run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(tmp_path: Path, name: str, *extra: str) -> Path:
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    out = tmp_path / name
    cmd = [
        sys.executable,
        "-m",
        "eoslab",
        "run",
        "eos-gd",
        "--problem.n",
        "64",
        "--steps",
        "20",
        "--probe-every",
        "10",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def test_sharded_and_microbatched_cli_runs_match_plain(tmp_path):
    import eoslab

    plain = eoslab.load_run(_run(tmp_path, "plain")).metrics
    for name, extra in (("sharded", ("--devices", "2")), ("micro", ("--microbatch", "16"))):
        out = _run(tmp_path, name, *extra)
        other = eoslab.load_run(out).metrics
        np.testing.assert_allclose(other["loss"], plain["loss"], rtol=1e-5)
        ok = plain["sharpness"].notna()
        np.testing.assert_allclose(other["sharpness"][ok], plain["sharpness"][ok], rtol=1e-4)
        cfg = json.loads((out / "config.json").read_text())["config"]
        key, val = extra[0].lstrip("-"), int(extra[1])
        assert cfg[key] == val  # recorded, so --resume reproduces it


def test_too_many_devices_is_a_usage_error(tmp_path):
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "eoslab",
            "run",
            "toy",
            "--devices",
            "64",
            "--out",
            str(tmp_path / "x"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "devices" in proc.stderr and "Traceback" not in proc.stderr
