"""Test configuration. JAX runs in its default precision (float32); a test that needs float64 asks
for the ``x64`` fixture (``pytestmark = pytest.mark.usefixtures("x64")`` for a whole module)."""

import os

# XLA:CPU compiles at LLVM's lowest optimization level in tests: the suite is mostly compiling small
# programs, and this cuts its CPU time by about a third (measured on tests/curvature/test_eigen.py,
# 116 -> 78 CPU s; test_step_tracker + test_self_stabilization 180 -> 131 CPU s). Results stay IEEE
# arithmetic (no fast-math either way); benchmarks and users' runs keep XLA's default. Set before
# jax is imported; subprocesses started by tests inherit it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

_X64_AT_START = jax.config.jax_enable_x64  # off unless JAX_ENABLE_X64 is set


@pytest.fixture
def x64():
    """64-bit JAX for the test, scoped: the mode before the test is restored after it."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(autouse=True)
def _precision_left_as_found():
    # a test that flips jax_enable_x64 globally would change the precision of every test after it
    yield
    assert jax.config.jax_enable_x64 == _X64_AT_START, "a test left jax_enable_x64 switched"


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    # XLA:CPU keeps every compiled executable's machine code in one JIT region; a single process
    # compiling hundreds of distinct closures exhausts it ("Unable to allocate section memory",
    # then a segfault). Dropping JAX's caches after each module returns that memory.
    yield
    jax.clear_caches()
