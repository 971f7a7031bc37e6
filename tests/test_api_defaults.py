"""The Python API and the command line agree: a step budget of 0 is refused by both before any
work, and both measure a classifier's training accuracy by default."""

from __future__ import annotations

import inspect
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoslab import Objective, rules, train
from eoslab.cli import main
from eoslab.errors import ConfigError
from eoslab.experiments import Experiment, ModelProblem, build, execute, from_dict
from eoslab.runner import Accuracy, Probes


def _quadratic() -> Objective:
    return Objective.from_fn(lambda w: 0.5 * jnp.sum(jnp.array([4.0, 1.0]) * w**2), jnp.ones(2))


# ------------------------------------------------------------------ steps >= 1 everywhere
@pytest.mark.parametrize("steps", [0, -3, 2.0, True])
def test_train_refuses_a_budget_below_one_step_before_any_work(tmp_path, steps):
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        train(_quadratic(), rules.GD(0.1), steps, out=out)
    assert err.value.field == "steps" and err.value.accepted == "an integer >= 1"
    assert not out.exists()


def test_experiment_and_config_files_refuse_zero_steps():
    with pytest.raises(ConfigError) as err:
        Experiment(steps=0)
    assert err.value.field == "steps" and "an integer >= 1" in str(err.value)
    with pytest.raises(ConfigError) as err:
        from_dict({"steps": 0})
    assert err.value.field == "steps"
    assert Experiment(steps=1).steps == 1


def test_cli_refuses_zero_steps_with_exit_2_and_no_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    try:  # a flag: the config's own error, reported by tyro or by eoslab (one line)
        code = main(["run", "toy", "--steps", "0", "--out", str(out), "--no-plot"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "steps" in err and "integer >= 1" in " ".join(err.split())
    assert not out.exists()
    cfg = tmp_path / "exp.json"
    cfg.write_text(json.dumps({"problem": {"kind": "toy-mlp"}, "steps": 0}))
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 2
    assert "steps" in capsys.readouterr().err and not out.exists()
    assert main(["demo", "--out", str(out), "--steps", "0"]) == 2
    assert "an integer >= 1" in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------ accuracy on by default
D, H, K, N = 2, 8, 3, 60


def _apply(params, x):
    return jnp.tanh(x @ params["W1"]) @ params["W2"]


def _classifier(labels_float: bool = False) -> Objective:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(0, K, N).astype(np.int32)
    params = {
        "W1": jnp.asarray(rng.normal(size=(D, H)) / np.sqrt(D), jnp.float32),
        "W2": jnp.asarray(rng.normal(size=(H, K)) / np.sqrt(H), jnp.float32),
    }
    targets = np.eye(K, dtype=np.float32)[y] if labels_float else y
    return Objective.from_model(_apply, params, (x, targets), "mse_half"), x, y


def _numpy_accuracy(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    # ravel_pytree order: dict keys sorted (W1, W2), each row-major
    W1 = w[: D * H].reshape(D, H)
    W2 = w[D * H :].reshape(H, K)
    out = np.tanh(x.astype(np.float64) @ W1) @ W2
    return float(np.mean(np.argmax(out, axis=1) == y))


def test_train_and_experiment_share_the_accuracy_default():
    assert inspect.signature(train).parameters["accuracy"].default is True
    assert Experiment().accuracy is True


NO_SHARPNESS = Probes(sharpness=False)  # accuracy alone: no eigen-solver to compile


def test_train_measures_a_classifiers_accuracy_by_default():
    obj, x, y = _classifier()
    run = train(obj, rules.GD(0.5), 20, probe_every=10, probes=NO_SHARPNESS)
    probed = run.metrics[run.metrics["accuracy"].notna()]
    assert list(probed["step"]) == [0, 10, 20]
    w_end = np.asarray(run.point(), np.float64)
    assert probed["accuracy"].iloc[-1] == pytest.approx(_numpy_accuracy(w_end, x, y), abs=1e-6)
    w0 = np.asarray(obj.w0, np.float64)
    assert probed["accuracy"].iloc[0] == pytest.approx(_numpy_accuracy(w0, x, y), abs=1e-6)
    off = train(obj, rules.GD(0.5), 20, probe_every=10, probes=NO_SHARPNESS, accuracy=False)
    assert "accuracy" not in off.metrics


def test_accuracy_probe_only_for_integer_class_labels():
    obj, x, y = _classifier()
    probe = Accuracy.of(obj)
    w = np.asarray(obj.w0, np.float64) + 0.3 * np.sin(np.arange(obj.dim))
    expected = _numpy_accuracy(w, x, y)
    assert float(probe.value(jnp.asarray(w, obj.dtype))) == pytest.approx(expected)
    # the sqrt transform keeps the classifier underneath
    assert float(Accuracy.of(obj.sqrt()).value(jnp.asarray(w, obj.dtype))) == (
        pytest.approx(expected)
    )
    regression, _, _ = _classifier(labels_float=True)  # real targets: no classes to count
    assert Accuracy.of(regression) is None
    assert Accuracy.of(_quadratic()) is None


def test_api_and_cli_give_the_same_accuracy_column():
    exp = Experiment(
        problem=ModelProblem(model="fc-tanh-depth1", dataset="gaussian-mixture-2", n=48),
        rule=rules.GD(lr=0.2),
        steps=10,
        probe_every=5,
        probes=NO_SHARPNESS,
    )
    via_cli = execute(exp).metrics
    objective = build(exp).objective
    via_api = train(objective, rules.GD(0.2), 10, probe_every=5, probes=NO_SHARPNESS).metrics
    a = via_cli.loc[via_cli["accuracy"].notna(), ["step", "accuracy"]].to_numpy()
    b = via_api.loc[via_api["accuracy"].notna(), ["step", "accuracy"]].to_numpy()
    np.testing.assert_array_equal(a[:, 0], [0, 5, 10])
    np.testing.assert_allclose(a, b, atol=1e-6)
    # independent: argmax of the network's outputs at the start, by hand
    x = np.asarray(objective.data["x"], np.float64)
    labels = np.asarray(objective.data["y"])
    p = jax.tree_util.tree_map(np.asarray, objective.unravel(objective.w0))
    hidden = np.tanh(x @ p["dense0"]["w"] + p["dense0"]["b"])  # fc-tanh-depth1: one tanh layer
    out = hidden @ p["head"]["w"] + p["head"]["b"]
    assert a[0, 1] == pytest.approx(np.mean(np.argmax(out, axis=1) == labels), abs=1e-6)
