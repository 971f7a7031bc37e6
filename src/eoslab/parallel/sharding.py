r"""Data-parallel objectives: the example axis sharded over a device mesh.

A full-batch loss is a reduction over examples, $L(w) = \frac1N\sum_i \ell_i(w)$, and so are its
gradient, HVPs and third derivatives. `shard_objective` places every per-example array of an
objective along a 1-D ``Mesh(devices, ("data",))`` with ``NamedSharding(mesh, P("data"))`` and
replicates everything else (parameters ``w0``, frozen parameters). The jitted eoslab code
(``jax.grad``, an operator's ``mv``/``mm``, `top_eigenpairs`, `EigenTracker`, the rules) then
runs unchanged: XLA's SPMD partitioner computes each device's partial sums and joins them with an
``all-reduce``, and everything of parameter shape (gradients, eigenvectors, Lanczos bases) stays
replicated. `compiled_collectives` shows the collectives in a compiled program.

Which arrays are per-example:
  * ``from_model`` layout (``data = {"x", "y", "frozen"[, "weight"]}``): ``x``, ``y`` and
    ``weight`` along axis 0; ``frozen`` replicated;
  * any other data pytree: every array leaf with at least one axis; they must share their axis-0
    length $N$. Scalars are replicated.

Example counts not divisible by the number of devices $n$: a mean objective (``from_model`` with
a per-example-mean loss, see `eoslab.mean_objective`) is padded with
$\lceil N/n\rceil n - N$ zero-weight examples and evaluated as $\sum_i m_i\ell_i$,
$m_i = 1/N$ on real examples, $0$ on padding: the same function of $w$. Any other objective is
refused with `ConfigError` (XLA shardings must divide the axis evenly, and a general
``fn(w, data)`` cannot be told to ignore padding).

Multi-host: after `eoslab.parallel.initialize`, ``jax.devices()`` lists every process's devices;
each process builds the same objective (the full data on each host) and `shard_objective` keeps
on each host only the shards of its own devices (``jax.make_array_from_callback``). Results are
then global arrays: read a replicated one with ``x.addressable_data(0)``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..errors import ConfigError
from ..mean_objective import batch_size_of, mean_parts, weighted_objective
from ..objective import Objective

__all__ = ["compiled_collectives", "data_mesh", "shard_objective", "is_sharded"]

AXIS = "data"


def data_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over the first ``devices`` of ``jax.devices()`` (all if None)."""
    avail = jax.devices()
    if devices is None:
        devices = len(avail)
    if (
        isinstance(devices, bool)
        or not isinstance(devices, (int, np.integer))
        or not 1 <= devices <= len(avail)
    ):
        raise ConfigError(
            "devices",
            devices,
            f"an int in [1, {len(avail)}] (jax.devices() has {len(avail)})",
            "On CPU, more host devices: XLA_FLAGS=--xla_force_host_platform_device_count=N "
            "set before jax is imported.",
        )
    return Mesh(np.array(avail[: int(devices)]), (AXIS,))


def _place(a: Any, sharding: NamedSharding) -> jax.Array:
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def _is_model_layout(data: Any) -> bool:
    return isinstance(data, dict) and {"x", "y", "frozen"} <= set(data)


def _example_count(obj: Objective) -> int:
    data = obj.data
    if _is_model_layout(data):
        n = int(np.shape(data["x"])[0])
        for k in ("y", "weight"):
            if k in data and int(np.shape(data[k])[0]) != n:
                raise ConfigError(f"data[{k!r}].shape", np.shape(data[k]), f"({n}, ...)")
        return n
    leaves = [a for a in jax.tree_util.tree_leaves(data) if np.ndim(a) >= 1]
    if not leaves:
        raise ConfigError(
            "objective.data",
            "<no array with an example axis>",
            "data with per-example arrays (axis 0 = examples) to shard",
        )
    sizes = sorted({int(np.shape(a)[0]) for a in leaves})
    if len(sizes) != 1:
        raise ConfigError(
            "objective.data",
            f"<axis-0 lengths {sizes}>",
            "per-example arrays sharing axis 0",
            "Build the objective with Objective.from_model (x, y per example; parameters in "
            "'frozen') so eoslab knows which arrays are per-example.",
        )
    return sizes[0]


def shard_objective(obj: Objective, devices: int | None = None) -> Objective:
    r"""``obj`` with its examples sharded over the first ``devices`` of ``jax.devices()``.

    The returned objective is the same function of $w$ (for padded mean objectives, up to
    floating-point summation order); its ``w0`` and non-example data are replicated over the mesh.

    Raises:
        ConfigError: ``devices`` out of range, data without a clear example axis, or $N$ not
            divisible by ``devices`` for an objective that is not a mean over examples.
    """
    if not isinstance(obj, Objective):
        raise ConfigError("objective", type(obj).__name__, "an eoslab.Objective")
    mesh = data_mesh(devices)
    n_dev = mesh.devices.size
    n = _example_count(obj)
    b = batch_size_of(obj)
    if n % n_dev or (b is not None and b % n_dev):
        try:
            mean_parts(obj, "objective")
        except ConfigError as exc:
            raise ConfigError(
                "devices",
                n_dev,
                f"a divisor of the example count N={n} for this objective",
                "Only mean objectives (Objective.from_model with mse_half, mse_sum or "
                f"cross_entropy) can be padded with zero-weight examples ({exc.accepted}).",
            ) from exc
        obj = weighted_objective(obj, multiple=n_dev)
    rows = NamedSharding(mesh, PartitionSpec(AXIS))
    repl = NamedSharding(mesh, PartitionSpec())
    data = obj.data
    if _is_model_layout(data):
        new = {
            k: (
                _place(v, rows)
                if k in ("x", "y", "weight")
                else jax.tree_util.tree_map(lambda a: _place(a, repl), v)
            )
            for k, v in data.items()
        }
    else:
        new = jax.tree_util.tree_map(lambda a: _place(a, rows if np.ndim(a) >= 1 else repl), data)
    return dataclasses.replace(obj, data=new, w0=_place(obj.w0, repl))


def is_sharded(obj: Objective) -> int:
    """How many devices the objective's data span (1 for an unsharded objective)."""
    leaves = [a for a in jax.tree_util.tree_leaves(obj.data) if isinstance(a, jax.Array)]
    return max((len(a.sharding.device_set) for a in leaves), default=1)


_COLLECTIVE = re.compile(
    r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|"
    r"collective-permute)(?:-start)?\("
)


def compiled_collectives(fn: Any, *args: Any) -> dict[str, int]:
    """Count the collectives in the optimised HLO of ``eqx.filter_jit(fn)(*args)``.

    >>> # compiled_collectives(lambda o, w: jax.grad(o)(w), sharded_obj, w)["all-reduce"] >= 1
    """
    dyn, static = eqx.partition(args, eqx.is_array)
    jitted = jax.jit(lambda d: fn(*eqx.combine(d, static)))
    text = jitted.lower(dyn).compile().as_text()
    counts: dict[str, int] = {}
    for m in _COLLECTIVE.finditer(text):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts
