"""Every-step certified values of float32 runs against float64 dense Hessians (issue 29): small
versions of the every-step workloads (tanh MLPs 2 hidden layers, MSE, GD at 1.9/lambda_1(w_0)),
the lambda_1 tracker and the cluster block, rounding's floor included in every bound. Slow (a
float64 Hessian per sampled step, four compilations of the tracker): ``make test-all``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import Objective
from eoslab.curvature import top_eigenpairs
from eoslab.dynamics.optimizer import Optimizer
from eoslab.dynamics.rules import GD
from eoslab.models import create
from eoslab.runner import Probes, run

pytestmark = [pytest.mark.usefixtures("x64"), pytest.mark.slow]

#: (inputs, hidden width, examples): eos-gd's 40-dim inputs, and a wider-input net as the
#: 784- and 3072-input workloads (their inputs cut to 96 dims)
NETS = {"eos-gd-like": (40, 12, 64), "wide-input": (96, 6, 48)}


def _objectives(din: int, width: int, n: int):
    kx, ky = jax.random.split(jax.random.PRNGKey(3))
    x = np.asarray(jax.random.normal(kx, (n, din), jnp.float64))
    y = np.asarray(jax.random.randint(ky, (n,), 0, 10))
    apply, params = create("mlp", jax.random.PRNGKey(0), (din,), 10, widths=(width, width))
    return tuple(
        Objective.from_model(
            apply, params, (jnp.asarray(x, dt), jnp.asarray(y)), "mse_half", dtype=dt
        )
        for dt in ("float32", "float64")
    )


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("cluster", [False, True])
def test_float32_every_step_values_hold_against_float64_dense_hessians(net, cluster):
    obj32, obj64 = _objectives(*NETS[net])
    lam0 = float(top_eigenpairs(obj64, obj64.w0, 1, tol=1e-8).values[0])
    lr = 1.9 / lam0
    probes = Probes(
        every_step=True,
        tol=1e-3,
        alignment=False,
        effective=False,
        cluster_above=0.5 if cluster else None,
        cluster_max_k=6,
    )
    r = run(Optimizer(GD(lr)), obj32, 30, probe_every=30, probes=probes, keep_points=True)
    m = r.metrics
    assert len(m) == 31 and m["sharpness"].notna().all()
    hessian = jax.jit(jax.hessian(obj64))
    for i in range(0, 31, 3):
        w = jnp.asarray(np.asarray(m["w"][i]), jnp.float64)
        dense = np.sort(np.linalg.eigvalsh(np.asarray(hessian(w))))[::-1]
        if cluster:
            n = int(m["cluster_size"][i])
            vals = np.asarray(m["eigs"][i], np.float64)[:n]
            bounds = np.asarray(m["eigs_error"][i], np.float64)[:n]
            # the block holds values above the cutoff 0.5 x 2/lr only (the first one always)
            assert np.all(vals[1:] + bounds[1:] >= 1 / lr)
        else:
            vals = np.asarray([m["sharpness"][i]], np.float64)
            bounds = np.asarray([m["sharpness_error"][i]], np.float64)
            n = 1
        # float32 products: the bound holds against the float64 eigenvalue of the same rank
        assert np.all(np.abs(vals - dense[:n]) <= bounds), (i, vals, dense[:n], bounds)
        assert np.all(bounds >= 8 * np.finfo(np.float32).eps * dense[0])  # the floor is in it
