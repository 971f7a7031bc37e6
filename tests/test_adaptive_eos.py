"""Preconditioned sharpness of Adam / RMSProp against a dense computation; thresholds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab.dynamics.rules import Adam, HeavyBall
from eoslab.errors import ConfigError
from eoslab.theory import preconditioned_sharpness, track_preconditioned_sharpness
from helpers import small_mlp_loss


def test_preconditioned_sharpness_matches_dense():
    f, w = small_mlp_loss()
    rule = Adam(1e-2)
    state = rule.init(w)
    for _ in range(5):
        w, state, _ = rule.step(w, state, jax.grad(f)(w), f(w))
    P = rule.preconditioner(state)
    ps = preconditioned_sharpness(f, w, P, 3, tol=1e-10)
    H = np.asarray(jax.hessian(f)(w))
    ev = np.sort(np.linalg.eigvals(np.diag(1.0 / np.asarray(P)) @ H).real)[::-1]
    assert np.asarray(ps.values) == pytest.approx(ev[:3], rel=1e-7)


def test_thresholds():
    assert Adam(0.01, 0.9).threshold() == pytest.approx(3800.0)
    assert HeavyBall(0.1, 0.9).threshold() == pytest.approx(38.0)
    assert Adam(0.01, 0.9).step(jnp.ones(2), Adam(0.01).init(jnp.ones(2)), jnp.ones(2), 0.0)[
        2
    ].threshold == pytest.approx(3800.0)


def test_track_on_quadratic_heavy_ball():
    A = jnp.diag(jnp.array([3.0, 1.0]))
    df = track_preconditioned_sharpness(
        lambda w: 0.5 * w @ A @ w, jnp.ones(2), HeavyBall(0.1, 0.5), 20, every=10
    )
    assert list(df["sharpness"]) == pytest.approx([3.0, 3.0])
    assert list(df["threshold"]) == pytest.approx([30.0, 30.0])


def test_bad_inputs():
    f, w = small_mlp_loss()
    with pytest.raises(ConfigError) as e:
        preconditioned_sharpness(f, w, -jnp.ones_like(w))
    assert e.value.field == "P_diag"
    with pytest.raises(ConfigError) as e:
        preconditioned_sharpness(f, w, jnp.ones(3))
    assert e.value.field == "P_diag.shape"
    with pytest.raises(ConfigError) as e:
        Adam(0.1, 1.5)
    assert e.value.field == "beta1"
    with pytest.raises(ConfigError) as e:
        track_preconditioned_sharpness(f, w, "adam", 10)
    assert e.value.field == "rule"
