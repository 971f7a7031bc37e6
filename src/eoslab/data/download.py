"""Verified downloads: streamed, checksummed, resumable, moved into place atomically.

A download writes only to ``<dest>.part``. When the server closes early, the partial file stays so
that the next call resumes it with an HTTP ``Range`` request; when the bytes are complete but the
checksum differs from the published value, the partial file is deleted. ``dest`` itself appears
only through ``os.replace`` after the checksum matched, so it is never half-written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, CorruptFileError, DownloadError

__all__ = ["SOURCES", "Source", "download", "extract_tar", "file_digest"]


@dataclass(frozen=True)
class Source:
    """A published file: its URL and the checksum its publisher gives (``md5`` or ``sha256``)."""

    filename: str
    url: str
    md5: str | None = None
    sha256: str | None = None


_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

#: What ``eoslab data fetch NAME`` downloads (checksums as published by the hosts / torchvision).
SOURCES: dict[str, tuple[Source, ...]] = {
    "cifar10": (
        Source(
            "cifar-10-python.tar.gz",
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            md5="c58f30108f718f92721af3b95e74349a",
        ),
    ),
    "mnist": (
        Source(
            "train-images-idx3-ubyte.gz",
            _MNIST + "train-images-idx3-ubyte.gz",
            md5="f68b3c2dcbeaaa9fbdd348bbdeb94873",
        ),
        Source(
            "train-labels-idx1-ubyte.gz",
            _MNIST + "train-labels-idx1-ubyte.gz",
            md5="d53e105ee54ea40749a09fcbcd1e9432",
        ),
        Source(
            "t10k-images-idx3-ubyte.gz",
            _MNIST + "t10k-images-idx3-ubyte.gz",
            md5="9fb629c4189551a2d022fa330f9573f3",
        ),
        Source(
            "t10k-labels-idx1-ubyte.gz",
            _MNIST + "t10k-labels-idx1-ubyte.gz",
            md5="ec29112dd5afa0611ce80d1b7f02629c",
        ),
    ),
    "fashion-mnist": (
        Source(
            "train-images-idx3-ubyte.gz",
            _FASHION + "train-images-idx3-ubyte.gz",
            md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        ),
        Source(
            "train-labels-idx1-ubyte.gz",
            _FASHION + "train-labels-idx1-ubyte.gz",
            md5="25c81989df183df01b3e8a0aad5dffbe",
        ),
        Source(
            "t10k-images-idx3-ubyte.gz",
            _FASHION + "t10k-images-idx3-ubyte.gz",
            md5="bef4ecab320f06d8554ea6380940ec79",
        ),
        Source(
            "t10k-labels-idx1-ubyte.gz",
            _FASHION + "t10k-labels-idx1-ubyte.gz",
            md5="bb300cfdad3c16e7a12a480ee83cd310",
        ),
    ),
}


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest (``"md5"`` or ``"sha256"``) of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    chunk_size: int = 1 << 16,
) -> Path:
    """Download ``url`` to ``dest``, verified against ``sha256`` or ``md5``.

    Resumes an existing ``<dest>.part`` with ``Range: bytes=<size>-`` (a server that ignores the
    range restarts from 0). Returns ``dest``.

    Raises:
        ConfigError: no checksum given.
        DownloadError: the transfer ended early (``<dest>.part`` is kept for resuming).
        CorruptFileError: the checksum differs (``<dest>.part`` is deleted).
    """
    import http.client  # the network stack is imported on first download only
    import urllib.error
    import urllib.request

    if not (md5 or sha256):
        raise ConfigError("checksum", None, "an md5 or sha256 hex digest to verify the download")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "eoslab", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    total: int | None = None
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not offset:  # 416: the partial file is already complete
            raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
        resp = None
    except OSError as exc:
        raise DownloadError(f"download of {url} failed: {exc}") from exc
    if resp is not None:
        with resp:
            resumed = offset > 0 and resp.status == 206
            if not resumed:
                offset = 0
            length = resp.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            received = offset
            try:
                with open(part, "ab" if resumed else "wb") as f, _progress(progress) as bar:
                    task = bar.add_task(dest.name, total=total, completed=offset)
                    while chunk := resp.read(chunk_size):
                        f.write(chunk)
                        received += len(chunk)
                        bar.update(task, completed=received)
            except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as exc:
                raise DownloadError(
                    f"download of {url} stopped after {received} bytes ({exc}); "
                    f"rerun to resume from {part}"
                ) from exc
        if total is not None and received < total:
            raise DownloadError(
                f"download of {url} truncated: {received} of {total} bytes; "
                f"rerun to resume from {part}"
            )
    algorithm, expected = ("sha256", sha256) if sha256 else ("md5", md5)
    got = file_digest(part, algorithm)
    if got != expected.lower():
        part.unlink(missing_ok=True)
        raise CorruptFileError(
            f"download of {url} is corrupt: {algorithm} {got} != published "
            f"{expected}; the partial file was deleted, fetch again"
        )
    os.replace(part, dest)
    return dest


def extract_tar(archive: str | os.PathLike, into: str | os.PathLike, member_root: str) -> Path:
    """Extract the ``member_root/`` tree of a tar archive into ``into/member_root`` atomically.

    Members are extracted with tarfile's ``"data"`` filter (no absolute paths, no ``..``, no
    links out of the tree, no devices) into a temporary directory beside the target, then the tree
    is moved in with one ``os.replace``.
    """
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    target = into / member_root
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=into))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.name == member_root or m.name.startswith(member_root + "/")
            ]
            if not members:
                raise CorruptFileError(f"{archive}: no {member_root}/ inside the archive")
            tar.extractall(tmp, members=members, filter="data")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / member_root, target)
    except (tarfile.TarError, EOFError) as exc:
        raise CorruptFileError(f"{archive}: broken archive ({exc})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
