"""Mixed precision (`eoslab.precision`): bfloat16 matrix products with float32 parameters and sums,
and certified bounds that stay honest at that precision.

Checked against independent computations: a product under ``computing_in("bfloat16")`` equals the
float64 product of the bfloat16-rounded operands (to float32 summation); on small networks (an
MLP, a CNN, a transformer) every certified bound of ``top_eigenpairs`` on the bfloat16 model
holds against the eigenvalues of the float64 dense Hessian of the exact (unrounded) loss, while
a bound that assumed float32 products would not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import Objective
from eoslab.curvature import top_eigenpairs
from eoslab.curvature.operator import HessianOperator
from eoslab.curvature.rounding import ROUNDING, min_tol
from eoslab.curvature.step_tracker import StepTracker
from eoslab.errors import ConfigError
from eoslab.experiments import Experiment, ModelProblem, build, execute
from eoslab.models import create
from eoslab.precision import computing_in, einsum, matmul, rounding_dtype
from eoslab.runner import Probes

EPS16 = float(jnp.finfo(jnp.bfloat16).eps)  # 2^-7
EPS32 = float(jnp.finfo(jnp.float32).eps)


def _round16(a) -> np.ndarray:
    return np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


def test_products_round_their_operands_to_bfloat16_and_sum_in_float32():
    a = jax.random.normal(jax.random.PRNGKey(0), (5, 64))
    b = jax.random.normal(jax.random.PRNGKey(1), (64, 3))
    plain = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    exact16 = _round16(a) @ _round16(b)
    with computing_in("bfloat16"):
        y = matmul(a, b)
        z = einsum("ij,jk->ik", a, b)
    assert y.dtype == z.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(y), exact16, rtol=0, atol=64 * EPS32 * np.abs(exact16).max()
    )
    np.testing.assert_allclose(
        np.asarray(z), exact16, rtol=0, atol=64 * EPS32 * np.abs(exact16).max()
    )
    assert np.abs(np.asarray(y) - plain).max() > 1e-3 * np.abs(plain).max()  # it did round
    np.testing.assert_allclose(np.asarray(matmul(a, b)), plain, rtol=1e-5, atol=1e-5)  # outside
    assert rounding_dtype(jnp.float32, "bfloat16") == jnp.bfloat16
    assert rounding_dtype(jnp.float32, None) == jnp.float32


def test_bad_matmul_dtypes_are_refused():
    with pytest.raises(ConfigError, match="matmul_dtype"):
        Experiment(matmul_dtype="float16")  # type: ignore[arg-type]
    obj = Objective.from_fn(lambda w: jnp.sum(w**2), jnp.ones(3))
    with pytest.raises(ConfigError, match="matmul_dtype"):
        obj.with_matmul_dtype("fp8")
    with pytest.raises(ConfigError, match="rounding"):
        StepTracker(k=1, tol=0.2, rounding="half")


def _problem(name: str):
    key = jax.random.PRNGKey(1)
    if name == "mlp":
        apply, p = create("mlp", jax.random.PRNGKey(0), (8,), 3, widths=(16, 16))
        x, y, loss = jax.random.normal(key, (64, 8)), jnp.arange(64) % 3, "cross_entropy"
    elif name == "mlp-mse":
        apply, p = create("mlp", jax.random.PRNGKey(0), (8,), 3, widths=(32,), activation="tanh")
        x, y, loss = jax.random.normal(key, (64, 8)), jnp.arange(64) % 3, "mse_half"
    elif name == "cnn":
        apply, p = create("cnn-relu", jax.random.PRNGKey(0), (8, 8, 2), 3, widths=(4, 4))
        x, y, loss = jax.random.normal(key, (32, 8, 8, 2)), jnp.arange(32) % 3, "cross_entropy"
    else:
        apply, p = create(
            "transformer", jax.random.PRNGKey(0), (7,), 10, d_model=8, n_heads=2, n_layers=1
        )
        x = jax.random.randint(key, (16, 7), 0, 10).astype(jnp.float32)
        y, loss = jnp.roll(x, -1, axis=1).astype(jnp.int32), "cross_entropy"
    return apply, p, x, y, loss


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
@pytest.mark.parametrize(
    "name",
    [
        "mlp-mse",
        pytest.param("mlp", marks=pytest.mark.slow),
        pytest.param("cnn", marks=pytest.mark.slow),
        pytest.param("transformer", marks=pytest.mark.slow),  # the dense float64 Hessian: minutes
    ],
)
def test_bfloat16_bounds_hold_against_the_float64_hessian(name):
    apply, p, x, y, loss = _problem(name)
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), p)
        o64 = Objective.from_model(
            apply, p64, (jnp.asarray(x, jnp.float64), y), loss, dtype="float64"
        )
        H = np.asarray(jax.hessian(o64)(o64.w0))
    lam, U = np.linalg.eigh(H)
    lam, u = lam[::-1], U[:, -1]
    norm = np.abs(lam).max()
    obj = Objective.from_model(apply, p, (x, y), loss).with_matmul_dtype("bfloat16")
    assert obj.matmul_dtype == "bfloat16" and obj.sqrt().base().matmul_dtype == "bfloat16"
    op = HessianOperator(obj, obj.w0)
    assert op.rounding_dtype == jnp.bfloat16
    with pytest.raises(ConfigError, match="bfloat16"):
        top_eigenpairs(op, k=1, tol=1e-3)  # below what bfloat16 products can certify
    r = top_eigenpairs(op, k=3, tol=min_tol(jnp.bfloat16))
    theta = np.asarray(r.values, np.float64)
    bound = np.asarray(r.error_bound, np.float64)
    assert np.all(bound >= ROUNDING * EPS16 * float(r.operator_norm) * (1 - 1e-6))
    nearest = np.array([np.abs(lam - t).min() for t in theta])
    print(f"{name}: lambda_1 {lam[0]:.5g} theta {theta} bound {bound} true error {nearest}")
    assert np.all(nearest <= bound), (nearest, bound)  # what is certified: an eigenvalue near
    assert abs(theta[0] - lam[0]) <= bound[0]  # and the top one is lambda_1
    # the products carry bfloat16 rounding: more than a float32 floor, within bfloat16's
    err = np.linalg.norm(np.asarray(op.mv(jnp.asarray(u, jnp.float32)), np.float64) - H @ u)
    print(f"{name}: |fl(Hu) - Hu| / (eps_bf16 |H|) = {err / (EPS16 * norm):.3f}")
    assert ROUNDING * EPS32 * norm < err < ROUNDING * EPS16 * norm
    # the same model without mixed precision: float32's floor, much tighter
    plain = HessianOperator(obj.with_matmul_dtype(None), obj.w0)
    assert plain.rounding_dtype == jnp.float32
    r32 = top_eigenpairs(plain, k=1)
    assert abs(float(r32.values[0]) - lam[0]) <= float(r32.error_bound[0]) < bound[0] / 100


def test_a_bfloat16_run_records_its_precision_and_certifies_in_it(tmp_path):
    problem = ModelProblem(model="fc-tanh-depth1", dataset="gaussian-mixture-2", n=64)
    exp = Experiment(problem=problem, steps=4, probe_every=2, matmul_dtype="bfloat16")
    with pytest.raises(ConfigError, match="probes.tol"):
        execute(exp)  # the default tolerance is below what bfloat16 products can certify
    exp = Experiment(
        problem=problem,
        steps=4,
        probe_every=2,
        matmul_dtype="bfloat16",
        probes=Probes(tol=0.2, alignment=False),
    )
    assert build(exp).objective.matmul_dtype == "bfloat16"
    run = execute(exp, tmp_path / "run")
    m = run.metrics
    probed = m[m["sharpness"].notna()]
    assert len(probed) == 3
    floor = ROUNDING * EPS16 * probed["sharpness"].abs()
    assert np.all(probed["sharpness_error"] >= floor * (1 - 1e-6))
    assert run.config["config"]["matmul_dtype"] == "bfloat16"
