"""Test configuration: 64-bit JAX (tests are float64 unless they are about float32)."""

import jax

jax.config.update("jax_enable_x64", True)
