"""The lines of a run figure: one `Series` per process of each run directory, with the helpers
that read its numeric columns."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .run_info import RunInfo

__all__ = ["Series", "by_process", "floats", "probed"]


@dataclasses.dataclass
class Series:
    """One line of a figure: a process of a run, its rows and what its run says about it.

    Attributes:
        name: the process's name in the run (None for a run of one unnamed process).
        label: its legend text ("" for a lone series: the title names it).
        color: its colour.
        df: its rows (every logged step; probed columns are NaN between probes).
        info: what its run directory says (`RunInfo`).
        is_optimizer: whether it is the run's optimizer (else a process beside it).
    """

    name: str | None
    label: str
    color: str
    df: pd.DataFrame
    info: RunInfo
    is_optimizer: bool


def by_process(df: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    """The rows of each process, in the order they first appear (one unnamed part for one)."""
    if "process" not in df or df["process"].nunique() <= 1:
        name = str(df["process"].iloc[0]) if "process" in df and len(df) else None
        return [(name, df)]
    return [(str(n), df[df["process"] == n]) for n in dict.fromkeys(df["process"])]


def floats(s: pd.Series) -> np.ndarray:
    """A column as float64 (non-numbers as NaN)."""
    return pd.to_numeric(s, errors="coerce").astype(float).to_numpy()


def probed(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """The rows where ``col`` holds a finite number (none if the column is absent)."""
    if col not in df:
        return df.iloc[0:0]
    return df[np.isfinite(floats(df[col]))]
