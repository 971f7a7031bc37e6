r"""Micro-batching: the full-batch loss, gradient and HVP accumulated over blocks of examples.

For a mean objective (see `eoslab.mean_objective`: ``from_model`` with a per-example-mean
loss on a model without full-batch BatchNorm)

$$L(w) = \frac1N\sum_{i=1}^N \ell_i(w) = \sum_{b=1}^{\lceil N/B\rceil} \frac{n_b}{N}\,\bar\ell_b(w),
\qquad \bar\ell_b = \frac1{n_b}\sum_{i\in b}\ell_i ,$$

so $\nabla L$, $\nabla^2 L\,v$ and every higher derivative are the same size-weighted sums of the
blocks' derivatives. `microbatched` returns an `Objective` computing exactly this inside one
compiled ``lax.scan`` over blocks of $B$ rows (the last block is completed with zero-weight
padding rows); the scan body is rematerialised, so the working memory of a gradient or an HVP is
that of one block. Every eoslab function (``jax.grad``, an operator's products,
`top_eigenpairs`, `EigenTracker`, training rules) then works unchanged on the returned objective:
its Hessian products are `HessianOperator`'s, and the sum over blocks is the objective's own.

Other objectives are refused with `ConfigError`: a general ``fn(w, data)`` need not be a mean
over anything.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import numpy as np

from ..curvature.operator import HessianOperator
from ..errors import ConfigError
from ..mean_objective import chunk_sum, mean_parts, num_examples, weighted_objective
from ..objective import Objective
from .memory import compiled_memory, fit_affine
from .sharding import is_sharded, shard_objective

__all__ = ["MicrobatchPlan", "microbatched", "plan_microbatch"]


@dataclasses.dataclass(frozen=True)
class MicrobatchPlan:
    r"""A block size chosen from a memory budget.

    The working memory (XLA temporary buffers) of one HVP on a block of $B$ examples is modelled
    as ``fixed_bytes + bytes_per_example * B``, fitted from two compiled block sizes.
    """

    batch_size: int
    num_blocks: int
    bytes_per_example: float
    fixed_bytes: float
    predicted_bytes: float


def _block_hvp_temp_bytes(obj: Objective, b: int) -> float:
    """XLA temp bytes of the HVP of one block of ``b`` examples (compiled, not run)."""
    parts = mean_parts(obj, "objective")
    x, y = obj.data["x"], obj.data["y"]
    xs = jax.ShapeDtypeStruct((b, *x.shape[1:]), x.dtype)
    ys = jax.ShapeDtypeStruct((b, *y.shape[1:]), y.dtype)
    ms = jax.ShapeDtypeStruct((b,), obj.dtype)
    w = jax.ShapeDtypeStruct(obj.w0.shape, obj.dtype)

    def block_loss(u, data):
        frozen, xb, yb, mb = data
        return chunk_sum(parts.apply, parts.loss, eqx.combine(parts.unravel(u), frozen), xb, yb, mb)

    def f(w, v, frozen, xb, yb, mb):
        block = Objective(fn=block_loss, data=(frozen, xb, yb, mb), w0=w)
        return HessianOperator(block, w).mv(v)

    frozen = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), obj.data["frozen"]
    )
    return float(compiled_memory(f, w, w, frozen, xs, ys, ms).temp)


def plan_microbatch(obj: Objective, memory_budget_bytes: int) -> MicrobatchPlan:
    r"""The largest block size whose HVP working memory fits ``memory_budget_bytes``.

    Fits $t(B) = a + cB$ from the compiled HVP of blocks of $B_1 = \min(N, 8)$ and
    $B_2 = \min(N, 64)$ examples, takes $B_{\max} = \lfloor(\text{budget} - a)/c\rfloor$, then
    balances the blocks: $n_b = \lceil N/B_{\max}\rceil$ blocks of $B = \lceil N/n_b\rceil$ rows
    (at most $n_b - 1$ padding rows). The budget covers the temporaries of one HVP; the dataset,
    parameters and Lanczos basis are not included.
    """
    if (
        isinstance(memory_budget_bytes, bool)
        or not isinstance(memory_budget_bytes, (int, np.integer))
        or memory_budget_bytes <= 0
    ):
        raise ConfigError("memory_budget_bytes", memory_budget_bytes, "a positive int (bytes)")
    n = num_examples(obj)
    b1, b2 = min(n, 8), min(n, 64)
    t1 = _block_hvp_temp_bytes(obj, b1)
    t2 = _block_hvp_temp_bytes(obj, b2) if b2 > b1 else t1
    fit = fit_affine(b1, t1, b2, t2)  # eoslab.parallel.memory: the same analysis as `eoslab memory`
    a, c = fit.fixed, fit.per_example
    if a + c > memory_budget_bytes:
        raise ConfigError(
            "memory_budget_bytes",
            int(memory_budget_bytes),
            f"at least {int(a + c)} bytes (one example's HVP working memory for this model)",
        )
    b_max = int(min(n, (memory_budget_bytes - a) // c))
    nb = -(-n // b_max)
    b = -(-n // nb)
    return MicrobatchPlan(b, nb, c, a, a + c * b)


def microbatched(
    obj: Objective,
    batch_size: int | None = None,
    memory_budget_bytes: int | None = None,
) -> Objective:
    r"""``obj`` evaluated in micro-batches: same value and derivatives, bounded working memory.

    Give exactly one of ``batch_size`` (rows per block, $1 \le B$; $B \ge N$ means one block) or
    ``memory_budget_bytes`` (see `plan_microbatch`). Composes with `shard_objective` in either
    order (the examples are padded with zero weight to a multiple of both $B$ and the devices).

    Raises:
        ConfigError: ``obj`` is not a mean objective (see the module docstring), or the arguments
            are missing, both given, or out of range.

    >>> from eoslab import Objective
    >>> import jax, jax.numpy as jnp
    >>> from eoslab.models import create
    >>> apply, p = create("mlp", jax.random.PRNGKey(0), (3,), 2, widths=(4,))
    >>> x = jax.random.normal(jax.random.PRNGKey(1), (10, 3)); y = jnp.arange(10) % 2
    >>> obj = Objective.from_model(apply, p, (x, y), "cross_entropy")
    >>> mb = microbatched(obj, batch_size=4)
    >>> bool(jnp.allclose(mb(obj.w0), obj(obj.w0), rtol=1e-6))
    True
    """
    if (batch_size is None) == (memory_budget_bytes is None):
        raise ConfigError(
            "batch_size / memory_budget_bytes",
            (batch_size, memory_budget_bytes),
            "exactly one of them",
        )
    mean_parts(obj, "objective")
    if batch_size is None:
        batch_size = plan_microbatch(obj, memory_budget_bytes).batch_size
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ConfigError("batch_size", batch_size, "a positive int (examples per micro-batch)")
    n = int(obj.data["x"].shape[0])
    b = int(min(batch_size, n))
    out = weighted_objective(obj, multiple=1, batch_size=b)
    n_dev = is_sharded(obj)
    if n_dev > 1:  # keep the example axis sharded over the same devices
        out = shard_objective(out, devices=n_dev)
    return out
