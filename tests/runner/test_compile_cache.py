"""Compiled steps are never shared between rules that differ (the old cache keyed on __code__)."""

from typing import ClassVar

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eoslab import Objective
from eoslab.dynamics import rules
from eoslab.runner import Probes, train

# float64 objectives: the final points are checked at 1e-12
pytestmark = pytest.mark.usefixtures("x64")


def _half_sq(w, data):
    return 0.5 * jnp.sum(w * w) * data


def _objective():
    return Objective.from_data_fn(_half_sq, jnp.asarray(1.0), np.ones(2), dtype="float64")


class Mine(rules.Rule):
    """A custom rule as a user writes it: its learning rate a field."""

    lr: float

    kind: ClassVar[str] = "mine"
    name: ClassVar[str] = "mine"
    threshold_formula: ClassVar[str] = "2/lr"
    adaptive: ClassVar[bool] = False

    def init(self, w):
        return ()

    def step(self, w, state, g, loss):
        del loss
        lr_t = jnp.asarray(self.lr, w.dtype)
        return w - lr_t * g, state, rules.StepInfo(lr_t, 2.0 / lr_t)

    def preconditioner(self, state):
        return None

    def threshold(self):
        return 2.0 / self.lr


def _closure_rule(lr: float) -> rules.Rule:
    return Mine(lr)


def _final(rule) -> np.ndarray:
    run = train(_objective(), rule, 5, probe_every=5, probes=Probes(sharpness=False))
    return np.asarray(run.point())


def test_rules_with_different_lr_give_different_results():
    # w_5 = (1 - lr)^5 w_0 on 1/2 |w|^2
    np.testing.assert_allclose(_final(_closure_rule(0.1)), 0.9**5, rtol=1e-12)
    np.testing.assert_allclose(_final(_closure_rule(0.5)), 0.5**5, rtol=1e-12)


def test_optax_rules_with_different_schedules_give_different_results():
    a = rules.OptaxRule(optax.sgd(optax.constant_schedule(0.1)), kind="sched")
    b = rules.OptaxRule(optax.sgd(optax.linear_schedule(0.5, 0.0, 5)), kind="sched")
    np.testing.assert_allclose(_final(a), 0.9**5, rtol=1e-12)
    # lr_t = 0.5 (1 - t/5): prod_t (1 - lr_t)
    expect = np.prod([1 - 0.5 * (1 - t / 5) for t in range(5)])
    np.testing.assert_allclose(_final(b), expect, rtol=1e-7)  # optax schedules are float32


def test_same_rule_object_reuses_its_compiled_step():
    rule = _closure_rule(0.2)
    np.testing.assert_allclose(_final(rule), 0.8**5, rtol=1e-12)
    np.testing.assert_allclose(_final(rule), 0.8**5, rtol=1e-12)
