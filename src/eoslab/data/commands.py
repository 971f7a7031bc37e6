"""Library side of ``eoslab data list`` and ``eoslab data fetch`` (the CLI only calls these)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from ..errors import ConfigError
from . import download as _download
from .disk import find_cifar10
from .registry import DATASETS, data_dirs

__all__ = ["fetch_dataset", "list_datasets_table"]

# where `fetch_dataset` puts each dataset under the data directory, where the loaders search
_LAYOUT = {"cifar10": ".", "mnist": "mnist", "fashion-mnist": "fashion-mnist"}


def list_datasets_table(data_dir: str | os.PathLike | None = None, width: int = 140) -> str:
    """A text table of every dataset: name, source, train/test sizes, input shape, classes (or
    output dimension), task, and whether it is available now (and where)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="eoslab datasets")
    for col in ("name", "source", "train", "test", "input", "classes", "task", "available"):
        table.add_column(col)
    d = Path(data_dir).expanduser() if data_dir is not None else None
    for name in sorted(DATASETS):
        spec = DATASETS[name]
        where = spec.locate(d)
        avail = (
            f"yes ({where})"
            if where
            else ("no (eoslab data fetch " + name + ")" if spec.fetchable else "no")
        )
        table.add_row(
            name,
            spec.source,
            f"{spec.train_size:,}",
            f"{spec.test_size:,}",
            "x".join(map(str, spec.input_shape)),
            str(spec.num_classes),
            spec.task,
            avail,
        )
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(table)
    return console.export_text()


def fetch_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    mirror: str | None = None,
    checksums: dict[str, str] | None = None,
    progress: bool = True,
) -> Path:
    """Download dataset ``name`` into ``data_dir`` (default ``$EOSLAB_DATA`` or
    ``~/.cache/eoslab/data``), verify it and lay it out where `eoslab.data.load` looks.

    ``mirror`` replaces the host part of every URL (files keep their names); ``checksums`` maps
    file names to md5 digests of a mirror that serves different bytes (tests). Returns the
    directory holding the dataset.
    """
    if name not in _download.SOURCES:
        raise ConfigError(
            "dataset",
            name,
            "one of "
            + ", ".join(map(repr, _download.SOURCES))
            + " (the others are built in or read from disk)",
        )
    root = data_dirs(data_dir)[0]
    dest_dir = root / _LAYOUT[name]
    if name == "cifar10":
        found = find_cifar10(root)
        if found is not None:
            return found[0]
    for src in _download.SOURCES[name]:
        url = mirror.rstrip("/") + "/" + src.filename if mirror else src.url
        md5, sha256 = src.md5, src.sha256
        if checksums and src.filename in checksums:
            md5, sha256 = checksums[src.filename], None
        path = dest_dir / src.filename
        if path.exists():  # keep a verified copy; replace a corrupt one
            algorithm, expected = ("sha256", sha256) if sha256 else ("md5", md5)
            if _download.file_digest(path, algorithm) == (expected or "").lower():
                continue
            path.unlink()
        _download.download(url, path, md5=md5, sha256=sha256, progress=progress)
    if name == "cifar10":
        archive = dest_dir / _download.SOURCES[name][0].filename
        return _download.extract_tar(archive, dest_dir, "cifar-10-batches-py")
    return dest_dir
