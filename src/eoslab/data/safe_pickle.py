"""A restricted unpickler for CIFAR-10 python batches: plain data only, never code.

A pickle can name any importable callable and call it while loading (``__reduce__``). This
unpickler resolves only the handful of globals that a numpy array needs to be rebuilt; dicts,
lists, bytes, str, int and float come from pickle opcodes directly. Any other global (``os.system``,
``builtins.eval``, ``subprocess.Popen``, ...) is refused with `UnsafeFileError` *before* it is
called, so nothing from the file runs.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import numpy as np

from ..errors import UnsafeFileError

__all__ = ["ALLOWED_GLOBALS", "SafeUnpickler", "load", "loads"]

#: The only ``(module, name)`` pairs a file may reference: numpy array and dtype reconstruction,
#: and ``_codecs.encode``, which Python 3 uses to pickle ``bytes`` under protocol 2.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


def _resolve(module: str, name: str) -> Any:
    """The admitted global, without importing the deprecated ``numpy.core`` alias."""
    if name == "_reconstruct":
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct
        return _reconstruct
    if name == "encode":
        return _latin1_encode
    return {"ndarray": np.ndarray, "dtype": np.dtype}[name]


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` limited to the latin-1 codec that protocol-2 pickles of bytes use."""
    if encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafeFileError(f"refused _codecs.encode with codec {encoding!r} in a pickle")
    return text.encode("latin-1")


_PLAIN = (dict, list, tuple, bytes, str, int, float, bool, type(None))


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only `ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return _resolve(module, name)
        raise UnsafeFileError(
            f"refused to load {module}.{name} from a pickle: only plain data (dict, list, bytes, "
            "str, int, numpy arrays) are accepted; the file may try to run code, nothing was run"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError("refused a pickle with persistent ids (not a plain data file)")


def _check_plain(obj: Any, depth: int = 0) -> None:
    if depth > 20:
        raise UnsafeFileError("pickle nests deeper than a CIFAR batch can")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafeFileError("refused a numpy array of Python objects in a pickle")
        return
    if not isinstance(obj, _PLAIN):
        raise UnsafeFileError(f"refused an object of type {type(obj).__name__} in a pickle")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, depth + 1)
            _check_plain(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_plain(v, depth + 1)


def loads(data: bytes, *, encoding: str = "bytes") -> Any:
    """Unpickle plain data from ``data`` (``encoding="bytes"`` reads Python 2 pickles, as CIFAR's).

    Raises:
        UnsafeFileError: the pickle names a global outside `ALLOWED_GLOBALS` or yields anything
            but plain data.
    """
    try:
        obj = SafeUnpickler(io.BytesIO(data), encoding=encoding).load()
    except UnsafeFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UnsafeFileError(f"not a readable plain-data pickle: {exc}") from exc
    _check_plain(obj)
    return obj


def load(path: str | os.PathLike, *, encoding: str = "bytes") -> Any:
    """`loads` of the file at ``path``."""
    with open(path, "rb") as f:
        return loads(f.read(), encoding=encoding)
