r"""A token stream for language models: a text file read as bytes (on disk), or a synthetic
stream of the same shape.

Tokenizer: **byte-level**. Token $i$ is the $i$-th byte of the file's UTF-8 encoding (ids
0..255; no GPT-2 BPE table is needed offline). The stream $s_0, s_1, \ldots$ is cut into
non-overlapping windows of $T + 1$ tokens starting every $T$ tokens; window $j$ gives the input
$x_j = (s_{jT}, \ldots, s_{jT+T-1})$ and the next-token labels
$y_j = (s_{jT+1}, \ldots, s_{jT+T})$. The first 90% of the windows are the training set, the
rest the test set (nanoGPT's split).

The synthetic stream (`synthetic_token_windows`) is a seeded order-1 Markov chain over the 256
byte values, each with 8 likely successors, so a model has structure to learn; its windows have
the shape of the real ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, DatasetNotFoundError
from .specs import DatasetSpec, RawData, data_dirs

__all__ = [
    "MAX_WINDOWS",
    "SPECS",
    "TEXT_FILES",
    "find_text",
    "load_text",
    "synthetic_token_windows",
    "token_windows",
]

#: The file names searched, directly in a data directory or in its ``text/``.
TEXT_FILES = ("text.txt", "input.txt")
#: At most this many windows are read from a file (2^20 windows of 256 tokens: 268M bytes).
MAX_WINDOWS = 1 << 20
VOCAB = 256
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 16384, 1024


def find_text(data_dir: Path | None) -> Path | None:
    """The first of ``text.txt`` / ``input.txt`` directly in a data directory or in its
    ``text/`` (``data_dir`` if given, else the default directory)."""
    for root in data_dirs(data_dir):
        for base in (root, root / "text"):
            for name in TEXT_FILES:
                if (base / name).is_file():
                    return base / name
    return None


def token_windows(stream: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``(n, T)`` and next-token labels ``(n, T)`` from a 1-D token stream: window $j$
    is ``stream[jT : jT + T + 1]``; ``n = min((len - 1) // T, MAX_WINDOWS)``."""
    n = min((stream.size - 1) // length, MAX_WINDOWS)
    idx = np.arange(n)[:, None] * length + np.arange(length + 1)[None, :]
    w = stream[idx]
    return w[:, :-1], w[:, 1:]


def _split(x: np.ndarray, y: np.ndarray) -> RawData:
    cut = max(1, int(round(0.9 * x.shape[0])))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def load_text(data_dir: Path | None, length: int = 256) -> RawData:
    """The byte-level windows of the text file `find_text` finds (90% train, 10% test)."""
    path = find_text(data_dir)
    if path is None:
        raise DatasetNotFoundError(missing_text_message(data_dir, length))
    stream = np.frombuffer(path.read_bytes(), np.uint8).astype(np.int64)
    if stream.size < 2 * length + 2:
        raise CorruptFileError(
            f"{path}: {stream.size} bytes; at least {2 * length + 2} make one training and one "
            f"test window of {length} tokens"
        )
    return _split(*token_windows(stream, length))


def synthetic_token_windows(n: int, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` windows of ``length`` tokens (and their next-token labels) drawn from the seeded
    Markov chain of the module docstring, each window an independent chain from a uniform
    start."""
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, VOCAB, size=(VOCAB, 8))
    s = np.empty((n, length + 1), np.int64)
    s[:, 0] = rng.integers(0, VOCAB, size=n)
    for t in range(1, length + 1):
        pick = rng.integers(0, 8, size=n)
        s[:, t] = successors[s[:, t - 1], pick]
    return s[:, :-1], s[:, 1:]


def _synthetic(length: int) -> RawData:
    x, y = synthetic_token_windows(SYNTHETIC_TRAIN + SYNTHETIC_TEST, length)
    return x[:SYNTHETIC_TRAIN], y[:SYNTHETIC_TRAIN], x[SYNTHETIC_TRAIN:], y[SYNTHETIC_TRAIN:]


def missing_text_message(data_dir: Path | None, length: int = 256) -> str:
    """Why dataset ``text-T{length}`` is not available, and where it is looked for."""
    where = " or ".join(str(r) for r in data_dirs(data_dir))
    return (
        f"dataset 'text-T{length}' not found: expected a text file named "
        f"{' or '.join(TEXT_FILES)} directly in, or in text/ under, {where}. Put one there "
        f"(any UTF-8 text; it is read as bytes) or pass --data-dir."
    )


def _locate(data_dir: Path | None) -> str | None:
    path = find_text(data_dir)
    return str(path) if path else None


SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "text-T256",
        "disk (a text file, byte-level tokens)",
        MAX_WINDOWS,
        MAX_WINDOWS // 9,
        (256,),
        VOCAB,
        load_text,
        _locate,
        task="sequence",
        standardize=False,
        description="a text file as bytes, windows of 256 tokens (at most the file's windows "
        "and 2^20), next-token labels (N, 256); for 'gpt2-small' / 'transformer'",
        expects=f"{' or '.join(TEXT_FILES)} in the data directory or its text/",
    ),
    DatasetSpec(
        "text-T256-synthetic",
        "generated (eoslab.data.tokens: a Markov chain over bytes)",
        SYNTHETIC_TRAIN,
        SYNTHETIC_TEST,
        (256,),
        VOCAB,
        lambda _: _synthetic(256),
        lambda _: "built in",
        task="sequence",
        standardize=False,
        description="synthetic stand-in for text-T256: windows of 256 byte tokens of a "
        "seeded Markov chain, next-token labels (N, 256)",
    ),
)
