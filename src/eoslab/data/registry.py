"""Named datasets: `DATASETS` (name -> `DatasetSpec`), `register` and ``load(name, n, subset,
seed, data_dir) -> Dataset``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError, DatasetNotFoundError
from . import builtin, disk, synthetic_images, tokens
from .specs import Dataset as Dataset
from .specs import DatasetSpec as DatasetSpec
from .specs import RawData as RawData
from .specs import data_dirs as data_dirs
from .specs import default_data_dir as default_data_dir

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetSpec",
    "RawData",
    "data_dirs",
    "default_data_dir",
    "load",
    "register",
    "require",
    "synthetic_twin",
]

SUBSETS = ("first", "balanced")
SCALINGS = ("per-feature", "global")

DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to the registry (its name must be new)."""
    if spec.name in DATASETS:
        raise ConfigError("dataset name", spec.name, "a name not registered yet")
    DATASETS[spec.name] = spec
    return spec


for shipped in (*builtin.SPECS, *disk.SPECS, *synthetic_images.SPECS, *tokens.SPECS):
    register(shipped)  # the datasets eoslab knows out of the box
del shipped

#: On-disk datasets and the built-in synthetic sets of the same shapes that stand in for them.
SYNTHETIC_TWINS = {"cifar10": "cifar10-synthetic", "text-T256": "text-T256-synthetic"}


def synthetic_twin(name: str) -> str | None:
    """The synthetic dataset of the same shapes as on-disk dataset ``name``, or None."""
    return SYNTHETIC_TWINS.get(name)


def require(
    name: str, data_dir: str | os.PathLike | None = None, *, field: str = "data_dir"
) -> str:
    """Where dataset ``name`` is (its `DatasetSpec.locate` answer), checked before any work.

    Raises:
        ConfigError: unknown name.
        DatasetNotFoundError: an on-disk dataset is not under ``data_dir`` (or, with None, the
            default places); the message names ``field`` (e.g. ``--data-dir``) and the files
            expected.
    """
    spec = _spec(name)
    d = Path(data_dir).expanduser() if data_dir is not None else None
    where = spec.locate(d)
    if where is None:
        if name == "text-T256":
            raise DatasetNotFoundError(tokens.missing_text_message(d))
        raise DatasetNotFoundError(disk.missing_message(name, d, field))
    return where


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ConfigError("dataset", name, "one of " + ", ".join(map(repr, sorted(DATASETS))))
    return DATASETS[name]


def _check_n(n: object, available: int) -> None:
    if n is None:
        return
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= available:
        raise ConfigError("n", n, f"None or an int between 1 and {available} (the training set)")


def _balanced_indices(y: np.ndarray, n: int, num_classes: int, seed: int) -> np.ndarray:
    """``n // k`` examples per class (the first ``n % k`` classes get one more), drawn without
    replacement with ``seed``; returned in file order."""
    rng = np.random.default_rng(seed)
    base, extra = divmod(n, num_classes)
    picks = []
    for c in range(num_classes):
        want = base + (1 if c < extra else 0)
        pool = np.flatnonzero(y == c)
        if want > pool.size:
            raise ConfigError(
                "n",
                n,
                f"at most {num_classes * pool.size} for a balanced subset "
                f"(class {c} has {pool.size} training examples)",
            )
        picks.append(rng.choice(pool, size=want, replace=False))
    return np.sort(np.concatenate(picks))


def check_scaling(scaling: object) -> None:
    """Raise `ConfigError` naming ``scaling`` unless it is one of `SCALINGS`."""
    if scaling not in SCALINGS:
        raise ConfigError("scaling", scaling, "one of " + ", ".join(map(repr, SCALINGS)))


def standardize(
    x_train: np.ndarray, x_test: np.ndarray, scaling: str = "per-feature"
) -> tuple[np.ndarray, np.ndarray]:
    r"""$(x_j - \mu_j)/\sigma_j$ with $\mu_j, \sigma_j$ of the training inputs' feature $j$.

    ``scaling="per-feature"``: each feature its own $\sigma_j$ (features with $\sigma_j < 10^{-8}$,
    e.g. blank border pixels, are only centred). ``"global"``: one
    $\sigma=(\frac1D\sum_j\sigma_j^2)^{1/2}$ for all features, so a pixel that is almost always
    blank is not blown up to tens of standard deviations in the few images that touch it.
    """
    check_scaling(scaling)
    xtr = x_train.astype(np.float64)
    mu = xtr.mean(axis=0)
    sd = xtr.std(axis=0)
    if scaling == "global":
        sd = np.full_like(sd, np.sqrt(np.mean(sd**2)))
    sd = np.where(sd < 1e-8, 1.0, sd)
    return ((xtr - mu) / sd).astype(np.float32), ((x_test - mu) / sd).astype(np.float32)


def load(
    name: str,
    n: int | None = None,
    subset: Literal["first", "balanced"] = "first",
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    scaling: Literal["per-feature", "global"] = "per-feature",
) -> Dataset:
    """Load dataset ``name`` as device arrays.

    Args:
        name: a name of `DATASETS`.
        n: training examples to keep (None: all). The test set is kept whole.
        subset: ``"first"``: the first ``n`` in file order (Cohen et al.); ``"balanced"``: ``n/k``
            per class drawn with ``seed`` (classification only; regression and sequence datasets
            refuse it).
        seed: seed of the balanced draw (ignored by ``"first"``).
        data_dir: where on-disk datasets live (default ``$EOSLAB_DATA`` or
            ``~/.cache/eoslab/data``).
        scaling: how image and feature inputs are scaled after centring (`standardize`):
            ``"per-feature"`` or ``"global"``.

    Preprocessing: image and feature datasets are standardized with the statistics of the
    selected training examples: mean 0 per feature, and std 1 per feature (``scaling=
    "per-feature"``) or mean square 1 over all features (``"global"``); regression, toy and
    sequence sets (token ids) are left as generated.

    Raises:
        ConfigError: unknown name, bad subset or scaling, or ``n`` larger than the training set
            (checked before any data are read).
        DatasetNotFoundError: an on-disk dataset is not found.
    """
    spec = _spec(name)
    if subset not in SUBSETS:
        raise ConfigError("subset", subset, "one of " + ", ".join(map(repr, SUBSETS)))
    if subset == "balanced" and spec.task != "classification":
        raise ConfigError(
            "subset",
            subset,
            f"'first' ({name!r} is a {spec.task} dataset: no class per example to balance)",
        )
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ConfigError("seed", seed, "an int")
    check_scaling(scaling)
    _check_n(n, spec.train_size)
    x_tr, y_tr, x_te, y_te = spec.loader(Path(data_dir).expanduser() if data_dir else None)
    if n is not None:
        _check_n(n, len(y_tr))  # files on disk may hold fewer examples than the standard set
        if subset == "first":
            idx = np.arange(n)
        else:
            idx = _balanced_indices(y_tr, int(n), spec.num_classes, int(seed))
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    if spec.standardize:
        x_tr, x_te = standardize(x_tr, x_te, scaling)
    ydt = np.float32 if spec.task == "regression" else np.int32
    return Dataset(
        name=name,
        x_train=jnp.asarray(x_tr, jnp.float32),
        y_train=jnp.asarray(y_tr.astype(ydt)),
        x_test=jnp.asarray(x_te, jnp.float32),
        y_test=jnp.asarray(y_te.astype(ydt)),
        num_classes=spec.num_classes,
        input_shape=tuple(int(s) for s in x_tr.shape[1:]),
        task=spec.task,
    )
