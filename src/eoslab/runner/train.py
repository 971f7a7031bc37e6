r"""`train`: one update rule, full batch, through the one loop (`eoslab.runner.run`).

``train(objective, rule, steps)`` is ``run({rule.kind: Optimizer(rule)}, objective, steps)``
with the objective sharded or micro-batched on request.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jaxtyping import Array

from ..dynamics.optimizer import Optimizer
from ..dynamics.rules import Rule
from ..errors import ConfigError, check_int
from ..objective import Objective, as_objective
from ..parallel import microbatched, shard_objective
from ..parallel import shard_params as parallel_shard_params
from .accuracy import Accuracy
from .loop import run
from .probe import Probe, check_probes
from .probes import Probes
from .records import Run, Stop

__all__ = ["train"]


def train(
    objective: Objective | Callable[[Array], Array],
    rule: Rule,
    steps: int,
    *,
    probe_every: int = 10,
    probes: Probes | None = None,
    out: str | Path | None = None,
    stop: Stop | None = None,
    seed: int = 0,
    log_every: int = 1,
    flush_seconds: float = 10.0,
    resume: bool = False,
    config: dict | None = None,
    progress: bool | None = False,
    w0: Array | None = None,
    devices: int | None = None,
    shard_params: bool = False,
    microbatch: int | None = None,
    memory_budget_bytes: int | None = None,
    custom_probes: tuple[Probe, ...] = (),
    accuracy: bool = True,
) -> Run:
    r"""Run ``rule`` on ``objective`` for ``steps`` full-batch steps, probing curvature on the way.

    Args:
        objective: an `Objective` (or a plain ``loss(w)`` with ``w0``); for ``objective.sqrt()``
            the rule trains on $\sqrt{L - L_{\min}}$ while ``loss``, ``grad_norm``, ``lr_eff``,
            ``threshold`` and ``sharpness`` describe the base loss $L$.
        rule: an update rule from `eoslab.rules` (``rules.GD(lr=0.1)``, ...).
        steps, probe_every, probes, out, stop, seed, log_every, flush_seconds, resume, config,
            progress, custom_probes: as in `eoslab.runner.run`.
        w0: start here instead of ``objective.w0``.
        devices: shard the examples over this many devices (`eoslab.parallel.shard_objective`;
            same numbers as one device, to float tolerance).
        shard_params: split the flat parameters over the same ``devices`` too
            (`eoslab.parallel.shard_params`, FSDP-style).
        microbatch, memory_budget_bytes: accumulate loss, gradient and HVPs over micro-batches
            of this size, or the largest size within the budget (`eoslab.parallel.microbatched`).
        accuracy: measure the training accuracy at probed steps (column ``accuracy``) when the
            objective is a classifier (`Objective.from_model` with integer labels), as
            ``eoslab run`` does (`eoslab.runner.Accuracy`); the same default there.

    Raises:
        ConfigError: before any work, for a rule that is not an `eoslab.rules` rule, a
            ``steps`` that is not an integer >= 1, or ``custom_probes`` that are not probe
            objects (a function: subclass `eoslab.runner.HostProbe`).

    Returns:
        A `Run` whose metrics have one process, named after the rule. With ``out``, the run
        directory also gets the figures ``eoslab run`` draws (``figures/overview.png``).
    """
    if not isinstance(rule, Rule):
        raise ConfigError("rule", rule, "an update rule from eoslab.rules (e.g. rules.GD(0.1))")
    check_int("steps", steps, 1)
    custom_probes = check_probes(custom_probes)
    obj = as_objective(objective, w0)
    acc = Accuracy.of(obj) if accuracy else None
    if acc is not None:
        custom_probes = (acc, *custom_probes)
    if microbatch is not None or memory_budget_bytes is not None:
        obj = microbatched(obj, batch_size=microbatch, memory_budget_bytes=memory_budget_bytes)
    if devices is not None and devices != 1:
        obj = shard_objective(obj, devices=devices)
    if not isinstance(shard_params, bool):
        raise ConfigError("shard_params", shard_params, "True or False")
    if shard_params:
        obj = parallel_shard_params(obj, devices=devices)
    result = run(
        {rule.kind: Optimizer(rule)},
        obj,
        steps,
        w0=w0,
        probe_every=probe_every,
        probes=probes,
        out=out,
        stop=stop,
        seed=seed,
        log_every=log_every,
        flush_seconds=flush_seconds,
        resume=resume,
        config=config,
        progress=progress,
        custom_probes=custom_probes,
    )
    if result.path is not None:  # the figures eoslab run writes
        from ..report import write_run_figures

        write_run_figures(result.path)
    return result
