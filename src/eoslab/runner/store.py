"""The run store: one directory per run, every file written atomically.

Layout::

    RUN/
      config.json            the full typed config, eoslab version, seed, command line, git hash
      manifest.json          status (running, completed, diverged, ...), last checkpoint
      metrics/part-000000-000099.parquet   one Parquet part per flush (rows with those steps)
      checkpoints/step-000000100.npz       the state to resume from (plain arrays, no pickle)
      figures/               written by ``eoslab plot``
      .eoslab-lock           the one-writer lock (`eoslab.runlock`): who writes the run now

Every file is first written to a temporary name in the same folder, flushed to disk, then renamed
over its final name with `os.replace`, so a run killed at any moment (SIGKILL included) leaves each
file either absent, whole and old, or whole and new. Metrics rows later than the last checkpoint are
dropped on resume, then measured again. One process writes a run directory at a time
(`RunStore.lock`); a second one is refused with a `RunInUseError` naming the first.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .._version import __version__
from ..errors import (
    EoslabError,
    UnsafeFileError,
)
from ..rundir import CHECKPOINT, PART, read_config, read_manifest, read_metrics, require_run
from ..runlock import LOCK_NAME, Holder, hold

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RunStore", "RunExistsError", "Damage", "atomic_write_bytes"]


class RunExistsError(EoslabError, FileExistsError):
    """The output directory already holds files; eoslab never overwrites a run silently.

    Fix: choose another ``--out``, or (when it holds a run) continue it with ``eoslab resume DIR``.
    """


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file and `os.replace` (all or nothing).

    The rename is atomic, so a killed process leaves the old file or the new one, never a mix;
    ``fsync`` also puts the bytes on disk before the rename (against power loss).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def _git_hash() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Damage(NamedTuple):
    """What `RunStore.verify` found: damaged files (with why) and the step a resume starts from."""

    files: list[tuple[str, str]]  # (path relative to the run, what is wrong)
    resume_step: int  # the last whole checkpoint's step (0: start over)
    checkpoint: Path | None  # that checkpoint
    lost_rows: bool  # damaged parts held rows before resume_step (so resume must start over)


class RunStore:
    """Reads and writes one run directory (see the module docstring for the layout).

    Every part and checkpoint is recorded in the manifest with its size and SHA-256 when it is
    written, so `verify` can tell a whole file from a truncated or overwritten one.
    """

    def __init__(self, path: str | os.PathLike, notes: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self._sums: dict[str, dict[str, Any]] = {}
        self.notes = dict(notes or {})  # facts about the run kept in every manifest

    # ---------------------------------------------------------------- creating / opening
    @property
    def metrics_dir(self) -> Path:
        return self.path / "metrics"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def figures_dir(self) -> Path:
        return self.path / "figures"

    def exists(self) -> bool:
        return (self.path / "config.json").is_file()

    def require_run(self) -> dict[str, Any]:
        """The run record, checked to be a run directory (`eoslab.rundir.require_run`)."""
        return require_run(self.path)

    def lock(self, purpose: str = "run") -> AbstractContextManager[Holder]:
        """Hold this run directory's one-writer lock (``with store.lock("resume"): ...``).

        An exclusive `fcntl.flock` on ``.eoslab-lock``, whose content names the holder; a second
        process is refused at once with a `RunInUseError` naming it; a lock left by a killed
        process is taken over (the kernel released it) with a warning. See `eoslab.runlock`.
        """
        return hold(self.path, purpose)

    def check_new(self) -> None:
        """Refuse (`RunExistsError`) a directory that holds anything but a lock file: a run
        (continue it with ``eoslab resume``) or someone else's files (choose another --out)."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise RunExistsError(
                f"{self.path} exists and is not a directory; eoslab never overwrites files. "
                "Choose another --out"
            )
        if not any(p.name != LOCK_NAME for p in self.path.iterdir()):
            return
        if self.exists():
            raise RunExistsError(
                f"{self.path} already holds a run; eoslab never overwrites a run. "
                f"Choose another --out, or continue it with: eoslab resume {self.path}"
            )
        raise RunExistsError(
            f"{self.path} already exists, is not empty and is not a run directory (no "
            "config.json); eoslab never overwrites files. Choose another --out"
        )

    def create(self, config: dict[str, Any]) -> None:
        """Start a new run here; refuses (never prompts) when the directory holds anything but
        its lock file. Called holding `lock`, the check cannot race with another process's."""
        self.check_new()
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_dir.mkdir()
        self.checkpoint_dir.mkdir()
        record = {
            "config": config,
            **({"notes": self.notes} if self.notes else {}),
            "eoslab_version": __version__,
            "seed": config.get("seed") if isinstance(config, dict) else None,
            "command_line": list(sys.argv),
            "git_hash": _git_hash(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_bytes(
            self.path / "config.json", json.dumps(record, indent=2, default=_json_default).encode()
        )
        self.write_manifest({"status": "running", "step": 0, "checkpoint": None})

    def extend(self, config: dict[str, Any], steps: int) -> None:
        """Record a longer budget: the config is updated (its extensions listed) and the run is
        marked running again, so a resume continues from the last checkpoint to ``steps``."""
        record = self.read_config()
        old = record.get("config", {}).get("steps")
        record.setdefault("extended", []).append(
            {"from_steps": old, "to_steps": steps, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        )
        record["config"] = config
        atomic_write_bytes(
            self.path / "config.json", json.dumps(record, indent=2, default=_json_default).encode()
        )
        man = self.read_manifest()
        self.write_manifest({**man, "status": "running", "steps": steps})

    def read_config(self) -> dict[str, Any]:
        """The run record (`eoslab.rundir.read_config`)."""
        return read_config(self.path)

    # ---------------------------------------------------------------- manifest
    def read_manifest(self) -> dict[str, Any]:
        """The manifest (`eoslab.rundir.read_manifest`); remembers its checksums."""
        man = read_manifest(self.path)
        self._sums.update(man.get("files", {}))
        return man

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest = {**self.notes, **manifest, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        manifest["files"] = dict(self._sums)
        atomic_write_bytes(
            self.path / "manifest.json",
            json.dumps(manifest, indent=2, default=_json_default).encode(),
        )

    def set_status(self, status: str, message: str) -> None:
        """Record ``status`` and ``message`` in the manifest, keeping the rest; best effort, never
        raises (it runs while another error is on its way out).

        On a full disk the atomic write (a new file) can fail; the manifest is then rewritten in
        place as compact JSON, which is shorter than the indented file it replaces, so it needs no
        new block. A crash in the middle of that leaves a damaged manifest, which `verify` reports
        and a resume rebuilds from the files on disk.
        """
        with contextlib.suppress(Exception):
            man = {**self.read_manifest(), "status": status, "message": message}
            man.pop("damaged", None)
            try:
                self.write_manifest(man)
                return
            except OSError:
                pass
            man = dict(man, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), files=dict(self._sums))
            data = json.dumps(man, separators=(",", ":"), default=_json_default).encode()
            with open(self.path / "manifest.json", "r+b") as f:
                f.write(data)
                f.truncate()
                f.flush()
                os.fsync(f.fileno())

    # ---------------------------------------------------------------- metrics
    def write_part(self, rows: pd.DataFrame) -> Path | None:
        """Write rows as one Parquet part named by its first and last step."""
        if rows is None or len(rows) == 0:
            return None
        first, last = int(rows["step"].iloc[0]), int(rows["step"].iloc[-1])
        buf = io.BytesIO()
        rows.reset_index(drop=True).to_parquet(buf, index=False)
        path = self.metrics_dir / f"part-{first:09d}-{last:09d}.parquet"
        data = buf.getvalue()
        atomic_write_bytes(path, data)
        self._sums[f"metrics/{path.name}"] = {"bytes": len(data), "sha256": _digest(data)}
        return path

    def metrics(self, *, up_to: int | None = None) -> pd.DataFrame:
        return read_metrics(self.path, up_to=up_to)

    def truncate_metrics(self, step: int) -> None:
        """Drop every row with ``step >= step`` (parts past a checkpoint, before a resume)."""
        import pandas as pd

        for f in sorted(self.metrics_dir.glob("part-*.parquet")):
            m = PART.match(f.name)
            if not m:
                continue
            first, last = int(m.group(1)), int(m.group(2))
            if first >= step:
                f.unlink()
            elif last >= step:
                df = pd.read_parquet(f)
                keep = df[df["step"] < step]
                f.unlink()
                self.write_part(keep)

    # ---------------------------------------------------------------- checkpoints
    def write_checkpoint(self, step: int, arrays: dict[str, np.ndarray]) -> Path:
        """Save plain arrays (no object arrays, no pickle) as ``step-N.npz``, atomically."""
        for k, v in arrays.items():
            if np.asarray(v).dtype == object:
                raise TypeError(f"checkpoint array {k!r} has dtype object; refusing to pickle")
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        path = self.checkpoint_dir / f"step-{step:09d}.npz"
        data = buf.getvalue()
        atomic_write_bytes(path, data)
        self._sums[f"checkpoints/{path.name}"] = {"bytes": len(data), "sha256": _digest(data)}
        return path

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        """The checkpoint the manifest names, or else the newest whole one on disk."""
        man = self.read_manifest()
        name = man.get("checkpoint")
        if name and (self.path / name).is_file():
            return int(man["checkpoint_step"]), self.path / name
        found = []
        for f in self.checkpoint_dir.glob("step-*.npz"):
            m = CHECKPOINT.match(f.name)
            if m:
                found.append((int(m.group(1)), f))
        return max(found) if found else None

    @staticmethod
    def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except ValueError as exc:  # object arrays need pickle: refused
            raise UnsafeFileError(f"{path}: refusing to load pickled objects ({exc})") from exc

    def prune_checkpoints(self, keep: Path) -> None:
        for f in self.checkpoint_dir.glob("step-*.npz"):
            if f != keep:
                with contextlib.suppress(OSError):
                    f.unlink()
                self._sums.pop(f"checkpoints/{f.name}", None)

    # ---------------------------------------------------------------- verification
    def _whole(self, f: Path) -> str:
        """'' if ``f`` is whole and readable, else what is wrong with it."""
        import pandas as pd

        rel = str(f.relative_to(self.path))
        try:
            data = f.read_bytes()
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"
        want = self._sums.get(rel)
        if want is not None and (len(data) != want["bytes"] or _digest(data) != want["sha256"]):
            return f"{len(data)} bytes whose checksum differs from the one written"
        try:
            if f.suffix == ".parquet":
                pd.read_parquet(io.BytesIO(data))
            else:
                with np.load(io.BytesIO(data), allow_pickle=False) as z:
                    [z[k] for k in z.files]
        except Exception as exc:  # noqa: BLE001 - any reader failure means damaged
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return f"not readable as {f.suffix[1:]} ({first[:80]})"
        return ""

    def verify(self, *, parts: bool = True) -> Damage:
        """Check every checkpoint, the manifest and (with ``parts``) every metrics part before any
        work; changes nothing."""
        self.read_config()
        man = self.read_manifest()
        damaged: list[tuple[str, str]] = []
        if man.get("damaged"):
            damaged.append(("manifest.json", "not valid JSON (rebuilt from the files on disk)"))
        ckpts = []
        for f in sorted(self.checkpoint_dir.glob("step-*.npz")):
            m = CHECKPOINT.match(f.name)
            if not m:
                continue
            why = self._whole(f)
            if why:
                damaged.append((f"checkpoints/{f.name}", why))
            else:
                ckpts.append((int(m.group(1)), f))
        named = man.get("checkpoint")
        if named and not (self.path / named).is_file():
            damaged.append((named, "missing (the manifest names it)"))
        step, ckpt = max(ckpts) if ckpts else (0, None)
        lost = False
        for f in sorted(self.metrics_dir.glob("part-*.parquet")) if parts else ():
            m = PART.match(f.name)
            if not m:
                continue
            why = self._whole(f)
            if why:
                damaged.append((f"metrics/{f.name}", why))
                lost = lost or int(m.group(1)) < step
        for rel in sorted(self._sums) if parts else ():  # recorded when written, gone now
            m = PART.match(Path(rel).name)
            if rel.startswith("metrics/") and m and not (self.path / rel).exists():
                damaged.append((rel, "missing (the manifest records it)"))
                lost = lost or int(m.group(1)) < step
        return Damage(damaged, step, ckpt, lost)

    def move_aside(self, rel: str) -> Path:
        """Move a damaged file into ``damaged/`` (never deleted) and forget its checksum."""
        src = self.path / rel
        dst = self.path / "damaged" / rel.replace("/", "__")
        dst.parent.mkdir(exist_ok=True)
        if src.exists():
            os.replace(src, dst)
        self._sums.pop(rel, None)
        return dst
