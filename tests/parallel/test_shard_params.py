"""Parameters sharded over host devices (FSDP, `eoslab.parallel.shard_params`) give the numbers of
one device: GD on the transformer with sharpness probes, float32, to 1e-5 relative in loss,
gradient norm, sharpness (Lanczos, certified 1e-5) and accuracy. The sharding is checked to be
real (``w``, the gradient, a Hessian product and the eigenvectors each held as n shards of D/n
entries), and a checkpoint written by a sharded run resumes on one device, and one written on one
device resumes sharded, with the numbers of the uninterrupted run.

The runs happen in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag
must be set before jax starts); one device, 4 and 8 use the first 1, 4, 8 of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from eoslab.errors import ConfigError
from eoslab.experiments import PRESETS, Experiment

SRC = str(Path(__file__).resolve().parents[2] / "src")

_WORKER = textwrap.dedent(
    """
    import dataclasses, json, sys
    import jax, numpy as np
    import eoslab
    from eoslab.curvature import top_eigenpairs
    from eoslab.curvature.operator import HessianOperator
    from eoslab.errors import ConfigError
    from eoslab.experiments import PRESETS, ModelProblem, build, execute, to_dict
    from eoslab.parallel import params_sharded, shard_objective, shard_params
    from eoslab.runner.store import RunStore

    out, steps, layouts, small, resume = (
        sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], sys.argv[5])
    base = PRESETS["transformer"]
    if small == "1":  # D = 1,280 = 8 x 160; 64 sequences of sort-L8-V32
        opts = {"d_model": 8, "n_layers": 1, "n_heads": 2, "d_mlp": 16}
        base = dataclasses.replace(
            base, problem=dataclasses.replace(base.problem, n=64, model_options=opts))
    base = dataclasses.replace(
        base, steps=steps, probe_every=5, flush_seconds=0.0,
        probes=dataclasses.replace(base.probes, tol=1e-5))

    def layout(n):
        return dataclasses.replace(base, devices=n, shard_params=n > 1)

    def metrics(path):
        m = eoslab.load_run(path).metrics
        return {c: [None if v != v else float(v) for v in m[c]] for c in
                ("step", "loss", "grad_norm", "sharpness", "sharpness_error", "accuracy")}

    res = {"dim": build(base).objective.dim, "runs": {}, "layout": {}}
    for n in layouts:
        res["runs"][str(n)] = metrics(execute(layout(n), f"{out}/run{n}").path)
        print("RUN" + json.dumps({str(n): res["runs"][str(n)]}), flush=True)
        if n == 1:
            continue
        obj = build(layout(n)).objective
        w = obj.w0
        op = HessianOperator(obj, w)
        g = jax.jit(jax.grad(obj))(w)
        hv = jax.jit(lambda o, v: o.mv(v))(op, w)
        vec = top_eigenpairs(op, k=2, tol=1e-4).vectors
        res["layout"][str(n)] = {
            "params_sharded": params_sharded(obj),
            "devices": {k: len(a.sharding.device_set) for k, a in
                        (("w", w), ("grad", g), ("hvp", hv), ("vectors", vec))},
            "shard_rows": {k: sorted({s.data.shape[0] for s in a.addressable_shards}) for k, a in
                           (("w", w), ("grad", g), ("hvp", hv), ("vectors", vec))},
        }
        try:
            odd = shard_objective(build(dataclasses.replace(base, problem=dataclasses.replace(
                base.problem, model_options={**base.problem.model_options, "d_mlp": 17}))
                ).objective, n)
            shard_params(odd, n)
            res["layout"][str(n)]["indivisible"] = "accepted"
        except ConfigError as exc:
            res["layout"][str(n)]["indivisible"] = exc.field

    # checkpoints across layouts: half the steps in one layout, the rest in the other
    half = steps // 2
    n = max(layouts)
    for first, then in ((n, 1), (1, n)) if resume == "1" else ():
        path = f"{out}/resume{first}to{then}"
        execute(dataclasses.replace(layout(first), steps=half), path)
        cont = dataclasses.replace(layout(then), steps=steps)
        RunStore(path).extend(to_dict(cont), steps)
        execute(cont, path, resume=True)
        res["runs"][f"{first}to{then}"] = metrics(path)
    print("RESULT" + json.dumps(res))
    """
)


def _worker(tmp_path: Path, steps: int, layouts: list[int], small: bool, resume: bool) -> dict:
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path),
            str(steps),
            json.dumps(layouts),
            "01"[small],
            "01"[resume],
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


def _check(res: dict, steps: int, layouts: list[int]) -> dict[str, float]:
    d = res["dim"]
    for n in layouts[1:]:
        lay = res["layout"][str(n)]
        assert lay["params_sharded"] == n
        assert lay["devices"] == {"w": n, "grad": n, "hvp": n, "vectors": n}
        assert lay["shard_rows"] == {k: [d // n] for k in ("w", "grad", "hvp", "vectors")}
        assert lay["indivisible"] == "shard_params"  # D + 1 parameters: refused, not replicated
    one = res["runs"]["1"]
    assert one["step"] == list(range(steps + 1))
    assert one["loss"][-1] < one["loss"][0]  # GD is doing something
    assert sum(v is not None for v in one["sharpness"]) == steps // 5 + 1
    worst = {}
    for name, run in res["runs"].items():
        if name == "1":
            continue
        assert run["step"] == one["step"], name
        for col in ("loss", "grad_norm", "sharpness", "accuracy"):
            a = np.array([np.nan if v is None else v for v in one[col]])
            b = np.array([np.nan if v is None else v for v in run[col]])
            assert np.array_equal(np.isnan(a), np.isnan(b)), (name, col)
            ok = ~np.isnan(a)
            rel = float(np.max(np.abs(a[ok] - b[ok]) / np.abs(a[ok])))
            worst[f"{name}:{col}"] = rel
            assert rel <= 1e-5, (name, col, rel)
    print("max relative difference from one device:", worst)
    return worst


_API_WORKER = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    import eoslab
    from eoslab import Objective, rules
    from eoslab.curvature import top_eigenpairs
    from eoslab.parallel import params_sharded, shard_objective, shard_params
    from eoslab.runner import Probes

    apply, p = eoslab.models.create("mlp", jax.random.PRNGKey(0), (3,), 4, widths=(8,))
    x = jax.random.normal(jax.random.PRNGKey(1), (30, 3))  # 30 rows: padded to 32 on 4 devices
    obj = Objective.from_model(apply, p, (x, jnp.arange(30) % 4), "cross_entropy")
    out = {"dim": obj.dim}
    for n in (1, 4):
        run = eoslab.train(obj, rules.GD(0.5), 12, probe_every=4, devices=n, shard_params=n > 1,
                           probes=Probes(tol=1e-5, alignment=False))
        m = run.metrics
        out[str(n)] = {c: [float(v) for v in m[c].dropna()] for c in ("loss", "sharpness")}
    s = shard_params(shard_objective(obj, 4), 4)
    vec = top_eigenpairs(s, k=1, tol=1e-4).vectors
    out["shards"] = [params_sharded(s), sorted({a.data.shape[0] for a in s.w0.addressable_shards}),
                     len(vec.sharding.device_set)]
    print("RESULT" + json.dumps(out))
    """
)


def test_shard_params_needs_several_devices():
    with pytest.raises(ConfigError, match="shard_params"):
        Experiment(shard_params=True)
    with pytest.raises(ConfigError, match="shard_params"):
        Experiment(devices=2, shard_params="yes")  # type: ignore[arg-type]
    assert Experiment(devices=4, shard_params=True).shard_params


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
@pytest.mark.subprocess
@pytest.mark.multidevice
def test_train_with_sharded_parameters_on_four_devices(tmp_path):
    """`eoslab.train(..., devices=4, shard_params=True)` on a 68-parameter MLP: the loss and
    sharpness of one device to 1e-5, with w in 4 shards of 17 entries."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    script = tmp_path / "api.py"
    script.write_text(_API_WORKER)
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1][6:])
    assert res["dim"] == 68 and res["shards"] == [4, [17], 4]
    one, four = res["1"], res["4"]
    assert len(one["loss"]) == 13 and len(one["sharpness"]) == 4
    assert one["loss"][-1] < one["loss"][0]
    for col in ("loss", "sharpness"):
        np.testing.assert_allclose(four[col], one[col], rtol=1e-5, err_msg=col)


@pytest.mark.subprocess
@pytest.mark.multidevice
@pytest.mark.slow
def test_sharded_parameters_give_the_numbers_of_one_device_small(tmp_path):
    """A 1,280-parameter transformer, 5 GD steps, one device vs 4 (parameters and sequences
    split)."""
    res = _worker(tmp_path, 5, [1, 4], small=True, resume=False)
    _check(res, 5, [1, 4])


@pytest.mark.subprocess
@pytest.mark.multidevice
@pytest.mark.slow
def test_checkpoints_move_between_layouts_small(tmp_path):
    """The small transformer, 10 GD steps: 8 devices vs one, and a checkpoint at step 5 resumed
    in the other layout (8 -> 1 and 1 -> 8)."""
    res = _worker(tmp_path, 10, [1, 8], small=True, resume=True)
    _check(res, 10, [1, 8])


@pytest.mark.subprocess
@pytest.mark.multidevice
@pytest.mark.slow
def test_sharded_parameters_on_the_transformer_preset(tmp_path):
    """The transformer preset (D = 28,032, 1,024 sequences), 30 GD steps probed every 5: one
    device, 4 and 8 (checkpoints across layouts: the small test above)."""
    assert PRESETS["transformer"].problem.model == "transformer"
    res = _worker(tmp_path, 30, [1, 4, 8], small=False, resume=False)
    _check(res, 30, [1, 4, 8])
