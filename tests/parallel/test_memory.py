"""Compiled memory, measured before anything runs (issue 28): XLA's analysis against shape
arithmetic, the affine batch fit against a third compile, the budget parser, and `eoslab memory`
on a tiny transformer (every function, with and without rematerialization)."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from eoslab.errors import ConfigError
from eoslab.experiments import Experiment, ModelProblem
from eoslab.experiments.memory import FUNCTIONS, format_report, memory_report
from eoslab.parallel.memory import abstract, compiled_memory, fit_affine, parse_bytes


def test_compiled_memory_counts_arguments_and_outputs_by_shape():
    a = jax.ShapeDtypeStruct((100, 60), jnp.float32)
    b = jax.ShapeDtypeStruct((60, 30), jnp.float32)
    m = compiled_memory(lambda x, y: (x @ y, x.sum()), a, b)
    assert m.argument == 4 * (100 * 60 + 60 * 30)
    assert 0 <= m.output - 4 * (100 * 30 + 1) <= 8 * 2  # + a tuple's pointer table
    assert m.peak == m.argument + m.output + m.temp - m.alias
    assert abstract({"w": jnp.ones(3)})["w"] == jax.ShapeDtypeStruct((3,), jnp.float32)


def test_analysis_compile_sizes_what_the_optimised_compile_runs():
    """`compiled_memory` skips LLVM's optimisation; XLA's buffer assignment, and so every
    number it reads, is that of the default (optimised) compile of the same program."""

    def loss(w, x):
        h = jnp.tanh(x @ w[:, :40]) @ w[:40, 40:]
        return jnp.mean(jnp.sin(h) ** 2)

    def hvp_block(w, x, V):
        g = lambda u: jax.grad(loss)(u, x)  # noqa: E731
        return jax.vmap(lambda v: jax.jvp(g, (w,), (v,))[1], in_axes=2, out_axes=2)(V)

    w = jax.ShapeDtypeStruct((60, 70), jnp.float32)
    x = jax.ShapeDtypeStruct((500, 60), jnp.float32)
    V = jax.ShapeDtypeStruct((60, 70, 4), jnp.float32)
    got = compiled_memory(hvp_block, w, x, V)
    want = jax.jit(hvp_block).lower(w, x, V).compile().memory_analysis()
    assert got.temp == want.temp_size_in_bytes > 0
    assert (got.argument, got.output, got.alias) == (
        want.argument_size_in_bytes,
        want.output_size_in_bytes,
        want.alias_size_in_bytes,
    )


def test_affine_fit_and_largest_batch():
    fit = fit_affine(4, 1000.0 + 4 * 50, 16, 1000.0 + 16 * 50)
    assert fit.fixed == pytest.approx(1000.0) and fit.per_example == pytest.approx(50.0)
    assert fit.largest_batch(1000 + 50 * 7 + 49) == 7
    assert fit.largest_batch(1000 + 49) == 0


@pytest.mark.parametrize(
    "text, want",
    [("80GB", 80e9), ("80G", 80e9), ("512MB", 512e6), ("1GiB", 2**30), ("8e10", 8e10)],
)
def test_parse_bytes(text, want):
    assert parse_bytes(text) == pytest.approx(want)


@pytest.mark.parametrize("bad", ["", "-1GB", "80XB", "GB", "0"])
def test_parse_bytes_refuses(bad):
    with pytest.raises(ConfigError, match="budget"):
        parse_bytes(bad)


TINY = Experiment(
    problem=ModelProblem(
        model="transformer",
        dataset="sort-L4-V10",
        n=64,
        loss="cross_entropy",
        model_options={"d_model": 8, "n_heads": 2, "n_layers": 2},
    )
)


@pytest.fixture(scope="module")
def report():
    return memory_report(TINY, batch=32, budget_bytes=1e8, functions=("gradient", "hvp block"))


@pytest.mark.slow  # ~10-25 s on 2 cores: make test-all
def test_report_sizes_functions_from_shapes(report):
    assert [r.name for r in report.rows] == ["gradient", "hvp block"]
    d, b, t = report.params, 32, 7  # sort-L4: sequences of 2L - 1 = 7 tokens
    data = 4 * b * t * 2  # float32 token ids and int32 labels
    hvp = report.row("hvp block").at_batch
    assert hvp.argument == 4 * d + 4 * d * 8 + data  # w, the 8 vectors, the data
    assert hvp.output == 4 * d * 8
    grad = report.row("gradient").at_batch
    assert grad.argument == 4 * d + data and 0 <= grad.output - (4 * d + 4) <= 16
    assert report.ratio() == pytest.approx(hvp.peak / grad.peak)
    for r in report.rows:
        assert r.remat_at_batch is not None and r.largest >= 1
        assert r.fit(32) == pytest.approx(r.at_batch.peak, rel=1e-9)  # the fit goes through B
    text = format_report("tiny", report)
    assert "HVP block (8 vectors) peak / gradient peak" in text and "| hvp block |" in text


@pytest.mark.slow
def test_every_function_compiles_with_and_without_remat():
    """All six functions (~24 compiles, a minute or more on a loaded 2-core CPU)."""
    rep = memory_report(TINY, batch=16, budget_bytes=1e8)
    assert [r.name for r in rep.rows] == list(FUNCTIONS)
    for r in rep.rows:
        assert r.remat_at_batch is not None and r.remat_largest is not None
    # the step holds the gradient's arrays at least; the step with sharpness the step's
    peaks = {r.name: r.at_batch.peak for r in rep.rows}
    assert peaks["step + sharpness"] >= peaks["step"] >= peaks["gradient"]
    assert peaks["hvp block, 1 at a time"] < peaks["hvp block"]  # one tangent held, not 8


@pytest.mark.slow  # the report fixture compiles a model at three batches: ~20 s
def test_affine_fit_predicts_a_third_batch(report):
    """The fit from batches 16 and 32 against a compile at 64 (within 15%)."""
    third = memory_report(TINY, batch=64, functions=("hvp block",), remat="none")
    got = third.row("hvp block").at_batch.peak
    assert report.row("hvp block").fit(64) == pytest.approx(got, rel=0.15)


def test_devices_divide_the_batch_and_bad_input_is_refused():
    rep = memory_report(TINY, batch=32, devices=4, functions=("gradient",), remat="none")
    assert rep.per_device == 8
    assert rep.row("gradient").at_batch.argument == 4 * rep.params + 4 * 8 * 7 * 2
    with pytest.raises(ConfigError, match="functions"):
        memory_report(TINY, functions=("hvp",))
    with pytest.raises(ConfigError, match="batch"):
        memory_report(TINY, batch=0)
    with pytest.raises(ConfigError, match="preset"):
        from eoslab.experiments import PRESETS

        memory_report(PRESETS["quadratic-diverge"])
    assert dataclasses.is_dataclass(rep)
