"""A progress bar for runs: step, loss, sharpness against its threshold, time left (rich)."""

from __future__ import annotations

import math
import sys
import time

__all__ = ["Progress"]


def _fmt(x: float | None, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


class Progress:
    """Shows a rich progress bar on a terminal; prints a line every ~10 s otherwise (or nothing).

    Args:
        total: the step budget.
        enabled: ``True`` always shows, ``False`` never, ``None`` only on a terminal (stderr).
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        enabled: bool | None = None,
        description: str = "training",
    ) -> None:
        self.total = total
        self.enabled = enabled
        self._bar = None
        self._last_line = 0.0
        self._tty = sys.stderr.isatty()
        if enabled is None:
            self.enabled = self._tty
        if self.enabled and self._tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._task = self._bar.add_task(description, total=total, completed=initial, stats="")
            self._bar.start()

    def update(
        self, step: int, loss: float | None, sharpness: float | None, threshold: float | None
    ) -> None:
        if not self.enabled:
            return
        stats = f"loss {_fmt(loss)}  sharpness {_fmt(sharpness, '.3f')} / {_fmt(threshold, '.3f')}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, stats=stats)
        else:
            now = time.monotonic()
            if now - self._last_line >= 10.0 or step >= self.total:
                self._last_line = now
                print(f"step {step}/{self.total}  {stats}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
