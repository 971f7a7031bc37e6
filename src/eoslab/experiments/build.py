"""From an `Experiment` config to what the one loop runs: objective, processes, probes, stop."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import data, losses, models
from ..batches import check_batch_size, example_count
from ..dynamics.minibatch import MiniBatch
from ..dynamics.optimizer import Optimizer
from ..dynamics.process import Process
from ..errors import ConfigError
from ..objective import Objective
from ..parallel import batch_size_of, microbatched, shard_objective, shard_params
from ..runner import Accuracy, BatchSharpness
from .config import Experiment, ModelProblem, QuadraticProblem, ToyMLPProblem, ValleyProblem

__all__ = ["Built", "build"]


@dataclasses.dataclass
class Built:
    """Everything `eoslab.runner.run` needs for one experiment."""

    objective: Objective
    processes: dict[str, Process]  # the optimizer (named after its rule) first, then compare
    custom_probes: tuple  # e.g. the accuracy probe
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


def _dataset_to_load(p: ModelProblem) -> tuple[str, dict]:
    """The dataset to read: ``p.dataset``, or with ``if_missing="synthetic"`` its synthetic
    stand-in when the files are not found (warned, and recorded for the manifest)."""
    if p.if_missing != "synthetic":
        return p.dataset, {}
    spec = data.DATASETS[p.dataset]
    if spec.locate(Path(p.data_dir).expanduser() if p.data_dir else None) is not None:
        return p.dataset, {"synthetic_data": False}
    twin = data.synthetic_twin(p.dataset)
    where = p.data_dir if p.data_dir else "the default data directory"
    warnings.warn(
        f"dataset {p.dataset!r} not found in {where}: running on {twin!r}, synthetic data of "
        "the same shapes (times and memory are those of the real run, the dynamics are not)",
        UserWarning,
        stacklevel=3,
    )
    return twin, {"synthetic_data": True, "synthetic_dataset": twin}


def _model(p: ModelProblem, seed: int, dtype) -> tuple[Objective, Any, dict]:
    name, note = _dataset_to_load(p)
    ds = data.load(name, n=p.n, subset=p.subset, seed=seed, data_dir=p.data_dir, scaling=p.scaling)
    apply, params = models.create(
        p.model, jax.random.PRNGKey(seed), ds.input_shape, ds.num_classes, **p.model_options
    )
    if dtype == jnp.float64:
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    loss = getattr(losses, p.loss)
    obj = Objective.from_model(apply, params, ds, loss, dtype=dtype)
    probe = Accuracy.of(obj)  # classification datasets (integer labels); as eoslab.train
    info = {
        "dim": obj.dim,
        "n_train": int(np.shape(ds.x_train)[0]),
        "num_classes": ds.num_classes,
        "dataset": getattr(ds, "name", p.dataset),
        **note,
    }
    return obj, probe, info


def _valley_loss(w, data):
    del data
    return (1 + w[0] ** 2) * w[1] ** 2 + 0.3 * jnp.sum(w[2:] ** 2)


def _valley(p: ValleyProblem, dtype) -> tuple[Objective, None, dict]:
    w0 = np.array([p.x0] + [p.y0] * (1 + p.extra))
    obj = Objective.from_data_fn(_valley_loss, None, w0.astype(dtype), dtype=dtype)
    return obj, None, {"dim": obj.dim}


def build(exp: Experiment) -> Built:
    """Objective, processes and custom probes for ``exp`` (raises `ConfigError` up front).

    A float64 experiment must be built (and run) inside ``jax.enable_x64(True)``; see `execute`.
    """
    dtype = jnp.float64 if exp.dtype == "float64" else jnp.float32
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ConfigError("dtype", "float64", "float32, or build inside jax.enable_x64(True)")
    p = exp.problem
    if isinstance(p, QuadraticProblem):
        obj, acc, info = _quadratic(p, dtype)
    elif isinstance(p, ToyMLPProblem):
        obj, acc, info = _toy_mlp(p, exp.seed, dtype)
    elif isinstance(p, ValleyProblem):
        obj, acc, info = _valley(p, dtype)
    else:
        obj, acc, info = _model(p, exp.seed, dtype)
    if exp.matmul_dtype != "param":
        obj = obj.with_matmul_dtype(exp.matmul_dtype)
        info["matmul_dtype"] = exp.matmul_dtype
    if exp.microbatch is not None:
        obj = microbatched(obj, batch_size=exp.microbatch)
    if exp.devices != 1:
        obj = shard_objective(obj, devices=exp.devices)
    if exp.shard_params:
        obj = shard_params(obj, devices=exp.devices)
    custom: tuple = (acc,) if (acc is not None and exp.accuracy) else ()
    if exp.batch_size is None:
        processes: dict[str, Process] = {exp.rule.kind: Optimizer(exp.rule)}
    else:
        _check_batches(obj, exp.batch_size)
        processes = {exp.rule.kind: MiniBatch(exp.rule, exp.batch_size, exp.seed)}
        if exp.batch_sharpness:
            custom += (_batch_probe(exp),)
        info["batch_size"] = exp.batch_size
    processes.update(exp.compare)
    return Built(obj, processes, custom, info)


def _check_batches(obj: Objective, batch_size: int) -> None:
    """``batch_size`` against the built objective: at most its $N$ examples (on-disk data may hold
    fewer than the registry says) and, micro-batched in blocks of $m$, at most $m$ or a multiple
    of $m$."""
    n = example_count(obj, "problem")
    check_batch_size(batch_size, n)
    m = batch_size_of(obj)
    if m is not None and batch_size > m and batch_size % m:
        raise ConfigError(
            "batch_size", batch_size, f"at most {m} or a multiple of {m} (the micro-batch)"
        )


def _batch_probe(exp: Experiment) -> BatchSharpness:
    r"""Batch sharpness $\mathbb{E}_B[g_B^\top H_B g_B/\|g_B\|^2]$ at probed steps, to
    ``batch_sharpness_rel_err``: one HVP of a batch loss per batch. The per-batch Lanczos
    $\lambda_{\max}$ (a Lanczos run per batch) and the GNI (a full-batch HVP per batch) are left
    to `eoslab.runner.BatchSharpness` from Python: each costs far more."""
    return BatchSharpness(
        exp.batch_size,
        rel_err=exp.batch_sharpness_rel_err,
        seed=exp.seed,
        lambda_max=False,
        gni=False,
    )
