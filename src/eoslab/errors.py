"""User-facing errors: one class per situation, each saying what failed and how to fix it."""

from __future__ import annotations

import math
import signal

import numpy as np


class EoslabError(Exception):
    """Base class of every error eoslab raises on purpose."""


class ConfigError(EoslabError, ValueError):
    """A field of a config or an argument has a value eoslab does not accept.

    The message names the field, the value received and the values accepted.
    """

    def __init__(self, field: str, value: object, accepted: str, hint: str = "") -> None:
        self.field, self.value, self.accepted = field, value, accepted
        msg = f"{field}={value!r} is not accepted; expected {accepted}."
        if hint:
            msg += f" {hint}"
        super().__init__(msg)


class DivergenceError(EoslabError, FloatingPointError):
    """The loss or the parameters became non-finite (NaN or inf) during a run."""


class UnsafeFileError(EoslabError, ValueError):
    """A file asked to run code or contained objects eoslab refuses to load."""


class CorruptFileError(EoslabError, ValueError):
    """A data file or a download is truncated, malformed or fails its checksum.

    Delete the file (downloads remove a corrupt file themselves) and fetch it again.
    """


class DownloadError(CorruptFileError):
    """A download stopped before the expected size; rerun to resume from ``<dest>.part``."""


class DatasetNotFoundError(EoslabError, FileNotFoundError):
    """A dataset read from disk is not under any searched directory.

    Put it under ``--data-dir`` / ``$EOSLAB_DATA`` or run ``eoslab data fetch NAME``.
    """


class NotConvergedError(EoslabError, RuntimeError):
    """An iterative solve did not reach its tolerance within its budget."""


class NotARunError(EoslabError, ValueError):
    """A directory given as a run is not one: a run directory holds ``config.json`` with an
    eoslab run record and ``manifest.json``, both written by ``eoslab run``.

    Fix: give the directory ``eoslab run`` wrote (its ``--out``); nothing was written.
    """


def check_choice(field: str, value: object, choices: tuple | list) -> None:
    """Raise `ConfigError` unless `value` is one of `choices`."""
    if value not in choices:
        raise ConfigError(field, value, "one of " + ", ".join(repr(c) for c in choices))


def check_positive(field: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise `ConfigError` unless `value` is a finite number > 0 (or >= 0)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(field, value, "a finite number " + (">= 0" if allow_zero else "> 0"))


def check_int(field: str, value: object, low: int = 1) -> int:
    """Raise `ConfigError` unless `value` is an integer (Python or NumPy, not bool) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(field, value, f"an integer >= {low}")
    return int(value)


class DamagedRunError(EoslabError, OSError):
    """A run directory's files cannot be used (unreadable config, manifest, checkpoint or part),
    or the disk refused a write. Nothing that was whole has been changed.

    Fix: the message names the file; a damaged metrics part or checkpoint is moved aside into
    ``DIR/damaged/`` by ``eoslab resume``, which then recomputes the lost rows.
    """


class DamagedRunWarning(UserWarning):
    """A file of a run directory was damaged and has been left out or moved aside (the message
    names it and says what eoslab does instead)."""


class RunInUseError(EoslabError, OSError):
    """Another process is writing this run directory (``eoslab run``, ``resume``, ``report`` or
    ``plot``): one writer per run directory. The message names that process (pid, host, command,
    since when); nothing has been changed.

    Fix: wait for it to end, or stop it (``kill PID``: it saves everything measured and ends
    "interrupted"), then try again.
    """


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM after writing every row measured and a
    checkpoint at the step it had reached (manifest status "interrupted"); ``eoslab resume DIR``
    continues it to the numbers of an uninterrupted run.

    ``signum`` is the signal; ``exit_code`` is the shell's convention 128 + signum (130 for
    SIGINT, 143 for SIGTERM), which ``eoslab`` exits with.
    """

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = int(signum)
        super().__init__(message or f"interrupted by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
