r"""Memory of compiled functions, measured before anything runs: XLA's compiled memory analysis.

``jax.jit(f).lower(*abstract).compile().memory_analysis()`` reports, for the compiled program,
the bytes of its arguments, outputs, temporaries and generated code, on every backend
(XLA:CPU too). Lowering takes `jax.ShapeDtypeStruct` arguments, so a function is sized at any
batch without allocating or running it.

The peak a program needs is taken as arguments + outputs + temporaries $-$ aliased bytes (an
upper bound: XLA may reuse an argument's buffer once it is dead). Over a batch of $B$ examples
the peak is close to affine, $p(B) \approx a + cB$ (parameters and solver vectors are fixed,
activations grow with $B$), so two compiles give the largest batch under a budget:
$B_{\max} = \lfloor(\text{budget} - a)/c\rfloor$ (`AffineMemory`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax

from ..errors import ConfigError

__all__ = [
    "AffineMemory",
    "CompiledMemory",
    "abstract",
    "compiled_memory",
    "fit_affine",
    "parse_bytes",
]


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
    """One compiled program's memory (bytes) and its compile time (seconds)."""

    argument: int
    output: int
    temp: int
    alias: int
    code: int
    compile_seconds: float

    @property
    def peak(self) -> int:
        """Arguments + outputs + temporaries - aliased bytes."""
        return self.argument + self.output + self.temp - self.alias


def abstract(tree: Any) -> Any:
    """``tree`` with every array leaf replaced by its `jax.ShapeDtypeStruct`."""
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype) if hasattr(a, "shape") else a, tree
    )


_ANALYSIS_ONLY = {"xla_backend_optimization_level": 0}


def compiled_memory(fn: Callable, *args: Any) -> CompiledMemory:
    """Compile ``jax.jit(fn)`` for ``args`` (arrays or `jax.ShapeDtypeStruct` pytrees; nothing
    runs) and read XLA's memory analysis.

    Raises:
        ConfigError: the backend reports no memory analysis.
    """
    t = time.perf_counter()
    # Buffer assignment, which the analysis reads, precedes LLVM's optimisation of the machine
    # code; skipping the latter leaves every number the same and compiles ~1/3 faster.
    compiled = jax.jit(fn).lower(*args).compile(_ANALYSIS_ONLY)
    seconds = time.perf_counter() - t
    stats = compiled.memory_analysis()
    if stats is None:  # pragma: no cover - backends without memory analysis
        raise ConfigError("backend", jax.default_backend(), "a backend with memory analysis")
    return CompiledMemory(
        int(stats.argument_size_in_bytes),
        int(stats.output_size_in_bytes),
        int(stats.temp_size_in_bytes),
        int(stats.alias_size_in_bytes),
        int(stats.generated_code_size_in_bytes),
        seconds,
    )


@dataclasses.dataclass(frozen=True)
class AffineMemory:
    r"""$p(B) = a + cB$ bytes: ``fixed`` $= a$, ``per_example`` $= c$."""

    fixed: float
    per_example: float

    def __call__(self, batch: int) -> float:
        return self.fixed + self.per_example * batch

    def largest_batch(self, budget_bytes: float) -> int:
        """The largest $B$ with $p(B) \\le$ ``budget_bytes`` (0 if not even one example fits)."""
        if self.fixed + self.per_example > budget_bytes:
            return 0
        return int((budget_bytes - self.fixed) // max(self.per_example, 1.0))


def fit_affine(b1: int, p1: float, b2: int, p2: float) -> AffineMemory:
    r"""The line through $(B_1, p_1)$ and $(B_2, p_2)$, its slope at least 1 byte per example
    and its intercept at least 0 (``b1 == b2``: all of $p_1$ per example)."""
    if b2 == b1:
        return AffineMemory(0.0, max(p1 / b1, 1.0))
    c = max((p2 - p1) / (b2 - b1), 1.0)
    return AffineMemory(max(p1 - c * b1, 0.0), c)


_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
_UNITS.update({"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "KIB": 2**10, "MIB": 2**20})
_UNITS.update({"GIB": 2**30, "TIB": 2**40})


def parse_bytes(text: str, field: str = "budget") -> float:
    """``"80GB"``, ``"80G"``, ``"512MB"``, ``"79.6GiB"`` or ``"8e10"`` as bytes (decimal units:
    GB = 1e9, binary: GiB = 2^30).

    Raises:
        ConfigError: not a positive number with one of those units.
    """
    s = str(text).strip().upper().replace(" ", "")
    unit = s.lstrip("0123456789.E+-")
    number = s[: len(s) - len(unit)] if unit else s
    try:
        value = float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        value = -1.0
    if not value > 0:
        raise ConfigError(field, text, "a positive size such as 80GB, 512MB, 79.6GiB or 8e10")
    return value
