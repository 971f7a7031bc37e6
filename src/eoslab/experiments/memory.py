r"""`memory_report`: what a preset's step and probes need in memory, compiled but never run.

For an `Experiment` with a model problem, at a batch of $B$ examples per device, XLA's compiled
memory analysis (`eoslab.parallel.memory`) of:

* ``gradient``: $L$ and $\nabla L$ (the denominator of the HVP's memory multiple);
* ``step``: one step of the experiment's rule;
* ``step + sharpness``: the step and the certified top-$k$ eigenvalues at every step
  (`eoslab.curvature.StepTracker.update` on the same Hessian, up to 8 rounds);
* ``hvp block``: $HV$ for a block of ``k_block`` vectors (one linearization, vmapped products);
* ``hvp block, 1 at a time``: the same block applied one column at a time from the same
  linearization (`HessianOperator.mm` with ``chunk=1``): the tangents of one vector held at once;
* ``central-flow substep``: one Euler substep of GD's central flow (warm 8-vector block, Lanczos
  refinement, $\nabla^3L[u,u]$).

Each is compiled at $B$ and $\lceil B/2\rceil$ (or 2) examples, so the affine fit $p(B)=a+cB$
gives the largest batch under a budget; then again with the model's blocks under the
rematerialization policy ``remat`` (`eoslab.models.layers.remat`), where the model family has
one. Parameters are replicated on every device (data sharding): ``devices`` $=n$ divides the
batch, $B = \lceil B_{\text{total}}/n \rceil$ per device. Only shapes are used: the model and
data are built at 2 examples and the compiled functions take `jax.ShapeDtypeStruct` arguments.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax

from ..curvature import HessianOperator
from ..curvature.step_tracker import StepTracker
from ..dynamics.central_flow import CentralFlow, CentralFlowState
from ..dynamics.optimizer import Optimizer
from ..errors import ConfigError
from ..objective import Objective
from ..parallel.memory import AffineMemory, CompiledMemory, abstract, compiled_memory, fit_affine
from .build import build
from .config import Experiment, ModelProblem

__all__ = ["FUNCTIONS", "MemoryReport", "MemoryRow", "format_report", "memory_report"]

#: The compiled functions a report sizes, in the order it prints them.
FUNCTIONS = (
    "gradient",
    "step",
    "step + sharpness",
    "hvp block",
    "hvp block, 1 at a time",
    "central-flow substep",
)


@dataclasses.dataclass(frozen=True)
class MemoryRow:
    """One function: its memory at the report's batch, its affine fits, its largest batches
    under the budget (without and with remat; None where the model has no remat)."""

    name: str
    at_batch: CompiledMemory
    fit: AffineMemory
    largest: int
    remat_at_batch: CompiledMemory | None
    remat_fit: AffineMemory | None
    remat_largest: int | None


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """`memory_report`'s answer; `rows` in `FUNCTIONS` order."""

    params: int
    batch: int
    devices: int
    per_device: int
    budget_bytes: float
    remat: str
    k_block: int
    synthetic_data: bool
    rows: tuple[MemoryRow, ...]

    def row(self, name: str) -> MemoryRow:
        return next(r for r in self.rows if r.name == name)

    def ratio(self, remat: bool = False, block: str = "hvp block") -> float:
        """HVP-block peak over the gradient's peak (``remat``: the HVP under remat, over the
        gradient without it, as they run; ``block``: ``"hvp block"`` or
        ``"hvp block, 1 at a time"``)."""
        h = self.row(block)
        hvp = h.remat_at_batch if remat and h.remat_at_batch is not None else h.at_batch
        return hvp.peak / self.row("gradient").at_batch.peak


def _with_batch(obj: Objective, b: int) -> Objective:
    """``obj`` with abstract leaves, its examples axis resized to ``b``."""
    data = dict(obj.data)
    for key in ("x", "y"):
        a = data[key]
        data[key] = jax.ShapeDtypeStruct((b, *a.shape[1:]), a.dtype)
    return dataclasses.replace(abstract(obj), data={**abstract(obj.data), **data})


def _remat_objective(obj: Objective, policy: str) -> Objective | None:
    arch = getattr(obj.fn, "apply", None)
    if policy == "none" or not dataclasses.is_dataclass(arch) or not hasattr(arch, "remat"):
        return None
    fn = dataclasses.replace(obj.fn, apply=dataclasses.replace(arch, remat=policy))
    return dataclasses.replace(obj, fn=fn)


def _programs(exp: Experiment, obj: Objective, k_block: int, k_eigs: int) -> dict[str, Any]:
    """name -> (function, extra abstract arguments after the objective)."""
    d, dtype = obj.dim, obj.dtype
    proc = Optimizer(exp.rule)
    state = jax.eval_shape(proc.init, obj, obj.w0)
    tracker = StepTracker(k=k_eigs)
    tstate = jax.eval_shape(lambda: tracker.init(d, dtype, jax.random.key(0)))
    cf = CentralFlow(lr=exp.rule.lr, substeps=1)
    cf_state = CentralFlowState(
        jax.ShapeDtypeStruct((d,), dtype),
        jax.ShapeDtypeStruct((d, 8), dtype),
        jax.eval_shape(lambda: jax.random.PRNGKey(0)),
    )

    def gradient(o):
        return jax.value_and_grad(o)(o.w0)

    def step(o, s):
        return proc.step(o, s)

    def step_sharpness(o, s, ts):
        new, row = proc.step(o, s)
        op = HessianOperator(o, proc.point(s))
        return new, row, tracker.update(op.mm, ts)

    def hvp_block(o, V):
        return HessianOperator(o, o.w0).mm(V)

    def hvp_one_at_a_time(o, V):
        return HessianOperator(o, o.w0).mm(V, chunk=1)

    def cf_substep(o, st):
        return cf.step(o, st)

    return {
        "gradient": (gradient, ()),
        "step": (step, (state,)),
        "step + sharpness": (step_sharpness, (state, tstate)),
        "hvp block": (hvp_block, (jax.ShapeDtypeStruct((d, k_block), dtype),)),
        "hvp block, 1 at a time": (
            hvp_one_at_a_time,
            (jax.ShapeDtypeStruct((d, k_block), dtype),),
        ),
        "central-flow substep": (cf_substep, (cf_state,)),
    }


def _sizes(
    obj: Objective, exp, b: int, k_block: int, k_eigs: int, budget: float, functions, progress
):
    lo, hi = (max(1, b // 2), b) if b > 1 else (1, 2)
    out = {}
    for name, (fn, extra) in _programs(exp, obj, k_block, k_eigs).items():
        if name not in functions:
            continue
        t0 = time.perf_counter()
        at = compiled_memory(fn, _with_batch(obj, b), *extra)
        other = compiled_memory(fn, _with_batch(obj, lo if hi == b else hi), *extra)
        fit = fit_affine(
            *((lo, other.peak, b, at.peak) if hi == b else (b, at.peak, hi, other.peak))
        )
        out[name] = (at, fit, fit.largest_batch(budget))
        if progress is not None:
            progress(f"{name}: compiled twice in {time.perf_counter() - t0:.0f} s")
    return out


def memory_report(
    exp: Experiment,
    *,
    batch: int | None = None,
    devices: int = 1,
    budget_bytes: float = 80e9,
    remat: str = "blocks",
    k_block: int = 8,
    functions: tuple[str, ...] = FUNCTIONS,
    progress: Callable[[str], None] | None = None,
) -> MemoryReport:
    r"""Size ``exp``'s compiled functions (see the module docstring) at ``batch`` examples
    (default: the experiment's mini-batch, else its $N$) over ``devices`` devices;
    ``progress`` is told each function's name as its two compiles end.

    Raises:
        ConfigError: not a model problem; a batch, device count, budget or block < 1; an
            unknown function name (``functions``: a subset of `FUNCTIONS`).
    """
    for f in functions:
        if f not in FUNCTIONS:
            raise ConfigError("functions", f, "names of " + ", ".join(FUNCTIONS))
    if not isinstance(exp.problem, ModelProblem):
        raise ConfigError("preset", exp.problem.kind, "a preset with a model problem")
    for field, value in (("batch", batch), ("devices", devices), ("k_block", k_block)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(field, value, "an integer >= 1")
    if not budget_bytes > 0:
        raise ConfigError("budget", budget_bytes, "a positive number of bytes")
    total = batch if batch is not None else (exp.batch_size or exp.problem.examples() or 1)
    per_device = math.ceil(total / devices)
    small = dataclasses.replace(
        exp,
        problem=dataclasses.replace(exp.problem, n=2),
        batch_size=None,
        microbatch=None,
        devices=1,
        compare={},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = build(small)
    synthetic = bool(built.info.get("synthetic_data", False)) or any(
        "synthetic" in str(w.message) for w in caught
    )
    obj = built.objective.base()
    k_eigs = exp.probes.k
    plain = _sizes(obj, exp, per_device, k_block, k_eigs, budget_bytes, functions, progress)
    robj = _remat_objective(obj, remat)
    tell = None if progress is None else (lambda m: progress(f"{m} (remat {remat})"))
    rem = (
        _sizes(robj, exp, per_device, k_block, k_eigs, budget_bytes, functions, tell)
        if robj
        else None
    )
    rows = tuple(
        MemoryRow(
            name,
            *plain[name],
            *(rem[name] if rem else (None, None, None)),
        )
        for name in FUNCTIONS
        if name in functions
    )
    return MemoryReport(
        obj.dim,
        total,
        devices,
        per_device,
        float(budget_bytes),
        remat if robj else "none",
        k_block,
        synthetic,
        rows,
    )


def _gb(x: float) -> str:
    return f"{x / 1e9:.3f}"


def format_report(name: str, rep: MemoryReport) -> str:
    """The report as a Markdown table and a summary (what ``eoslab memory`` prints)."""
    lines = [
        f"eoslab memory {name}: {rep.params:,} parameters, batch {rep.batch} over "
        f"{rep.devices} device(s) = {rep.per_device} per device; budget "
        f"{rep.budget_bytes / 1e9:g} GB; remat policy {rep.remat!r}; XLA compiled memory "
        f"analysis on {jax.default_backend()} (compiled, never run)"
        + ("; data: synthetic stand-in shapes" if rep.synthetic_data else ""),
        "",
        "| function | arguments GB | outputs GB | temporaries GB | code MB | peak GB "
        "| compile s | largest batch | peak GB, remat | largest batch, remat |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep.rows:
        m = r.at_batch
        rm = r.remat_at_batch
        lines.append(
            f"| {r.name} | {_gb(m.argument)} | {_gb(m.output)} | {_gb(m.temp)} | "
            f"{m.code / 1e6:.2f} | {_gb(m.peak)} | {m.compile_seconds:.1f} | {r.largest} | "
            f"{_gb(rm.peak) if rm else 'n/a'} | "
            f"{r.remat_largest if r.remat_largest is not None else 'n/a'} |"
        )
    fits = [r.largest for r in rep.rows]
    rfits = [r.remat_largest for r in rep.rows if r.remat_largest is not None]
    names = {r.name for r in rep.rows}
    if {"gradient", "hvp block"} <= names:
        lines += [
            "",
            f"HVP block ({rep.k_block} vectors) peak / gradient peak: {rep.ratio():.2f} without "
            f"remat, {rep.ratio(remat=True):.2f} with remat {rep.remat!r}",
        ]
    one = "hvp block, 1 at a time"
    if {"gradient", one} <= names:
        lines += [
            f"the same block 1 vector at a time / gradient peak: {rep.ratio(block=one):.2f} "
            f"without remat, {rep.ratio(remat=True, block=one):.2f} with remat {rep.remat!r}",
        ]
    lines += [
        f"largest batch per device under {rep.budget_bytes / 1e9:g} GB (every function): "
        f"{min(fits)} without remat"
        + (f", {min(rfits)} with remat {rep.remat!r}" if rfits else ""),
    ]
    return "\n".join(lines)
