"""A run directory, read: its layout and the one reader the runner, `report/` and the CLI share.

Layout (written by `eoslab.runner.RunStore`)::

    RUN/
      config.json            the run record: its config, eoslab version, seed, command line, ...
      manifest.json          status (running, completed, diverged, ...), last checkpoint, checksums
      metrics/part-000000-000099.parquet   one Parquet part per flush (rows with those steps)
      checkpoints/step-000000100.npz       the state to resume from (plain arrays, no pickle)

This module sits below ``runner/`` and ``report/`` (as `eoslab.runlock` does), so both read a run
the same way and ``report/`` never imports the runner. It only reads.
"""

from __future__ import annotations

import json
import re
import warnings
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, DamagedRunError, DamagedRunWarning, NotARunError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "MANIFEST",
    "PART",
    "read_config",
    "read_manifest",
    "read_metrics",
    "require_run",
]

CONFIG = "config.json"
MANIFEST = "manifest.json"
PART = re.compile(r"^part-(\d+)-(\d+)\.parquet$")
"""A metrics part's file name: its first and last step."""
CHECKPOINT = re.compile(r"^step-(\d+)\.npz$")
"""A checkpoint's file name: its step."""


def read_metrics(path: str | PathLike, *, up_to: int | None = None) -> pd.DataFrame:
    """All metric parts of a run, in step order (rows with ``step < up_to`` if given): one row
    per step and process. A damaged part is left out with a `DamagedRunWarning` naming it."""
    import pandas as pd

    folder = Path(path) / "metrics"
    frames = []
    for f in sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []:
        if PART.match(f.name):
            try:
                frames.append(pd.read_parquet(f))
            except Exception as exc:  # noqa: BLE001 - a damaged part is skipped, and said so
                warnings.warn(
                    f"{f} is damaged ({type(exc).__name__}); its rows are left out "
                    "(eoslab resume moves it aside and recomputes them)",
                    DamagedRunWarning,
                    stacklevel=2,
                )
    if not frames:
        return pd.DataFrame({"step": pd.Series([], dtype="int64")})
    df = pd.concat(frames, ignore_index=True)
    keys = ["process", "step"] if "process" in df else ["step"]
    df = df.drop_duplicates(keys, keep="last").sort_values("step", kind="stable")
    df = df.reset_index(drop=True)
    if up_to is not None:
        df = df[df["step"] < up_to].reset_index(drop=True)
    return df


def read_config(path: str | PathLike) -> dict[str, Any]:
    """The run record (``config.json``).

    Raises:
        ConfigError: there is no ``config.json``.
        DamagedRunError: it is not JSON.
    """
    f = Path(path) / CONFIG
    if not f.is_file():
        raise ConfigError(
            "run directory",
            str(Path(path)),
            "a run directory with a config.json (made by eoslab run)",
        )
    try:
        return json.loads(f.read_text())
    except (ValueError, OSError) as exc:
        raise DamagedRunError(
            f"{f} is damaged ({type(exc).__name__}); the run's config is lost, so it cannot "
            "be resumed. Its metrics/ and checkpoints/ are untouched."
        ) from None


def read_manifest(path: str | PathLike) -> dict[str, Any]:
    """The manifest (``manifest.json``); when it is missing or damaged, ``status`` "unknown",
    step 0, no checkpoint, and ``damaged`` saying whether a file was there."""
    f = Path(path) / MANIFEST
    try:
        man = json.loads(f.read_text())
        if not isinstance(man, dict):
            raise ValueError("not a mapping")
    except (ValueError, OSError):
        return {"status": "unknown", "step": 0, "checkpoint": None, "damaged": f.is_file()}
    return man


def require_run(path: str | PathLike) -> dict[str, Any]:
    """The run record of ``path``, checked to be a run directory: ``config.json`` holding an
    eoslab run record (its ``config`` and ``eoslab_version``) and a ``manifest.json`` (whole or
    damaged).

    Raises:
        NotARunError: the directory is missing or is not a run directory (says why).
        DamagedRunError: ``config.json`` is there but is not JSON.
    """
    path = Path(path)
    if not path.is_dir():
        raise NotARunError(f"{path}: no such run directory")
    missing = [f for f in (CONFIG, MANIFEST) if not (path / f).is_file()]
    if missing:
        raise NotARunError(
            f"{path}: not a run directory (no {' and no '.join(missing)}); "
            "give a directory written by eoslab run"
        )
    record = read_config(path)
    if not (
        isinstance(record, dict)
        and isinstance(record.get("config"), dict)
        and "eoslab_version" in record
    ):
        raise NotARunError(
            f"{path}: not a run directory (its config.json is no eoslab run record); "
            "give a directory written by eoslab run"
        )
    return record
