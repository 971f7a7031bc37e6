"""Datasets read from disk: CIFAR-10 (python or binary batches), MNIST and Fashion-MNIST (IDX).

Search order: ``data_dir`` if given (and then only it), else ``$EOSLAB_DATA`` or
``~/.cache/eoslab/data`` and, for Fashion-MNIST, where Debian's ``dataset-fashion-mnist`` package
installs it (``/usr/share/datasets/fashion-mnist``; ``make fashion-data``).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, DatasetNotFoundError
from . import safe_pickle
from .specs import DatasetSpec, RawData, data_dirs

__all__ = [
    "CIFAR_BIN",
    "SPECS",
    "CIFAR_PY",
    "SYSTEM_FASHION_MNIST",
    "find_cifar10",
    "find_idx",
    "load_cifar10",
    "missing_message",
    "load_idx_dataset",
    "read_cifar_binary",
    "read_cifar_python",
    "read_idx",
]

CIFAR_PY = "cifar-10-batches-py"
CIFAR_BIN = "cifar-10-batches-bin"
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ----------------------------------------------------------------------------- CIFAR-10
def _cifar_images(flat: np.ndarray, path: Path) -> np.ndarray:
    if flat.ndim != 2 or flat.shape[1] != 3072:
        raise CorruptFileError(f"{path}: data of shape {flat.shape}, expected (N, 3072)")
    return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW rows -> NHWC


def read_cifar_python(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One python batch (a pickled dict with ``data`` uint8 ``(N, 3072)`` and ``labels``), read
    with the restricted unpickler; returns images ``(N, 32, 32, 3)`` uint8 and labels ``(N,)``."""
    path = Path(path)
    batch = safe_pickle.load(path)
    if not isinstance(batch, dict):
        raise CorruptFileError(f"{path}: a CIFAR batch is a dict, found {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise CorruptFileError(f"{path}: missing 'data' or 'labels' (keys {sorted(batch)})")
    x = _cifar_images(np.asarray(batch["data"], np.uint8), path)
    y = np.asarray(batch["labels"], np.int64)
    if y.shape != (x.shape[0],) or y.min(initial=0) < 0 or y.max(initial=0) > 9:
        raise CorruptFileError(f"{path}: {y.shape[0]} labels for {x.shape[0]} images or not 0..9")
    return x, y


def read_cifar_binary(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch: records of 1 label byte + 3072 pixel bytes (R, G, B planes, 32x32)."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise CorruptFileError(
            f"{path}: {raw.size} bytes is not a whole number of 3073-byte records (truncated?)"
        )
    rec = raw.reshape(-1, 3073)
    y = rec[:, 0].astype(np.int64)
    if y.max() > 9:
        raise CorruptFileError(f"{path}: label {y.max()} outside 0..9")
    return _cifar_images(rec[:, 1:], path), y


def find_cifar10(data_dir: Path | None) -> tuple[Path, str] | None:
    """``(directory, "python" | "binary")`` of the first complete CIFAR-10 copy found."""
    for root in data_dirs(data_dir):
        for base in (root, root / "cifar10", root / "cifar-10"):
            py = base / CIFAR_PY
            if all((py / f).is_file() for f in [*_CIFAR_TRAIN, "test_batch"]):
                return py, "python"
            b = base / CIFAR_BIN
            if all((b / f"{f}.bin").is_file() for f in [*_CIFAR_TRAIN, "test_batch"]):
                return b, "binary"
    return None


def load_cifar10(data_dir: Path | None) -> RawData:
    """CIFAR-10: 50,000 train and 10,000 test images ``(32, 32, 3)`` uint8 and labels 0..9."""
    found = find_cifar10(data_dir)
    if found is None:
        raise DatasetNotFoundError(missing_message("cifar10", data_dir))
    d, fmt = found
    read, suffix = (read_cifar_python, "") if fmt == "python" else (read_cifar_binary, ".bin")
    parts = [read(d / f"{f}{suffix}") for f in _CIFAR_TRAIN]
    x_te, y_te = read(d / f"test_batch{suffix}")
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        x_te,
        y_te,
    )


# ----------------------------------------------------------------------------- IDX (MNIST)
def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (gzipped or not): magic ``00 00 type ndim``, big-endian int32 dims, data."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise CorruptFileError(f"{path}: broken gzip stream ({exc})") from exc
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise CorruptFileError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptFileError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    want = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != want:
        raise CorruptFileError(
            f"{path}: {len(raw) - header} data bytes, header says {want} (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_file(d: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (d / name).is_file():
            return d / name
    alt = stem.replace("-idx", ".idx")  # some mirrors use train-images.idx3-ubyte
    for name in (alt, alt + ".gz"):
        if (d / name).is_file():
            return d / name
    return None


def find_idx(dirs: list[Path], direct: tuple[Path, ...] = ()) -> dict[str, Path] | None:
    """The four IDX files of the first directory in ``dirs`` (or a subdirectory) holding all,
    else of the first in ``direct`` holding all itself (its subdirectories are not searched)."""
    for d in dirs:
        for cand in (d, *(sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else [])):
            files = {stem: _idx_file(cand, stem) for stem in IDX_FILES}
            if all(files.values()):
                return files  # type: ignore[return-value]
    for d in direct:
        files = {stem: _idx_file(d, stem) for stem in IDX_FILES}
        if all(files.values()):
            return files  # type: ignore[return-value]
    return None


def _idx_dirs(name: str, data_dir: Path | None) -> list[Path]:
    subdirs = {
        "mnist": ("mnist", "MNIST/raw"),
        "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw"),
    }[name]
    dirs = [root / s for root in data_dirs(data_dir) for s in subdirs]
    if name == "fashion-mnist" and data_dir is None:  # an explicit data_dir is searched alone
        dirs.append(SYSTEM_FASHION_MNIST)
    return dirs


def _find_named_idx(name: str, data_dir: Path | None) -> dict[str, Path] | None:
    # the dataset's own subfolders first; an explicit data_dir may also hold the files itself
    return find_idx(_idx_dirs(name, data_dir), (data_dir,) if data_dir is not None else ())


def load_idx_dataset(name: str, data_dir: Path | None) -> RawData:
    """MNIST or Fashion-MNIST: images ``(N, 28, 28, 1)`` uint8 and labels 0..9."""
    files = _find_named_idx(name, data_dir)
    if files is None:
        raise DatasetNotFoundError(missing_message(name, data_dir))
    x_tr, y_tr, x_te, y_te = (read_idx(files[s]) for s in IDX_FILES)
    for x, y, split in ((x_tr, y_tr, "train"), (x_te, y_te, "t10k")):
        if x.ndim != 3 or y.shape != (x.shape[0],):
            raise CorruptFileError(f"{name} {split}: images {x.shape} and labels {y.shape} differ")
    return (x_tr[..., None], y_tr.astype(np.int64), x_te[..., None], y_te.astype(np.int64))


_CIFAR_FILES = "data_batch_1..data_batch_5 and test_batch"
_IDX_NAMES = ", ".join(IDX_FILES) + " (each may be .gz)"
#: The files each on-disk dataset needs and the folders of a data directory that may hold them.
EXPECTS = {
    "cifar10": (
        f"{CIFAR_PY}/ ({_CIFAR_FILES}, python batches) or {CIFAR_BIN}/ ({_CIFAR_FILES}, each .bin)",
        "cifar10/ or cifar-10/",
    ),
    "mnist": (_IDX_NAMES, "mnist/ or MNIST/raw/ (or a folder in them)"),
    "fashion-mnist": (_IDX_NAMES, "fashion-mnist/ or FashionMNIST/raw/ (or a folder in them)"),
}


def missing_message(name: str, data_dir: Path | None, field: str = "data_dir") -> str:
    """Why ``name`` is not available: the directories searched (``field`` names the option that
    set them, e.g. ``--data-dir``), the files expected there, and how to get them."""
    how = f"`eoslab data fetch {name}" + (f" --data-dir {data_dir}`" if data_dir else "`")
    if name == "fashion-mnist":
        how += " (on Debian/Ubuntu also `make fashion-data`: apt's dataset-fashion-mnist)"
    files, folders = EXPECTS[name]
    if data_dir is not None:
        return (
            f"{field}={str(data_dir)!r} does not hold dataset {name!r}: expected {files} in it "
            f"or in its {folders}. Put the files there or run {how}."
        )
    where = ("directly or " if name == "cifar10" else "") + f"in {folders} under "
    where += " or ".join(str(r) for r in data_dirs(None))
    if name == "fashion-mnist":
        where += f", or directly in {SYSTEM_FASHION_MNIST}"
    return (
        f"dataset {name!r} not found: expected {files} {where}. Put the files there, pass "
        f"{field} / --data-dir, set $EOSLAB_DATA, or run {how}."
    )


def _locate_cifar(data_dir: Path | None) -> str | None:
    found = find_cifar10(data_dir)
    return f"{found[0]} ({found[1]})" if found else None


def _locate_idx(name: str):
    def locate(data_dir: Path | None) -> str | None:
        files = _find_named_idx(name, data_dir)
        return str(next(iter(files.values())).parent) if files else None

    return locate


#: The on-disk datasets, registered by `eoslab.data.registry`.
SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "cifar10",
        "disk (python or binary batches); fetchable",
        50000,
        10000,
        (32, 32, 3),
        10,
        load_cifar10,
        _locate_cifar,
        fetchable=True,
        description="CIFAR-10",
        expects=" in ".join(EXPECTS["cifar10"]),
    ),
    DatasetSpec(
        "mnist",
        "disk (IDX, .gz or raw); fetchable",
        60000,
        10000,
        (28, 28, 1),
        10,
        lambda d: load_idx_dataset("mnist", d),
        _locate_idx("mnist"),
        fetchable=True,
        description="MNIST",
        expects=" in ".join(EXPECTS["mnist"]),
    ),
    DatasetSpec(
        "fashion-mnist",
        "disk (IDX) or Debian dataset-fashion-mnist; fetchable",
        60000,
        10000,
        (28, 28, 1),
        10,
        lambda d: load_idx_dataset("fashion-mnist", d),
        _locate_idx("fashion-mnist"),
        fetchable=True,
        description="Fashion-MNIST",
        expects=" in ".join(EXPECTS["fashion-mnist"]),
    ),
)
