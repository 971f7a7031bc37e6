"""Figures and reports read from run directories (never from the runner)."""

from .plots import plot_runs as plot_runs
from .plots import read_run_metrics as read_run_metrics

__all__ = ["plot_runs", "read_run_metrics"]
