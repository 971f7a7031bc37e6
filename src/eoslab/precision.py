r"""Mixed precision: a model's matrix products in bfloat16, its parameters and sums in float32.

GPU users train with the operands of every matmul and convolution rounded to bfloat16 and the
products accumulated in float32 (tensor cores; PyTorch autocast, ``jmp``). eoslab's layers route
their products through `matmul`, `einsum` and `conv`: inside ``computing_in("bfloat16")`` they
round both operands to bfloat16 and ask XLA for a float32 result
(``preferred_element_type``); elsewhere they are the plain products. Everything else (parameters,
elementwise functions, norms, softmax, the loss's sums, the optimizer) stays in the parameters'
dtype.

The products' derivatives (gradients, Hessian-vector products, third derivatives) see the same
rounding: the cast's derivative is the cast, so each tangent and cotangent entering a product is
rounded to bfloat16 too. A Hessian-vector product then carries an error of the order of
bfloat16's $\epsilon = 2^{-7}$ times $\lVert H\rVert$, not float32's $2^{-23}$: the certified
bounds use the operator's *rounding dtype* (`rounding_dtype`), see
`eoslab.curvature.rounding`.

`MixedPrecision` wraps a model's ``apply`` (or any loss) so that calling it runs inside the
context: it is what `eoslab.Objective.with_matmul_dtype` installs, and it travels with the
objective into jit, micro-batches and sharded runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from .errors import ConfigError

__all__ = [
    "MATMUL_DTYPES",
    "MixedPrecision",
    "check_matmul_dtype",
    "computing_in",
    "conv",
    "einsum",
    "matmul",
    "matmul_dtype",
    "rounding_dtype",
]

#: The matmul dtypes a run may name: ``None`` (the parameters' own) or ``"bfloat16"``.
MATMUL_DTYPES = ("bfloat16",)

_MATMUL: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "eoslab_matmul_dtype", default=None
)


def check_matmul_dtype(value: Any, field: str = "matmul_dtype") -> str | None:
    """``value`` if it names an accepted matmul dtype (or is None), else `ConfigError`."""
    if value is None or (isinstance(value, str) and value in MATMUL_DTYPES):
        return value
    raise ConfigError(field, value, "None (the parameters' dtype) or 'bfloat16'")


def matmul_dtype() -> str | None:
    """The dtype products are computed in here (None: the operands' own)."""
    return _MATMUL.get()


@contextlib.contextmanager
def computing_in(dtype: str | None) -> Iterator[None]:
    """Run the layers' products with operands in ``dtype`` (None: unchanged) inside the block.

    Read when a function is traced: wrap the traced call (as `MixedPrecision` does), not the
    call of an already-compiled function."""
    token = _MATMUL.set(check_matmul_dtype(dtype))
    try:
        yield
    finally:
        _MATMUL.reset(token)


def _operands(*xs: Array) -> tuple[tuple[Array, ...], Any]:
    """The operands cast to the context's dtype, and the dtype of the result (theirs)."""
    out = jnp.result_type(*xs)
    low = _MATMUL.get()
    if low is None:
        return xs, None
    return tuple(x.astype(low) for x in xs), out


def matmul(a: Array, b: Array) -> Array:
    r"""$ab$; under ``computing_in("bfloat16")`` with bfloat16 operands and a result (and sum)
    in their own dtype."""
    (a, b), out = _operands(a, b)
    return jnp.matmul(a, b, preferred_element_type=out)


def einsum(spec: str, a: Array, b: Array) -> Array:
    """``jnp.einsum(spec, a, b)``, its operands rounded as in `matmul`."""
    (a, b), out = _operands(a, b)
    return jnp.einsum(spec, a, b, preferred_element_type=out)


def conv(x: Array, w: Array, stride: int) -> Array:
    """``lax.conv_general_dilated`` (NHWC, HWIO, 'SAME'), its operands rounded as in `matmul`."""
    (x, w), out = _operands(x, w)
    return lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=out,
    )


@dataclasses.dataclass(frozen=True)
class MixedPrecision:
    """``fn(*args)`` traced inside ``computing_in(dtype)``; other attributes are ``fn``'s (a
    model's ``norm``, say). Hashable: equal wrappers share compiled code."""

    fn: Callable[..., Any]
    dtype: str

    def __call__(self, *args: Any) -> Any:
        with computing_in(self.dtype):
            return self.fn(*args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("fn", "dtype"):
            raise AttributeError(name)
        return getattr(self.fn, name)


def rounding_dtype(dtype: Any, matmul: str | None) -> Any:
    """The coarser of ``dtype`` (the parameters') and ``matmul`` (the products'): the precision
    whose rounding a derivative computed this way carries."""
    if matmul is None:
        return jnp.dtype(dtype)
    a, b = jnp.dtype(dtype), jnp.dtype(matmul)
    return a if jnp.finfo(a).eps >= jnp.finfo(b).eps else b
