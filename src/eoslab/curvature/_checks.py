"""Argument checks shared by the curvature functions (run before any tracing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ..errors import ConfigError
from ..objective import Objective


def concrete(x) -> bool:
    """Whether ``x`` holds values (not a tracer), so it can be checked before tracing."""
    return not isinstance(x, jax.core.Tracer)


def check_w(w, obj: Objective) -> Array:
    """`w` must be a finite 1-D float vector of the objective's dimension."""
    w = jnp.asarray(w)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise ConfigError("w.dtype", str(w.dtype), "a floating dtype (float32 or float64)")
    if w.ndim != 1:
        raise ConfigError("w.shape", w.shape, "a 1-D flat parameter vector")
    if w.shape != obj.w0.shape:
        raise ConfigError("w.shape", w.shape, f"{obj.w0.shape} (the objective's dimension)")
    if concrete(w) and not bool(jnp.all(jnp.isfinite(w))):
        raise ConfigError("w", "<contains NaN or inf>", "finite values only")
    return w


def check_vector(name: str, v, w: Array) -> Array:
    v = jnp.asarray(v, w.dtype)
    if v.shape != w.shape:
        raise ConfigError(f"{name}.shape", v.shape, f"{w.shape} (same as w)")
    if concrete(v) and not bool(jnp.all(jnp.isfinite(v))):
        raise ConfigError(name, "<contains NaN or inf>", "finite values only")
    return v


def check_k(k, dim: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= dim:
        raise ConfigError(name, k, f"an integer in [1, {dim}] (1 <= k <= number of parameters)")
    return int(k)
