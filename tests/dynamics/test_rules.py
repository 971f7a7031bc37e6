"""Each update rule against a step computed by hand, and each threshold against a 1-D quadratic;
one class per rule, found by its kind in the registry and recorded with its threshold."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab.dynamics import rules
from eoslab.errors import ConfigError
from eoslab.experiments import from_dict, to_dict

W0 = np.array([1.0, -2.0, 0.5], np.float32)
G1 = np.array([0.3, -1.0, 2.0], np.float32)
G2 = np.array([-0.5, 0.25, 1.0], np.float32)
LOSS = 0.8


def _two_steps(rule, loss_min=0.0):
    """Two steps at the gradients G1, G2 and the losses LOSS, LOSS / 2 (each passed as
    L - loss_min, as the processes do)."""
    s = rule.init(jnp.asarray(W0))
    w1, s, i1 = rule.step(jnp.asarray(W0), s, jnp.asarray(G1), jnp.asarray(LOSS - loss_min))
    w2, s, i2 = rule.step(w1, s, jnp.asarray(G2), jnp.asarray(LOSS / 2 - loss_min))
    return np.asarray(w1), np.asarray(w2), i1, i2, s


def test_gd():
    w1, w2, i1, _, _ = _two_steps(rules.GD(0.1))
    np.testing.assert_allclose(w1, W0 - 0.1 * G1, rtol=1e-6)
    np.testing.assert_allclose(w2, W0 - 0.1 * G1 - 0.1 * G2, rtol=1e-6)
    assert float(i1.lr_eff) == pytest.approx(0.1)
    assert float(i1.threshold) == pytest.approx(20.0)


def test_heavy_ball():
    lr, b = 0.1, 0.9
    w1, w2, _, i2, _ = _two_steps(rules.HeavyBall(lr, b))
    np.testing.assert_allclose(w1, W0 - lr * G1, rtol=1e-6)
    # w2 = w1 - lr g2 + beta (w1 - w0)
    np.testing.assert_allclose(w2, w1 - lr * G2 + b * (w1 - W0), rtol=1e-5, atol=1e-6)
    assert float(i2.threshold) == pytest.approx((2 + 2 * b) / lr)


def test_nesterov():
    lr, b = 0.1, 0.5
    w1, w2, _, i2, _ = _two_steps(rules.Nesterov(lr, b))
    m1 = G1
    np.testing.assert_allclose(w1, W0 - lr * (G1 + b * m1), rtol=1e-6)
    m2 = b * m1 + G2
    np.testing.assert_allclose(w2, w1 - lr * (G2 + b * m2), rtol=1e-5, atol=1e-6)
    assert float(i2.threshold) == pytest.approx((2 + 2 * b) / ((1 + 2 * b) * lr))


def test_normalized_gd():
    lr = 0.05
    w1, w2, i1, _, _ = _two_steps(rules.NormalizedGD(lr))
    n1 = np.linalg.norm(G1)
    np.testing.assert_allclose(w1, W0 - lr * G1 / n1, rtol=1e-6)
    assert np.linalg.norm(w2 - w1) == pytest.approx(lr, rel=1e-5)
    assert float(i1.lr_eff) == pytest.approx(lr / n1, rel=1e-6)
    assert float(i1.threshold) == pytest.approx(2 * n1 / lr, rel=1e-6)


def test_sqrt_loss_gd():
    lr, lmin = 0.1, 0.3
    w1, w2, i1, i2, _ = _two_steps(rules.SqrtLossGD(lr), loss_min=lmin)
    eta1 = lr / (2 * np.sqrt(LOSS - lmin))
    np.testing.assert_allclose(w1, W0 - eta1 * G1, rtol=1e-6)
    # the second loss (0.4) is still above loss_min
    eta2 = lr / (2 * np.sqrt(LOSS / 2 - lmin))
    np.testing.assert_allclose(w2, w1 - eta2 * G2, rtol=1e-5)
    assert float(i1.lr_eff) == pytest.approx(eta1, rel=1e-6)
    assert float(i1.threshold) == pytest.approx(2 / eta1, rel=1e-5)
    # at the minimum (L - L_min = 0): no step, no NaN
    r = rules.SqrtLossGD(lr)
    w, _, info = r.step(jnp.asarray(W0), r.init(W0), jnp.asarray(G1), jnp.asarray(0.0))
    np.testing.assert_array_equal(np.asarray(w), W0)
    assert float(info.lr_eff) == 0.0


def test_sqrt_loss_gd_matches_gd_on_sqrt_objective():
    from eoslab import Objective
    from eoslab.dynamics import Optimizer

    f = lambda w: 0.5 * jnp.sum(jnp.array([3.0, 1.0, 0.5]) * w**2) + 0.2
    obj = Objective.from_fn(f, W0, loss_min=0.2)
    sq = obj.sqrt()
    lr = 0.1
    w_gd = W0 - lr * np.asarray(jax.grad(sq)(jnp.asarray(W0)))
    r = rules.SqrtLossGD(lr)
    w_r, _, _ = r.step(
        jnp.asarray(W0), r.init(W0), jax.grad(obj)(jnp.asarray(W0)), obj(jnp.asarray(W0)) - 0.2
    )
    np.testing.assert_allclose(np.asarray(w_r), w_gd, rtol=1e-5)
    # the process passes L - L_min with the objective's loss_min
    opt = Optimizer(r)
    state, _ = opt.step(obj, opt.init(obj, jnp.asarray(W0)))
    np.testing.assert_allclose(np.asarray(state.w), w_gd, rtol=1e-5)


def test_rmsprop():
    lr, b2, eps = 0.01, 0.9, 1e-3
    w1, w2, _, _, s = _two_steps(rules.RMSProp(lr, b2, eps, bias_correction=True))
    nu1 = (1 - b2) * G1**2
    p1 = np.sqrt(nu1 / (1 - b2)) + eps
    np.testing.assert_allclose(w1, W0 - lr * G1 / p1, rtol=1e-5)
    nu2 = b2 * nu1 + (1 - b2) * G2**2
    p2 = np.sqrt(nu2 / (1 - b2**2)) + eps
    np.testing.assert_allclose(w2, w1 - lr * G2 / p2, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(rules.RMSProp(lr, b2, eps).preconditioner(s)), p2, rtol=1e-5
    )
    # without bias correction
    r = rules.RMSProp(lr, b2, eps, bias_correction=False)
    w, st, info = r.step(jnp.asarray(W0), r.init(W0), jnp.asarray(G1), LOSS)
    np.testing.assert_allclose(np.asarray(w), W0 - lr * G1 / (np.sqrt(nu1) + eps), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(r.preconditioner(st)), np.sqrt(nu1) + eps, rtol=1e-5)
    assert float(info.threshold) == pytest.approx(2 / lr)


def test_adam():
    lr, b1, b2, eps = 0.01, 0.8, 0.95, 1e-4
    rule = rules.Adam(lr, b1, b2, eps)
    w1, w2, _, i2, s = _two_steps(rule)
    m1, v1 = (1 - b1) * G1, (1 - b2) * G1**2
    np.testing.assert_allclose(
        w1, W0 - lr * (m1 / (1 - b1)) / (np.sqrt(v1 / (1 - b2)) + eps), rtol=1e-5
    )
    m2, v2 = b1 * m1 + (1 - b1) * G2, b2 * v1 + (1 - b2) * G2**2
    p2 = np.sqrt(v2 / (1 - b2**2)) + eps
    np.testing.assert_allclose(w2, w1 - lr * (m2 / (1 - b1**2)) / p2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(rule.preconditioner(s)), p2, rtol=1e-5)
    assert float(i2.threshold) == pytest.approx((2 + 2 * b1) / ((1 - b1) * lr))
    assert rule.adaptive and not rules.GD(0.1).adaptive
    assert rules.GD(0.1).preconditioner(rules.GD(0.1).init(W0)) is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: rules.GD(0.1),
        lambda: rules.HeavyBall(0.1, 0.5),
        lambda: rules.Nesterov(0.1, 0.5),
        lambda: rules.HeavyBall(0.05, 0.9),
        lambda: rules.Nesterov(0.05, 0.9),
    ],
)
def test_threshold_separates_stable_from_unstable(make):
    """On L = lam w^2 / 2 the rule converges for lam just below its threshold, blows up above."""
    rule = make()
    thr = float(rule.step(jnp.ones(1), rule.init(jnp.ones(1)), jnp.ones(1), 1.0)[2].threshold)
    assert thr == pytest.approx(rule.threshold(), rel=1e-6)  # the step reports its own formula

    def final(lam):
        w, s = jnp.ones(1, jnp.float32), rule.init(jnp.ones(1, jnp.float32))
        step = jax.jit(rule.step)
        for _ in range(400):
            w, s, _ = step(w, s, lam * w, 0.5 * lam * w @ w)
        return abs(float(w[0]))

    assert final(0.97 * thr) < 1.0
    assert not final(1.03 * thr) < 10.0  # grows (or overflows)


@pytest.mark.parametrize("name", sorted(rules.RULES))
def test_bad_lr_rejected(name):
    with pytest.raises(ConfigError, match="lr") as e:
        rules.RULES[name](-1.0)
    assert e.value.field == "lr"


def test_bad_beta_rejected():
    with pytest.raises(ConfigError, match="beta1"):
        rules.Adam(0.1, beta1=1.0)
    with pytest.raises(ConfigError, match="beta"):
        rules.HeavyBall(0.1, beta=-0.1)


@pytest.mark.parametrize("name", sorted(rules.RULES))
def test_float64_stays_float64(name):
    with jax.enable_x64(True):
        for dtype in (jnp.float32, jnp.float64):
            rule = rules.RULES[name](0.1)
            w = jnp.ones(3, dtype)
            g, loss = jnp.full(3, 0.5, dtype), jnp.asarray(1.0, dtype)
            w2, s, info = rule.step(w, rule.init(w), g, loss)
            assert w2.dtype == dtype
            assert info.lr_eff.dtype == dtype


def test_the_registry_is_one_class_per_kind():
    assert rules.RULES == {
        "gd": rules.GD,
        "normalized_gd": rules.NormalizedGD,
        "sqrt_loss_gd": rules.SqrtLossGD,
        "heavy_ball": rules.HeavyBall,
        "nesterov": rules.Nesterov,
        "rmsprop": rules.RMSProp,
        "adam": rules.Adam,
    }
    for kind, cls in rules.RULES.items():
        assert cls.kind == kind and issubclass(cls, rules.Rule)
        assert not cls.__subclasses__()  # final: abstract base, concrete leaves
    with pytest.raises(TypeError):
        rules.Rule()  # abstract


# each rule's record: its fields, display name, threshold formula and value (by hand)
RECORDS = [
    (rules.GD(0.1), {"lr": 0.1}, "GD", "2/lr", 20.0),
    (rules.NormalizedGD(0.5), {"lr": 0.5}, "normalized GD", "2/lr_eff = 2|∇L|/lr", None),
    (rules.SqrtLossGD(0.2), {"lr": 0.2}, "GD on sqrt(L)", "2/lr_eff = 4 sqrt(L)/lr", None),
    (rules.HeavyBall(0.1, 0.5), {"lr": 0.1, "beta": 0.5}, "heavy ball", "(2+2β)/lr", 30.0),
    (rules.Nesterov(0.1, 0.5), {"lr": 0.1, "beta": 0.5}, "Nesterov", "(2+2β)/((1+2β) lr)", 15.0),
    (
        rules.RMSProp(0.01),
        {"lr": 0.01, "beta2": 0.99, "eps": 1e-8, "bias_correction": True},
        "RMSProp",
        "2/lr",
        200.0,
    ),
    (
        rules.Adam(0.01, 0.8),
        {"lr": 0.01, "beta1": 0.8, "beta2": 0.999, "eps": 1e-8},
        "Adam",
        "(2+2β1)/((1-β1) lr)",
        1800.0,  # 3.6 / (0.2 * 0.01)
    ),
]


@pytest.mark.parametrize("rule, fields, name, formula, threshold", RECORDS)
def test_describe_records_name_and_threshold_and_round_trips(
    rule, fields, name, formula, threshold
):
    rec = rule.describe()
    assert rec == {
        "kind": rule.kind,
        **fields,
        "name": name,
        "threshold_formula": formula,
        "threshold": pytest.approx(threshold) if threshold is not None else None,
    }
    cfg = from_dict({"rule": rec})
    assert cfg.rule == rule and to_dict(cfg)["rule"] == rec
    old = {"kind": rule.kind, **fields}  # config.json before rules recorded name and threshold
    assert from_dict({"rule": old}).rule == rule


def test_a_recorded_threshold_must_be_the_rules_own():
    with pytest.raises(ConfigError) as e:
        from_dict({"rule": {"kind": "gd", "lr": 0.1, "threshold": 30.0}})
    assert e.value.field == "rule.threshold" and "2/lr" in e.value.accepted
    with pytest.raises(ConfigError) as e:
        from_dict({"rule": {"kind": "normalized_gd", "lr": 0.1, "threshold": 3.0}})
    assert e.value.field == "rule.threshold"


def test_equal_rules_are_equal_configs():
    assert rules.GD(0.1) == rules.GD(lr=0.1) and rules.GD(0.1) != rules.GD(0.2)
    assert hash(rules.Adam(0.01)) == hash(rules.Adam(0.01))


def test_optax_rule_reports_what_it_is_given():
    import optax

    r = rules.OptaxRule(optax.sgd(0.5), kind="sgd", lr=0.5, threshold_value=4.0)
    w, _, info = r.step(jnp.asarray(W0), r.init(W0), jnp.asarray(G1), 0.0)
    np.testing.assert_allclose(np.asarray(w), W0 - 0.5 * G1, rtol=1e-6)
    assert float(info.lr_eff) == 0.5 and float(info.threshold) == 4.0
    assert r.kind == r.name == "sgd" and not r.adaptive and "sgd" not in rules.RULES
    unknown = rules.OptaxRule(optax.sgd(0.5))
    info = unknown.step(jnp.asarray(W0), unknown.init(W0), jnp.asarray(G1), 0.0)[2]
    assert np.isnan(float(info.lr_eff)) and np.isnan(float(info.threshold))
    adam = rules.OptaxRule(optax.adam(0.01), kind="adam", precondition=lambda s: s[0].nu + 1.0)
    s = adam.step(jnp.asarray(W0), adam.init(W0), jnp.asarray(G1), 0.0)[1]
    assert adam.adaptive
    np.testing.assert_allclose(np.asarray(adam.preconditioner(s)), 0.001 * G1**2 + 1, rtol=1e-5)
    with pytest.raises(ConfigError) as e:
        rules.OptaxRule(optax.sgd(0.5), kind="")
    assert e.value.field == "kind"
