"""`execute`: run an `Experiment` through the one loop, at the precision it asks for."""

from __future__ import annotations

from pathlib import Path

import jax

from ..errors import ConfigError
from ..runner import Run, run
from .build import build
from .config import Experiment, to_dict

__all__ = ["execute"]


def execute(
    exp: Experiment,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool | None = False,
) -> Run:
    """Build ``exp`` and run its processes in lockstep (`eoslab.runner.run`); the config is
    recorded in the run directory, so the run can be re-run or resumed from it.

    A float64 experiment runs inside ``jax.enable_x64(True)``: no global switch is flipped.
    """
    if not isinstance(exp, Experiment):
        raise ConfigError("exp", exp, "an eoslab.experiments.Experiment")
    with jax.enable_x64(exp.dtype == "float64"):
        built = build(exp)
        return run(
            built.processes,
            built.objective,
            exp.steps,
            probe_every=exp.probe_every,
            probes=exp.probes,
            out=out,
            stop=exp.stop,
            seed=exp.seed,
            log_every=exp.log_every,
            flush_seconds=exp.flush_seconds,
            resume=resume,
            config=to_dict(exp),
            progress=progress,
            custom_probes=built.custom_probes,
            notes={k: v for k, v in built.info.items() if k.startswith("synthetic")} or None,
        )
