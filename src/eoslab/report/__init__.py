"""Figures and tables: run directories (`plot_runs`), the reproductions' figures
(`paper_figures`, `beyond_figures`) and predicted-vs-measured tables (`tables`).

Reads the data it is given or a run directory (pandas / pyarrow); it never imports the runner
or the experiments.
"""

from . import beyond_figures as beyond_figures
from . import paper_figures as paper_figures
from . import tables as tables
from .output import save_figure as save_figure
from .plots import plot_runs as plot_runs
from .plots import write_run_figures as write_run_figures
from .tables import read_table as read_table
from .tables import write_table as write_table

__all__ = [
    "beyond_figures",
    "paper_figures",
    "plot_runs",
    "read_table",
    "save_figure",
    "tables",
    "write_run_figures",
    "write_table",
]
