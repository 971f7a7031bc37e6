"""What a run leaves: its `Run` record, the table's layout, stopping rules, and `load_run`."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import tyro

from ..errors import ConfigError, DamagedRunError, DamagedRunWarning
from ..rundir import read_metrics
from .store import RunStore

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RESUMABLE", "STATUSES", "Run", "Stop", "frame", "load_run"]

STATUSES = (
    "completed",
    "diverged",
    "loss_goal",
    "accuracy_goal",
    "running",
    "interrupted",
    "unknown",
)
"""How a run can end (``Run.status``); ``running``: its process stopped before the end."""


RESUMABLE = ("running", "interrupted", "unknown")
"""Statuses a resume continues from (``running``: killed; ``interrupted``: Ctrl-C)."""


@dataclasses.dataclass(frozen=True)
class Stop:
    """When a run stops before its step budget (checked at each probed step, on the first process).

    Divergence (a non-finite loss or point) always stops a run.
    """

    loss_below: Annotated[
        float | None, tyro.conf.arg(metavar="FLOAT", help_behavior_hint="(default: never)")
    ] = None
    """Stop once the loss is at or below this."""
    accuracy_above: Annotated[
        float | None, tyro.conf.arg(metavar="FLOAT", help_behavior_hint="(default: never)")
    ] = None
    """Stop once the accuracy (from a probe) is at or above this."""
    raise_on_divergence: bool = False
    """Raise DivergenceError instead of returning a diverged Run."""


@dataclasses.dataclass
class Run:
    """The outcome of `run` / `train` (or `load_run`): the one result type of a trajectory.

    Read it with `series` (one process's rows), `wide` (the processes side by side),
    `trajectory` (the kept points) and `point` (the final point); a theory's derived quantities
    are columns of its process's rows (``pred_loss``, ``tau``) or methods of the process
    (`CentralFlow.predicted_mean`).

    Attributes:
        metrics: one row per logged step and process (probe columns filled on probed steps).
        status: one of `STATUSES`.
        message: a one-line account of how the run ended.
        step: the number of steps taken.
        path: the run directory, if any.
        config: the recorded config (``config.json``), if any.
    """

    metrics: pd.DataFrame
    status: str
    message: str
    step: int
    path: Path | None = None
    config: dict | None = None
    final_points: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    """Every process's final point, by name: read it with `point`."""

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    @property
    def process_names(self) -> list[str]:
        """The processes' names, in the order they were run (the first is the optimizer)."""
        if "process" not in self.metrics:
            return []
        return list(dict.fromkeys(self.metrics["process"]))

    def series(
        self, process: str | None = None, columns: str | Sequence[str] | None = None
    ) -> pd.DataFrame:
        """The rows of one process (default: the first), one per logged step, in step order:
        ``step`` and ``columns`` (one name or several; default every column), NaN (or None)
        where a column was not measured at a step (a probe's between probed steps).

        Raises:
            ConfigError: an unknown process or column (the message lists the known ones).
        """
        name = self._process(process)
        df = self.metrics[self.metrics["process"] == name].reset_index(drop=True)
        if columns is None:
            return df
        cols = [columns] if isinstance(columns, str) else list(columns)
        for c in cols:
            if c not in df:
                have = [c for c in df.columns if c not in ("step", "process") and _measured(df[c])]
                raise ConfigError("columns", c, f"a column of {name!r}: " + ", ".join(have))
        return df[["step", *[c for c in cols if c != "step"]]]

    def wide(
        self, columns: str | Sequence[str], processes: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """The processes side by side: one row per step that any of them logged, and a column
        ``{column}_{process}`` for each of ``columns`` that a process measured (e.g.
        ``loss_gd``, ``sharpness_cf``, ``dist_gf_gd``: ``gd``'s distance to ``gf``); NaN where
        a process has no row or did not measure the column at that step.

        Raises:
            ConfigError: an unknown process, or a column that none of them measured.
        """
        cols = [columns] if isinstance(columns, str) else list(columns)
        names = self.process_names if processes is None else [self._process(p) for p in processes]
        out, found = None, set()
        for name in names:
            df = self.metrics[self.metrics["process"] == name]
            own = [c for c in cols if c in df and _measured(df[c])]
            found.update(own)
            part = df.set_index("step")[own]
            part.columns = [f"{c}_{name}" for c in own]
            out = part if out is None else out.join(part, how="outer")
        lost = [c for c in cols if c not in found]
        if lost or out is None:
            raise ConfigError("columns", (lost or cols)[0], "a column measured by a process")
        return out.sort_index().reset_index()

    def trajectory(self, process: str | None = None) -> np.ndarray:
        """The points ``(n, d)`` of one process (default: the first) at the rows that kept one
        (every logged row with ``keep_points=True``), in step order, in the dtype of its final
        point (the rows hold Python floats)."""
        df = self.series(process)
        pts = [np.asarray(x) for x in df["w"] if _is_value(x)] if "w" in df else []
        if not pts:
            raise ConfigError("keep_points", False, "True (the run kept no points)")
        last = self.final_points.get(self._process(process))
        return np.stack(pts).astype(None if last is None else np.asarray(last).dtype)

    def point(self, process: str | None = None) -> Any:
        """The final point of ``process`` (default: the first; the last finite one if the run
        diverged; from the last checkpoint for a loaded run)."""
        name = self._process(process)
        if name not in self.final_points:
            have = ", ".join(self.final_points) or "none"
            raise ConfigError("process", name, f"a process with a final point (have: {have})")
        return self.final_points[name]

    def _process(self, name: str | None) -> str:
        have = self.process_names
        if name is None and have:
            return have[0]
        if name not in have:
            raise ConfigError("process", name, "one of " + ", ".join(map(str, have)))
        return name


def _is_value(x: Any) -> bool:
    if x is None:
        return False
    if isinstance(x, float):
        return not math.isnan(x)
    return True


def _measured(col: pd.Series) -> bool:
    """Whether a column holds a value at some row (not only NaN / None / NA)."""
    if col.dtype == object:
        return any(_is_value(x) for x in col)
    return bool(col.notna().any())


_FRONT = [
    "step",
    "process",
    "loss",
    "grad_norm",
    "lr_eff",
    "threshold",
    "sharpness",
    "eff_sharpness",
    "eigs",
    "sharpness_matvecs",
    "sharpness_error",
    "grad_top_alignment",
    "lr_sharpness",
]


def frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as the store's table: the standard columns first, NaN where nothing was measured."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if len(df) == 0:
        return df
    for col in ("lr_eff", "threshold", "sharpness", "eff_sharpness", "grad_top_alignment"):
        if col not in df:
            df[col] = np.nan
    if "sharpness_error" not in df:
        df["sharpness_error"] = np.nan
    if "sharpness_matvecs" not in df:
        df["sharpness_matvecs"] = pd.array([pd.NA] * len(df), dtype="Int64")
    else:
        df["sharpness_matvecs"] = df["sharpness_matvecs"].astype("Int64")
    if "eigs" not in df:
        df["eigs"] = None
    curv = df["eff_sharpness"].where(df["eff_sharpness"].notna(), df["sharpness"])
    df["lr_sharpness"] = df["lr_eff"] * curv
    df["step"] = df["step"].astype("int64")
    front = [c for c in _FRONT if c in df]
    return df[front + [c for c in df.columns if c not in front]]


def load_run(path: str | Path) -> Run:
    """Read a run directory back: metrics (all whole parts), final points, status and config.

    Damaged parts or checkpoints are left out with a `DamagedRunWarning` naming them; nothing is
    changed on disk (``eoslab resume`` repairs).
    """
    store = RunStore(path)
    if not store.path.is_dir():
        raise DamagedRunError(f"{store.path}: no such run directory")
    cfg = store.read_config()
    man = store.read_manifest()
    dmg = store.verify(parts=False)  # read_metrics reads each part once and warns itself
    for rel, why in dmg.files:
        warnings.warn(f"{store.path}/{rel} is {why}", DamagedRunWarning, stacklevel=2)
    metrics = read_metrics(store.path)
    names = list(dict.fromkeys(metrics["process"])) if "process" in metrics else []
    points: dict[str, Any] = {}
    if dmg.checkpoint is not None:  # numpy, so a float64 run stays float64 without x64
        arrays = store.read_checkpoint(dmg.checkpoint)
        points = {n: arrays[f"{n}__point"] for n in names if f"{n}__point" in arrays}
    return Run(
        metrics=metrics,
        status=man.get("status", "unknown"),
        message=man.get("message", ""),
        step=int(man.get("step", 0)),
        path=store.path,
        config=cfg,
        final_points=points,
    )
