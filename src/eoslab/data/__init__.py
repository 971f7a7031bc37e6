"""Datasets as device arrays: built in (offline), read from disk, or fetched and verified.

>>> from eoslab import data
>>> ds = data.load("digits", n=100, subset="balanced")
>>> ds.x_train.shape, ds.num_classes
((100, 8, 8, 1), 10)

`fetch_dataset` is what ``eoslab data fetch NAME`` calls: it downloads, verifies and lays out a
dataset where `load` looks (a `DownloadError` when the transfer stops early: rerun to resume).
"""

from ..errors import CorruptFileError as CorruptFileError
from ..errors import DatasetNotFoundError as DatasetNotFoundError
from ..errors import DownloadError as DownloadError
from .commands import fetch_dataset as fetch_dataset
from .commands import list_datasets_table as list_datasets_table
from .registry import DATASETS as DATASETS
from .registry import SCALINGS as SCALINGS
from .registry import Dataset as Dataset
from .registry import DatasetSpec as DatasetSpec
from .registry import check_scaling as check_scaling
from .registry import default_data_dir as default_data_dir
from .registry import load as load
from .registry import register as register
from .registry import require as require
from .registry import standardize as standardize
from .registry import synthetic_twin as synthetic_twin

__all__ = [
    "DATASETS",
    "SCALINGS",
    "CorruptFileError",
    "Dataset",
    "DatasetNotFoundError",
    "DatasetSpec",
    "DownloadError",
    "check_scaling",
    "default_data_dir",
    "fetch_dataset",
    "list_datasets_table",
    "load",
    "register",
    "require",
    "standardize",
    "synthetic_twin",
]
