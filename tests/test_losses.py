"""Loss conventions against numbers computed by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import losses
from eoslab.errors import ConfigError

F = jnp.array([[1.0, 2.0], [0.0, 0.0]])
Y = jnp.array([0, 1])


def test_mse_half_and_sum_by_hand():
    # one-hot targets [[1,0],[0,1]]; residuals [[0,2],[0,-1]]; squared norms 4 and 1
    # mse_half = mean(4/2, 1/2) = 1.25 (Cohen et al.); mse_sum = mean(4, 1) = 2.5 (Arora et al.)
    assert float(losses.mse_half(F, Y)) == pytest.approx(1.25)
    assert float(losses.mse_sum(F, Y)) == pytest.approx(2.5)


def test_integer_labels_equal_one_hot_targets():
    onehot = jnp.eye(2)[Y]
    for loss in (losses.mse_half, losses.mse_sum, losses.cross_entropy):
        assert float(loss(F, Y)) == pytest.approx(float(loss(F, onehot)))


@pytest.mark.usefixtures("x64")
def test_cross_entropy_by_hand():
    # example 1: logits (0, 0), label 0: -log(1/2) = log 2
    # example 2: logits (log 3, 0), label 1: softmax = (3/4, 1/4): -log(1/4) = 2 log 2
    f = jnp.array([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert float(losses.cross_entropy(f, Y)) == pytest.approx(1.5 * math.log(2.0), rel=1e-12)


def test_regression_targets_pass_through():
    f = jnp.array([[1.0], [3.0]])
    y = jnp.array([[0.0], [1.0]])
    # residuals 1 and 2: mse_half = (1/2 + 4/2) / 2 = 1.25
    assert float(losses.mse_half(f, y)) == pytest.approx(1.25)


def test_sqrt_transform():
    assert float(losses.sqrt(losses.mse_half)(F, Y)) == pytest.approx(math.sqrt(1.25))
    # sqrt(1.25 - 0.25) = 1
    assert float(losses.sqrt(losses.mse_half, loss_min=0.25)(F, Y)) == pytest.approx(1.0)
    # at the minimum the value and gradient are 0, never NaN
    g = jax.grad(lambda f: losses.sqrt(losses.mse_half)(f, Y))(jnp.eye(2)[Y])
    assert np.all(np.asarray(g) == 0.0)
    assert losses.get("sqrt_mse_sum") == losses.sqrt(losses.mse_sum)  # hashable, equal by value


def test_accuracy_by_hand():
    f = jnp.array([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    # predictions 1, 0, 1 against labels 1, 0, 0: 2 of 3 right
    assert float(losses.accuracy(f, jnp.array([1, 0, 0]))) == pytest.approx(2 / 3)
    assert float(losses.accuracy(f, jnp.eye(2)[jnp.array([1, 0, 0])])) == pytest.approx(2 / 3)


def test_bad_input_raises_config_error():
    with pytest.raises(ConfigError, match="labels.shape"):
        losses.mse_half(F, jnp.zeros((2, 3)))
    with pytest.raises(ConfigError, match="mse_half"):
        losses.get("mse")
