"""Preconditioned sharpness of Adam / RMSProp against a dense computation; thresholds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab.curvature import HessianOperator, PreconditionedOperator, top_eigenpairs
from eoslab.dynamics import Optimizer
from eoslab.dynamics.rules import Adam, HeavyBall
from eoslab.errors import ConfigError
from eoslab.objective import as_objective
from eoslab.runner import Probes, run
from helpers import small_mlp_loss


def preconditioned(f, w, P):
    """P^-1/2 H P^-1/2: the spectrum of P^-1 H."""
    return PreconditionedOperator(HessianOperator(as_objective(f, w), w), P)


@pytest.mark.usefixtures("x64")
def test_preconditioned_sharpness_matches_dense():
    f, w = small_mlp_loss()
    rule = Adam(1e-2)
    state = rule.init(w)
    for _ in range(5):
        w, state, _ = rule.step(w, state, jax.grad(f)(w), f(w))
    P = rule.preconditioner(state)
    ps = top_eigenpairs(preconditioned(f, w, P), k=3, tol=1e-10)
    H = np.asarray(jax.hessian(f)(w))
    ev = np.sort(np.linalg.eigvals(np.diag(1.0 / np.asarray(P)) @ H).real)[::-1]
    assert np.asarray(ps.values) == pytest.approx(ev[:3], rel=1e-7)


def test_thresholds():
    assert Adam(0.01, 0.9).threshold() == pytest.approx(3800.0)
    assert HeavyBall(0.1, 0.9).threshold() == pytest.approx(38.0)
    assert Adam(0.01, 0.9).step(jnp.ones(2), Adam(0.01).init(jnp.ones(2)), jnp.ones(2), 0.0)[
        2
    ].threshold == pytest.approx(3800.0)


def test_probed_sharpness_and_threshold_on_quadratic_heavy_ball():
    A = jnp.diag(jnp.array([3.0, 1.0]))
    res = run(
        Optimizer(HeavyBall(0.1, 0.5)),
        lambda w: 0.5 * w @ A @ w,
        20,
        w0=jnp.ones(2),
        probe_every=10,
        log_every=10,
        probes=Probes(tol=1e-5, alignment=False),
    )
    df = res.series(None, ["sharpness", "threshold"])
    assert list(df["step"]) == [0, 10, 20]
    assert list(df["sharpness"]) == pytest.approx([3.0, 3.0, 3.0])
    assert list(df["threshold"]) == pytest.approx([30.0, 30.0, 30.0])


def test_bad_inputs():
    f, w = small_mlp_loss()
    with pytest.raises(ConfigError) as e:
        top_eigenpairs(preconditioned(f, w, -jnp.ones_like(w)))
    assert e.value.field == "p"
    with pytest.raises(ConfigError) as e:
        top_eigenpairs(preconditioned(f, w, jnp.ones(3)))
    assert e.value.field == "p.shape"
    with pytest.raises(ConfigError) as e:
        Adam(0.1, 1.5)
    assert e.value.field == "beta1"
    with pytest.raises(ConfigError) as e:
        Optimizer("adam")
    assert e.value.field == "rule"
