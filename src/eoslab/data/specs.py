"""What a dataset is: `DatasetSpec` (source, sizes, loader), `Dataset` (device arrays), and where
on-disk data live (`default_data_dir`, `data_dirs`). Shared by the dataset modules and the
registry."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from jaxtyping import Array

__all__ = [
    "ENV_VAR",
    "Dataset",
    "DatasetSpec",
    "RawData",
    "data_dirs",
    "default_data_dir",
]

#: ``(x_train, y_train, x_test, y_test)`` as numpy arrays, x with the example axis first.
RawData = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

ENV_VAR = "EOSLAB_DATA"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset on the device: inputs ``x_*`` of shape ``(N, *input_shape)`` (float32) and
    labels ``y_*``: int32 classes ``(N,)`` for classification, float32 targets
    ``(N, num_classes)`` for regression (``num_classes`` is then the output dimension), int32
    token labels ``(N, T)`` for sequence tasks (``num_classes`` is then the vocabulary, the inputs
    are token ids, one label per position)."""

    name: str
    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array
    num_classes: int
    input_shape: tuple[int, ...]
    task: Literal["classification", "regression", "sequence"] = "classification"

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is, where it comes from and how to read it.

    ``loader(data_dir)`` returns `RawData`; ``locate(data_dir)`` says where the files are (or
    ``"built in"``) and returns None when the dataset is not available now. ``expects`` names the
    files an on-disk dataset needs, relative to a data directory (empty: built in).
    """

    name: str
    source: str
    train_size: int
    test_size: int
    input_shape: tuple[int, ...]
    num_classes: int
    loader: Callable[[Path | None], RawData]
    locate: Callable[[Path | None], str | None]
    task: Literal["classification", "regression", "sequence"] = "classification"
    standardize: bool = True
    fetchable: bool = False
    description: str = ""
    expects: str = ""


def default_data_dir() -> Path:
    """``$EOSLAB_DATA`` if set, else ``~/.cache/eoslab/data``: where fetched data go."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "eoslab" / "data"


def data_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    """Directories searched for on-disk datasets: ``data_dir`` if given (and then only it), else
    the default."""
    return [Path(data_dir).expanduser()] if data_dir is not None else [default_data_dir()]
