"""Sharded, micro-batched and multi-process runs agree with the single-device full-batch run.

Tolerances (float64, here and in the workers): loss and every gradient entry to 1e-12 relative
to the gradient's scale; top-3 eigenvalues (Lanczos, certified 1e-10) to 1e-8 relative; a 20-step
GD trajectory to 1e-10 relative in parameters and loss. Float32: loss/gradient to 1e-5 relative.
Multi-device runs happen in subprocesses with XLA_FLAGS=--xla_force_host_platform_device_count=5
(50 examples: 5 and 2 devices divide them, 4 devices need zero-weight padding; the flag must be
set before jax starts). Two processes with 2 devices each (Gloo CPU collectives) reproduce the
single-process loss, gradient, top-3 eigenvalues and 20-step trajectory to the same tolerances.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import Objective
from eoslab.errors import ConfigError
from eoslab.models import create
from eoslab.parallel import free_port, microbatched, plan_microbatch, shard_objective

# float64 here, as in the worker processes (COMMON): agreement to 1e-12
pytestmark = pytest.mark.usefixtures("x64")

SRC = str(Path(__file__).resolve().parents[2] / "src")

DEFS = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, equinox as eqx
    from eoslab import Objective
    from eoslab.models import create
    from eoslab.curvature import top_eigenpairs, EigenTracker

    def make(n, dtype="float64", loss="cross_entropy", sqrt=False):
        apply, p = create("mlp", jax.random.PRNGKey(0), (6,), 3, widths=(12,),
                          activation="tanh")
        x = jax.random.normal(jax.random.PRNGKey(1), (n, 6))
        y = jnp.arange(n) % 3
        obj = Objective.from_model(apply, p, (x, y), loss, dtype=dtype)
        return obj.sqrt() if sqrt else obj

    vg = eqx.filter_jit(lambda o, w: jax.value_and_grad(o)(w))

    def gd(o, steps=20, lr=0.5):
        w, losses = o.w0, []
        for _ in range(steps):
            l, g = vg(o, w)
            losses.append(float(l))
            w = w - lr * g
        return np.asarray(w).tolist(), losses
    """
)
# the worker processes switch float64 on globally; this process runs DEFS under the x64 fixture
COMMON = 'import jax\njax.config.update("jax_enable_x64", True)\n' + DEFS

WORKER = COMMON + textwrap.dedent(
    """
    from eoslab.parallel import shard_objective, microbatched, compiled_collectives
    variant, n = sys.argv[1], int(sys.argv[2])
    base = make(n)
    o = {"sharded5": lambda: shard_objective(base, devices=5),
         "sharded4": lambda: shard_objective(base, devices=4),
         "sharded2": lambda: shard_objective(base, devices=2),
         "micro": lambda: microbatched(base, batch_size=7),
         "micro_sharded4": lambda: shard_objective(microbatched(base, batch_size=7), 4),
         }[variant]()
    l, g = vg(o, o.w0)
    e = top_eigenpairs(o, o.w0, 3, tol=1e-10)
    w, losses = gd(o)
    out = {"devices": len(jax.devices()), "loss": float(l), "grad": np.asarray(g).tolist(),
           "eig": np.asarray(e.values).tolist(), "w20": w, "losses": losses,
           "eig_spec": list(getattr(e.vectors.sharding, "spec", ["?"]))}
    if "sharded" in variant:
        out["data_spec"] = list(o.data["x"].sharding.spec)
        out["collectives"] = {
            "grad": compiled_collectives(lambda o, w: jax.grad(o)(w), o, o.w0),
            "hvp": compiled_collectives(
                lambda o, w, v: jax.jvp(jax.grad(o), (w,), (v,))[1], o, o.w0, o.w0),
        }
    print("RESULT" + json.dumps(out))
    """
)

FLOAT32 = COMMON + textwrap.dedent(
    """
    from eoslab.parallel import shard_objective, microbatched
    out = {}
    for sq in (False, True):
        o32 = make(50, "float32", "mse_half", sqrt=sq)
        l0, g0 = vg(o32, o32.w0)
        for name, o in {"sharded": shard_objective(o32, 4),
                        "micro": microbatched(o32, batch_size=9)}.items():
            l, g = vg(o, o.w0)
            out[f"{name}_sqrt{sq}"] = [abs(float(l - l0)) / abs(float(l0)),
                                       float(jnp.max(jnp.abs(g - g0)) / jnp.max(jnp.abs(g0)))]
    print("RESULT" + json.dumps(out))
    """
)

DIST = COMMON + textwrap.dedent(
    """
    from eoslab.parallel import initialize, shard_objective
    port, pid = sys.argv[1], int(sys.argv[2])
    initialize(f"localhost:{port}", 2, pid, timeout_s=60)
    from jax.sharding import NamedSharding, PartitionSpec as P
    base = make(50)  # 50 examples over 4 devices in 2 processes: padded
    o = shard_objective(base)
    repl = NamedSharding(o.data["x"].sharding.mesh, P())
    f = eqx.filter_jit(lambda o, w: jax.value_and_grad(o)(w))
    l, g = f(o, o.w0)
    step = eqx.filter_jit(lambda o, w: w - 0.5 * jax.grad(o)(w))
    w = o.w0
    for _ in range(20):
        w = step(o, w)
    e = top_eigenpairs(o, o.w0, 3, tol=1e-10)
    local = lambda a: np.asarray(a.addressable_data(0)).tolist()
    print("RESULT" + json.dumps({"pid": pid, "procs": jax.process_count(),
                                 "devices": len(jax.devices()), "loss": local(l),
                                 "grad": local(g), "w20": local(w),
                                 "eig": local(e.values)}))
    """
)


def _run(script: str, args: list[str], tmp_path: Path, devices: int, timeout: float = 120):
    path = tmp_path / "worker.py"
    path.write_text(script)
    env = dict(os.environ)
    devices_flag = f"--xla_force_host_platform_device_count={devices}"
    env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {devices_flag}"
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.Popen(
        [sys.executable, str(path), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen, timeout: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


@pytest.fixture(scope="module")
def reference() -> dict:
    """The single-device full-batch run, in this process (float64)."""
    ns: dict = {}
    exec(DEFS, ns)
    out = {}

    def get(n: int) -> dict:
        if n not in out:
            o = ns["make"](n)
            loss, g = ns["vg"](o, o.w0)
            e = ns["top_eigenpairs"](o, o.w0, 3, tol=1e-10)
            w, losses = ns["gd"](o)
            out[n] = {
                "loss": float(loss),
                "grad": np.asarray(g),
                "eig": np.asarray(e.values),
                "w20": w,
                "losses": losses,
            }
        return out[n]

    return {"get": get, "ns": ns}


@pytest.mark.subprocess
@pytest.mark.multidevice
@pytest.mark.parametrize(
    "variant,n",
    [("sharded5", 50), ("sharded4", 50), ("sharded2", 50), ("micro", 50), ("micro_sharded4", 50)],
    ids=[
        "sharded5-even",
        "sharded4-padded",
        "sharded2-even",
        "microbatch7-padded",
        "microbatch7-sharded4",
    ],
)
def test_agrees_with_full_batch(reference, tmp_path, variant, n):
    proc = _run(WORKER, [variant, str(n)], tmp_path, devices=5)
    ref = reference["get"](n)
    got = _result(proc)
    assert got["devices"] == 5
    g_ref, g = ref["grad"], np.asarray(got["grad"])
    assert abs(got["loss"] - ref["loss"]) <= 1e-12 * abs(ref["loss"])
    assert np.max(np.abs(g - g_ref)) <= 1e-12 * np.max(np.abs(g_ref))
    np.testing.assert_allclose(got["eig"], ref["eig"], rtol=1e-8)
    np.testing.assert_allclose(got["w20"], ref["w20"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-10)
    if "sharded" in variant:
        # data split along the example axis; XLA joins the partial sums with all-reduce
        assert got["data_spec"] == ["data"]
        assert got["collectives"]["grad"].get("all-reduce", 0) >= 1
        assert got["collectives"]["hvp"].get("all-reduce", 0) >= 1
        assert got["eig_spec"] == []  # eigenvectors replicated


@pytest.mark.subprocess
@pytest.mark.multidevice
def test_float32_agreement(tmp_path):
    r = _result(_run(FLOAT32, [], tmp_path, devices=4))
    for key, (dl, dg) in r.items():
        assert dl <= 1e-5 and dg <= 1e-5, key


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
@pytest.mark.subprocess
@pytest.mark.multidevice
def test_two_processes_reproduce_single_process(reference, tmp_path):
    port = str(free_port())
    procs = [
        _run(DIST, [port, str(i)], tmp_path / f"p{i}", devices=2)
        for i in range(2)
        if (tmp_path / f"p{i}").mkdir() is None
    ]
    results = [_result(p, timeout=90) for p in procs]
    # the same computation in this (single) process
    ref = reference["get"](50)
    loss, g, w20 = ref["loss"], ref["grad"], ref["w20"]
    for r in results:
        assert r["procs"] == 2 and r["devices"] == 4
        assert abs(r["loss"] - loss) <= 1e-12 * abs(loss)
        np.testing.assert_allclose(
            r["grad"], np.asarray(g), rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(g)))
        )
        np.testing.assert_allclose(r["w20"], w20, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(r["eig"], ref["eig"], rtol=1e-8)


# ---------------------------------------------------------------- in-process checks (1 device)
def _small(n=30, loss="mse_half"):
    apply, p = create("mlp", jax.random.PRNGKey(0), (4,), 2, widths=(8,))
    x = jax.random.normal(jax.random.PRNGKey(1), (n, 4))
    return Objective.from_model(apply, p, (x, jnp.arange(n) % 2), loss, dtype="float64")


def test_microbatch_refuses_non_mean_objectives():
    obj = Objective.from_fn(lambda w: jnp.sum(w**2), jnp.ones(3))
    with pytest.raises(ConfigError, match="mean over examples"):
        microbatched(obj, batch_size=2)
    apply, p = create("mlp", jax.random.PRNGKey(0), (4,), 2, widths=(8,))
    x = jnp.ones((10, 4))
    summed = Objective.from_model(apply, p, (x, jnp.zeros(10, int)), lambda o, y: jnp.sum(o**2))
    with pytest.raises(ConfigError, match="mean over examples"):
        microbatched(summed, batch_size=2)
    with pytest.raises(ConfigError, match="exactly one"):
        microbatched(_small(), batch_size=2, memory_budget_bytes=10**6)
    with pytest.raises(ConfigError, match="positive int"):
        microbatched(_small(), batch_size=0)


def test_microbatch_refuses_full_batch_batchnorm():
    apply, p = create("vgg11-bn", jax.random.PRNGKey(0), (8, 8, 3), 2, config=(4, "P"))
    x = jnp.ones((4, 8, 8, 3))
    obj = Objective.from_model(apply, p, (x, jnp.zeros(4, int)), "mse_half")
    with pytest.raises(ConfigError, match="BatchNorm"):
        microbatched(obj, batch_size=2)


def test_shard_refuses_indivisible_general_objective():
    data = (jnp.ones((10, 3)), jnp.ones((10,)))
    obj = Objective.from_data_fn(_sum_fn, data, jnp.ones(3))
    shard_objective(obj, devices=1)  # always divisible
    with pytest.raises(ConfigError, match="devices"):
        shard_objective(obj, devices=len(jax.devices()) + 1)


def _sum_fn(w, data):
    x, y = data
    return jnp.mean((x @ w - y) ** 2)


def test_memory_budget_bounds_hvp_working_memory():
    obj = _small(n=2000)
    full = plan_microbatch(obj, 10**12)
    assert full.batch_size == 2000 and full.num_blocks == 1
    budget = int(full.predicted_bytes / 6)
    plan = plan_microbatch(obj, budget)
    assert plan.num_blocks >= 6 and plan.predicted_bytes <= budget
    mb = microbatched(obj, memory_budget_bytes=budget)
    w, v = obj.w0, jnp.ones_like(obj.w0)

    def temp(o):
        f = jax.jit(lambda d, w, v: jax.jvp(jax.grad(lambda u: o.fn(u, d)), (w,), (v,))[1])
        return f.lower(o.data, w, v).compile().memory_analysis().temp_size_in_bytes

    assert temp(mb) <= 2 * budget < temp(obj)
    hv0 = jax.jvp(jax.grad(obj), (w,), (v,))[1]
    hv1 = jax.jvp(jax.grad(mb), (w,), (v,))[1]
    np.testing.assert_allclose(hv1, hv0, rtol=1e-10, atol=1e-12)
    with pytest.raises(ConfigError, match="memory_budget_bytes"):
        microbatched(obj, memory_budget_bytes=16)
