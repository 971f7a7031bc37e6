"""`eoslab run ... --devices N` and `--microbatch B` give the numbers of a plain run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")


RUNS = {"plain": (), "sharded": ("--devices", "2"), "micro": ("--microbatch", "16")}

# the three runs in one fresh interpreter with two host devices (the flag must be set before jax
# starts), each through the command line's entry point as `eoslab run` calls it
_SCRIPT = """
import sys
from eoslab.cli import main
out, runs = sys.argv[1], {runs!r}
common = ["run", "eos-gd", "--problem.n", "64", "--steps", "20", "--probe-every", "10", "--quiet",
          "--no-plot"]
for name, extra in runs.items():
    code = main([*common, "--out", f"{{out}}/{{name}}", *extra])
    if code:
        sys.exit(code)
"""


@pytest.mark.slow  # three CLI runs in a 2-device subprocess: ~40 s
@pytest.mark.subprocess
@pytest.mark.multidevice
def test_sharded_and_microbatched_cli_runs_match_plain(tmp_path):
    import eoslab

    env = dict(
        os.environ,
        XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
        PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(runs=RUNS), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    plain = eoslab.load_run(tmp_path / "plain").metrics
    for name in ("sharded", "micro"):
        out = tmp_path / name
        other = eoslab.load_run(out).metrics
        np.testing.assert_allclose(other["loss"], plain["loss"], rtol=1e-5)
        ok = plain["sharpness"].notna()
        np.testing.assert_allclose(other["sharpness"][ok], plain["sharpness"][ok], rtol=1e-4)
        cfg = json.loads((out / "config.json").read_text())["config"]
        key, val = RUNS[name][0].lstrip("-"), int(RUNS[name][1])
        assert cfg[key] == val  # recorded, so --resume reproduces it


@pytest.mark.subprocess
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
