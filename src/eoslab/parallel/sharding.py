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

Parameters (FSDP): `shard_params` splits the flat parameter vector $w \in \mathbb{R}^D$ itself
over the same devices, ``NamedSharding(mesh, P("data"))``: each device holds $D/n$ entries of $w$,
of the gradient, of every Hessian product and of every eigen-solver vector (Lanczos bases,
LOBPCG blocks, Ritz vectors), and of the optimizer's state. Inside the loss the parameters are
constrained to their shards and then to a replicated layout (``with_sharding_constraint`` twice):
XLA all-gathers them for the forward pass, and the transpose of those two constraints makes the
gradient's (and an HVP's) partial sums over the example shards land sharded again (an
all-reduce or reduce-scatter). One mesh axis serves both, as in FSDP: the examples and the
parameters are split over the same $n$ devices. $D$ must be divisible by $n$ (XLA shards evenly;
a `ConfigError` says so otherwise).

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

__all__ = [
    "compiled_collectives",
    "data_mesh",
    "is_sharded",
    "params_sharded",
    "shard_objective",
    "shard_params",
]

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
    split = params_sharded(obj)
    if split > 1 and split != n_dev:
        raise ConfigError("devices", n_dev, f"{split}: the devices the parameters are split over")
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
    w0 = obj.w0 if split > 1 else _place(obj.w0, repl)  # parameters in shards stay so
    return dataclasses.replace(obj, data=new, w0=w0)


def is_sharded(obj: Objective) -> int:
    """How many devices the objective's data span (1 for an unsharded objective)."""
    leaves = [a for a in jax.tree_util.tree_leaves(obj.data) if isinstance(a, jax.Array)]
    return max((len(a.sharding.device_set) for a in leaves), default=1)


@dataclasses.dataclass(frozen=True)
class GatheredParams:
    r"""``w -> unravel(w)`` with $w$ held in shards over a mesh and all-gathered before use.

    ``with_sharding_constraint(w, shards)`` then ``with_sharding_constraint(w, full)``: outside the
    loss $w$ (and, by the transpose of the constraints, its gradient and tangents) is split over
    the mesh; inside it is whole on every device. Hashable: objectives sharded alike share
    compiled code.
    """

    unravel: Any
    shards: NamedSharding
    full: NamedSharding

    def __call__(self, w: jax.Array) -> Any:
        w = jax.lax.with_sharding_constraint(w, self.shards)
        return self.unravel(jax.lax.with_sharding_constraint(w, self.full))


@dataclasses.dataclass(frozen=True)
class GatheredFn:
    """``fn(gather(w), data)`` for an objective that is not a model's (``fn(w, data)``)."""

    fn: Any
    gather: GatheredParams

    def __call__(self, w: jax.Array, data: Any) -> jax.Array:
        return self.fn(self.gather(w), data)


def shard_params(obj: Objective, devices: int | None = None) -> Objective:
    r"""``obj`` with its flat parameter vector sharded over ``devices`` (FSDP-style).

    The same function of $w$; ``w0`` is placed in $n$ shards of $D/n$ entries, and every
    derivative is computed with the parameters all-gathered inside the loss and the results
    (gradients, Hessian products, eigenvectors) left in shards. Composes with `shard_objective`
    (the examples over the same devices; use the same ``devices``), and with `microbatched`
    in either order.

    Raises:
        ConfigError: ``devices`` out of range, $D$ not divisible by it, or data already sharded
            over another number of devices.

    >>> # obj = shard_params(shard_objective(obj, devices=8), devices=8)
    >>> # obj.w0.addressable_shards[0].data.shape == (obj.dim // 8,)
    """
    if not isinstance(obj, Objective):
        raise ConfigError("objective", type(obj).__name__, "an eoslab.Objective")
    mesh = data_mesh(devices)
    n_dev = int(mesh.devices.size)
    if obj.dim % n_dev:
        raise ConfigError(
            "shard_params",
            f"D={obj.dim} parameters over {n_dev} devices",
            "a parameter count divisible by the devices (XLA splits an axis evenly)",
            "Change a width by one, or shard over a divisor of D.",
        )
    on_data = is_sharded(obj)
    if on_data > 1 and on_data != n_dev:
        raise ConfigError("devices", n_dev, f"{on_data}: the devices the examples are sharded over")
    if obj.transform == "sqrt":
        return shard_params(obj.base(), devices).sqrt()
    shards = NamedSharding(mesh, PartitionSpec(AXIS))
    full = NamedSharding(mesh, PartitionSpec())
    fn = obj.fn
    if _has_unravel(fn):  # a model's loss (from_model, weighted, micro-batched): keep its type
        inner = fn.unravel.unravel if isinstance(fn.unravel, GatheredParams) else fn.unravel
        new_fn: Any = dataclasses.replace(fn, unravel=GatheredParams(inner, shards, full))
    else:
        inner = fn.fn if isinstance(fn, GatheredFn) else fn
        new_fn = GatheredFn(inner, GatheredParams(_identity, shards, full))
    return dataclasses.replace(obj, fn=new_fn, w0=_place(obj.w0, shards))


def _identity(w: jax.Array) -> jax.Array:
    return w


def _has_unravel(fn: Any) -> bool:
    """A dataclass loss with an ``unravel`` field (`eoslab.objective.ModelLoss` and the weighted
    and micro-batched losses of `eoslab.mean_objective`), which `mean_parts` recognises."""
    return dataclasses.is_dataclass(fn) and any(f.name == "unravel" for f in dataclasses.fields(fn))


def params_sharded(obj: Objective) -> int:
    """How many shards the objective's ``w0`` is split into (1: whole on each device)."""
    w0 = obj.w0
    if not isinstance(w0, jax.Array):
        return 1
    return obj.dim // int(w0.sharding.shard_shape(w0.shape)[0])


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
