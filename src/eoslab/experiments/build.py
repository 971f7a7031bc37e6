"""From an `Experiment` config to the objects `eoslab.train` runs: objective, rule, probes, stop."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..dynamics.rules import Rule
from ..errors import ConfigError
from ..objective import Objective
from .config import Experiment, ModelProblem, QuadraticProblem, ToyMLPProblem

__all__ = ["Built", "build"]


@dataclasses.dataclass
class Built:
    """Everything `eoslab.train` needs for one experiment."""

    objective: Objective
    rule: Rule
    probes: Any  # eoslab.runner.Probes
    stop: Any  # eoslab.runner.Stop
    info: dict


# --------------------------------------------------------------------------- problems
def _quadratic_loss(w, data):
    return 0.5 * jnp.sum(data * w * w)


def _quadratic(p: QuadraticProblem, dtype) -> tuple[Objective, None, dict]:
    h = np.geomspace(p.top, p.bottom, p.dim) if p.dim > 1 else np.array([p.top])
    obj = Objective.from_data_fn(
        _quadratic_loss, jnp.asarray(h, dtype), np.ones(p.dim, dtype), dtype=dtype
    )
    return obj, None, {"dim": p.dim}


def _toy_apply(params, x):
    W1, b1, W2, b2 = params
    return jnp.tanh(x @ W1 + b1) @ W2 + b2


def _toy_loss(w, data):
    x, y, unravel = data[0], data[1], None
    del unravel
    return 0.5 * jnp.mean(
        jnp.sum((_toy_apply(_toy_unravel(w, x.shape[1], y.shape[1]), x) - y) ** 2, axis=-1)
    )


def _toy_unravel(w, din, dout):
    width = (w.shape[0] - dout) // (din + 1 + dout)
    i = 0
    parts = []
    for shape in ((din, width), (width,), (width, dout), (dout,)):
        size = int(np.prod(shape))
        parts.append(w[i : i + size].reshape(shape))
        i += size
    return parts


def _toy_mlp(p: ToyMLPProblem, seed: int, dtype) -> tuple[Objective, None, dict]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(p.n, p.din))
    teacher = [
        rng.normal(size=(p.din, p.width)) / np.sqrt(p.din),
        np.zeros(p.width),
        rng.normal(size=(p.width, p.dout)) / np.sqrt(p.width),
        np.zeros(p.dout),
    ]
    y = np.tanh(x @ teacher[0]) @ teacher[2]
    w0 = np.concatenate(
        [
            rng.normal(size=(p.din, p.width)).ravel() / np.sqrt(p.din),
            np.zeros(p.width),
            rng.normal(size=(p.width, p.dout)).ravel() / np.sqrt(p.width),
            np.zeros(p.dout),
        ]
    )
    data = (jnp.asarray(x, dtype), jnp.asarray(y, dtype))
    obj = Objective.from_data_fn(_toy_loss, data, w0.astype(dtype), dtype=dtype)
    return obj, None, {"dim": obj.dim}


@dataclasses.dataclass(frozen=True)
class _AccuracyProbe:
    """Training accuracy of a classifier: argmax of the outputs against the labels."""

    apply: Any
    unravel: Any

    def __call__(self, w, objective, cache) -> dict:
        del objective, cache
        return {"accuracy": float(self._acc(w))}

    def bind(self, x, y):
        labels = jnp.argmax(y, axis=-1) if y.ndim > 1 else y

        @jax.jit
        def acc(w):
            out = self.apply(self.unravel(w), x)
            return jnp.mean(jnp.argmax(out, axis=-1) == labels)

        object.__setattr__(self, "_acc", acc)
        return self


def _require(module: str):
    try:
        return importlib.import_module(f"eoslab.{module}")
    except ImportError as exc:
        raise ConfigError(
            "problem.kind",
            "model",
            "'quadratic' or 'toy-mlp' (the model zoo is not installed)",
            f"eoslab.{module} could not be imported: {exc}",
        ) from None


def _model(p: ModelProblem, seed: int, dtype) -> tuple[Objective, Any, dict]:
    models = _require("models")
    data = _require("data")
    losses = _require("losses")
    ds = data.load(p.dataset, n=p.n, subset=p.subset, seed=seed, data_dir=p.data_dir)
    apply, params = models.create(p.model, jax.random.PRNGKey(seed), ds.input_shape, ds.num_classes)
    if dtype == jnp.float64:
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    loss = getattr(losses, p.loss)
    obj = Objective.from_model(apply, params, ds, loss, dtype=dtype)
    probe = None
    if ds.num_classes and ds.num_classes > 1:
        probe = _AccuracyProbe(apply, obj.unravel).bind(
            jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
        )
    info = {
        "dim": obj.dim,
        "n_train": int(np.shape(ds.x_train)[0]),
        "num_classes": ds.num_classes,
        "dataset": getattr(ds, "name", p.dataset),
    }
    return obj, probe, info


def build(exp: Experiment) -> Built:
    """Objective, rule, probes and stopping rules for ``exp`` (raises `ConfigError` up front)."""
    from ..runner.train import Probes, Stop

    if exp.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if exp.dtype == "float64" else jnp.float32
    p = exp.problem
    if isinstance(p, QuadraticProblem):
        obj, acc, info = _quadratic(p, dtype)
    elif isinstance(p, ToyMLPProblem):
        obj, acc, info = _toy_mlp(p, exp.seed, dtype)
    else:
        obj, acc, info = _model(p, exp.seed, dtype)
    rule = exp.rule.build(obj.loss_min)
    custom = (acc,) if (acc is not None and exp.probes.accuracy) else ()
    probes = Probes(
        k=exp.probes.k,
        tol=exp.probes.tol,
        effective=exp.probes.effective,
        alignment=exp.probes.alignment,
        stableness=exp.probes.stableness,
        custom=custom,
    )
    stop = Stop(loss_below=exp.stop.loss_below, accuracy_above=exp.stop.accuracy_above)
    return Built(obj, rule, probes, stop, info)
