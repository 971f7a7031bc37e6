r"""Mini-batches of a mean objective: the batch loss $L_B$ and reproducible draws of batches.

For a *mean objective* (`Objective.from_model` with a per-example-mean loss, see
`eoslab.mean_objective`)

$$L(w) = \frac1N\sum_{i=1}^N \ell_i(w), \qquad
  L_B(w) = \frac1{|B|}\sum_{i\in B} \ell_i(w)\quad (B \subseteq \{1..N\}),$$

and $L_B$ is the same ``fn`` on the rows ``B`` of the data (``x``, ``y``; zero-padded weighted
objectives get the weight $1/|B|$ on each of the batch's rows and are sampled among their real
rows only). Batches are index vectors, sorted, so a batch of all $N$ examples is the data itself
in its own order.

Two samplers:

- `random_batches`: independent batches, each a uniformly random $b$-subset (without
  replacement inside a batch): the distribution the batch-sharpness estimators average over;
- `next_batch`: epochs without replacement (the standard SGD sampler): each epoch is a random
  permutation cut into $\lfloor N/b\rfloor$ batches, the last $N \bmod b$ examples of the
  permutation are dropped, and a new permutation is drawn from the carried key.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from .errors import ConfigError
from .mean_objective import batch_size_of, mean_parts, num_examples
from .objective import Objective

__all__ = [
    "batch_data",
    "batch_objective",
    "check_batch_size",
    "example_count",
    "next_batch",
    "random_batches",
]

_ACCEPTED = "a mean objective (Objective.from_model, mean loss) without a square-root transform"


def example_count(objective: Objective, field: str = "objective") -> int:
    r"""$N$, the examples of a mean objective (real rows only); `ConfigError` for any other.

    The square-root transforms (``objective.sqrt()``, ``SqrtLoss``) are refused: the square root
    of a batch mean is not the batch loss of anything SGD steps on.
    """
    parts = mean_parts(objective, field)
    if parts.inner_sqrt_min is not None or parts.outer_sqrt_min is not None:
        raise ConfigError(f"{field}.transform", "sqrt", _ACCEPTED)
    data = objective.data
    if "weight" in data:
        m = np.asarray(data["weight"])
        n = num_examples(objective)
        if not np.allclose(m[:n], m[0]) or np.any(m[n:] != 0):
            raise ConfigError(
                f"{field}.data['weight']", "<unequal weights>", "equal weights 1/N (then padding)"
            )
        return n
    return int(data["x"].shape[0])


def check_batch_size(batch_size: Any, n: int, field: str = "batch_size") -> int:
    """``batch_size`` as an int in ``1..n``; `ConfigError` naming ``field`` otherwise."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ConfigError(field, batch_size, f"an integer from 1 to N = {n}")
    if not 1 <= int(batch_size) <= n:
        raise ConfigError(field, batch_size, f"an integer from 1 to N = {n} (the examples)")
    return int(batch_size)


def batch_data(objective: Objective, idx: Int[Array, " b"]) -> Any:
    """The data of the rows ``idx`` (jit- and vmap-able; ``frozen`` parameters are shared).

    A micro-batched objective (`eoslab.parallel.microbatched`, blocks of $m$ rows) takes batches
    of at most $m$ rows or of a multiple of $m$ (`ConfigError` otherwise).
    """
    data = objective.data
    b, m = int(idx.shape[-1]), batch_size_of(objective)
    if m is not None and b > m and b % m:
        raise ConfigError("batch_size", b, f"at most {m} or a multiple of {m} (the micro-batch)")
    out = {**data, "x": data["x"][idx], "y": data["y"][idx]}
    if "weight" in data:
        w = data["weight"]
        out["weight"] = jnp.full(idx.shape, 1.0 / idx.shape[0], w.dtype)
    return out


def batch_objective(objective: Objective, idx: Int[Array, " b"]) -> Objective:
    r"""$L_B$ for the rows $B$ = ``idx`` of a mean objective (its ``fn`` on the batch's data)."""
    return dataclasses.replace(objective, data=batch_data(objective, idx))


def _subset(key: Array, n: int, b: int) -> Array:
    return jnp.sort(jax.random.permutation(key, n)[:b]).astype(jnp.int32)


def random_batches(key: Array, n: int, b: int, count: int) -> Int[Array, "count b"]:
    """``count`` independent batches, each a uniformly random ``b``-subset of ``0..n-1`` (sorted
    indices); batches may repeat across draws."""
    return jax.vmap(lambda k: _subset(k, n, b))(jax.random.split(key, count))


def next_batch(
    key: Array, perm: Int[Array, " n"], pos: Int[Array, ""], b: int
) -> tuple[Int[Array, " b"], Array, Array, Array]:
    r"""The next batch of an epoch sampler: ``(idx, key, perm, pos)`` after drawing it.

    ``key`` is raw key data (``jax.random.key_data``, uint32), ``perm`` the epoch's permutation of
    $0..N-1$ and ``pos`` the first unread position. When fewer than ``b`` examples are left, a new
    permutation is drawn with a subkey split from ``key`` and reading restarts at 0 (the rest of
    the old epoch is dropped). ``idx`` is sorted. Pure and jit-able: the state is plain arrays.
    """
    n = perm.shape[0]
    fresh = pos + b > n
    k_next, k_perm = jax.random.split(jax.random.wrap_key_data(key))
    new_perm = jax.random.permutation(k_perm, n).astype(perm.dtype)
    perm = jnp.where(fresh, new_perm, perm)
    key = jnp.where(fresh, jax.random.key_data(k_next), key)
    pos = jnp.where(fresh, jnp.zeros_like(pos), pos)
    idx = jnp.sort(jax.lax.dynamic_slice(perm, (pos,), (b,)))
    return idx, key, perm, pos + b
