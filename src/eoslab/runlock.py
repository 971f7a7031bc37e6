"""One writer per run directory: an exclusive `fcntl.flock` on the file ``DIR/.eoslab-lock``.

``eoslab run``, ``eoslab resume``, ``eoslab report`` and figures written into a run directory take
it for as long as they write; a second writer is refused at once (`RunInUseError`, one line naming
the holder). The file records who holds it (pid, host, command, purpose, since when) and is emptied
when the holder lets go. The kernel releases a flock when its process ends, however it ends
(SIGKILL or a power cut included), so a lock left by a killed process is never in the way: the next
writer gets it and says whose record it found. The file itself is never deleted: deleting a lock
file races with a process that has just opened it. This module sits below ``runner/`` and
``report/``, which both take the lock.

The lock is re-entrant within one thread (a resume holds it from its first check to its last
figure); another thread of the same process is refused like another process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shlex
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from .errors import DamagedRunWarning, RunInUseError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: nothing to lock with
    fcntl = None

__all__ = ["LOCK_NAME", "Holder", "hold", "hold_run_of", "read_holder", "run_dir_of"]

LOCK_NAME = ".eoslab-lock"
"""The lock file's name inside a run directory (hidden, never deleted, empty when free)."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds (or held) a run directory's lock."""

    pid: int
    host: str
    command: str  # the command line, as the shell would quote it
    purpose: str  # run, resume, report, figure
    since: str  # local time, ISO 8601

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.purpose}: {self.command}) since {self.since}"


@dataclasses.dataclass
class _Held:
    fd: int
    thread: int
    holder: Holder
    count: int = 1


_HELD: dict[str, _Held] = {}  # real path of the run directory -> this process's hold
_GUARD = threading.Lock()


def _parse(data: bytes) -> Holder | None:
    if not data.strip():
        return None
    try:
        rec = json.loads(data)
        return Holder(
            int(rec["pid"]),
            str(rec["host"]),
            str(rec["command"]),
            str(rec["purpose"]),
            str(rec["since"]),
        )
    except (ValueError, KeyError, TypeError):
        return Holder(-1, "?", "an unreadable record", "?", "?")


def read_holder(run_dir: str | os.PathLike) -> Holder | None:
    """The record in ``run_dir``'s lock file (None: free, or its holder has not written it yet).

    The record says who took the lock last; only a failed `hold` proves that process still holds it.
    """
    try:
        return _parse((Path(run_dir) / LOCK_NAME).read_bytes()[:65536])
    except OSError:
        return None


def _me(purpose: str) -> Holder:
    argv = list(sys.argv) or ["python"]
    argv[0] = os.path.basename(argv[0]) or argv[0]
    command = shlex.join(argv)
    return Holder(
        os.getpid(),
        socket.gethostname(),
        command if len(command) <= 300 else command[:297] + "...",
        purpose,
        time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def _refusal(run_dir: Path, holder: Holder | None) -> RunInUseError:
    if holder is None:
        who = "another process (it has just taken the lock, or is letting it go)"
    else:
        who = holder.describe()
    hint = "wait for it to end"
    if holder is not None and holder.pid > 0 and holder.host == socket.gethostname():
        hint += f", or stop it with: kill {holder.pid} (it saves everything and ends interrupted)"
    return RunInUseError(
        f"{run_dir} is in use by {who}; one process writes a run directory at a time: {hint}"
    )


@contextlib.contextmanager
def hold(run_dir: str | os.PathLike, purpose: str) -> Iterator[Holder]:
    """Hold ``run_dir``'s one-writer lock for the ``with`` block (the directory must exist).

    Raises `RunInUseError` at once (never waits) when another process or thread holds it. A record
    left in the lock file means its writer ended without letting go (killed); the lock is taken
    over (the kernel has released it) and a `DamagedRunWarning` names that writer.
    """
    run_dir = Path(run_dir)
    key = os.path.realpath(run_dir)
    me = threading.get_ident()
    with _GUARD:
        held = _HELD.get(key)
        if held is not None and held.thread != me:
            raise _refusal(run_dir, dataclasses.replace(held.holder, purpose="another thread"))
        if held is not None:
            held.count += 1
    if held is not None:  # re-entered by the thread that holds it
        try:
            yield held.holder
        finally:
            with _GUARD:
                held.count -= 1
        return
    fd = os.open(os.path.join(key, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    warnings.warn(
                        f"{run_dir}: its file system cannot lock files ({exc.strerror}); "
                        "one writer per run directory is not enforced there",
                        DamagedRunWarning,
                        stacklevel=3,
                    )
                elif exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise _refusal(run_dir, read_holder(run_dir)) from None
                else:
                    raise
        left = _parse(os.pread(fd, 65536, 0))
        holder = _me(purpose)
        with contextlib.suppress(OSError):  # the record is for people; the flock is the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(dataclasses.asdict(holder)).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    if left is not None:
        warnings.warn(
            f"{run_dir}: its lock was left by {left.describe()}, which ended without letting go "
            "(killed?); no process holds it now, so it is taken over",
            DamagedRunWarning,
            stacklevel=3,
        )
    with _GUARD:
        _HELD[key] = _Held(fd, me, holder)
    try:
        yield holder
    finally:
        with _GUARD:
            del _HELD[key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # empty: let go cleanly (a record left means a killed holder)
        os.close(fd)  # releases the flock


def run_dir_of(path: str | os.PathLike) -> Path | None:
    """The run directory (one holding ``config.json`` and ``manifest.json``) that ``path`` is or
    lies in, if any."""
    p = Path(os.path.abspath(path))
    for d in (p, *p.parents):
        if (d / "config.json").is_file() and (d / "manifest.json").is_file():
            return d
    return None


@contextlib.contextmanager
def hold_run_of(path: str | os.PathLike, purpose: str) -> Iterator[Holder | None]:
    """`hold` the run directory ``path`` is in (a figure or report written into it); a path
    outside every run directory needs no lock (None)."""
    run_dir = run_dir_of(path)
    if run_dir is None:
        yield None
        return
    with hold(run_dir, purpose) as holder:
        yield holder
