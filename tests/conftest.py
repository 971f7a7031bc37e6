"""Test configuration: 64-bit JAX (tests are float64 unless they are about float32)."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    # XLA:CPU keeps every compiled executable's machine code in one JIT region; a single process
    # compiling hundreds of distinct closures exhausts it ("Unable to allocate section memory",
    # then a segfault). Dropping JAX's caches after each module returns that memory.
    yield
    jax.clear_caches()
