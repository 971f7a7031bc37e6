"""Progress of a run: step, loss, sharpness against its threshold, elapsed and remaining time.

On a terminal a rich bar; elsewhere (a pipe, ``make demo | tee``, CI) one plain line every few
seconds. Before the first steps a notice says that compiling takes a while.

The time left is estimated from the steps' rate since the second update: the time to the first
update holds the compilation of the probes, and the chunk of steps after it the compilation of
the step, so a rate over them would promise hours for a run of minutes. No estimate is shown
until two chunks after those have been timed.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

__all__ = ["Progress"]


def _fmt(x: float | None, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Shows progress on stderr: a rich bar on a terminal, a plain line every ``every`` seconds
    otherwise.

    Args:
        total: the step budget.
        initial: the step a resumed run starts from.
        enabled: ``True`` always shows, ``False`` never, ``None`` shows unless stderr is closed.
        every: seconds between plain lines.
        clock: the clock read for elapsed and remaining time (seconds; tests pass a fake one).
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        enabled: bool | None = None,
        description: str = "training",
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.initial, self.every = total, initial, every
        self.enabled = enabled if enabled is not None else not sys.stderr.closed
        self._bar = None
        self._clock = clock
        self._start = clock()
        self._marks: list[tuple[float, int]] = []  # (time, step) of each update
        self._last_line = -math.inf
        self._tty = sys.stderr.isatty()
        if self.enabled and self._tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as RichProgress

            console = Console(stderr=True)
            wide = console.width >= 110
            columns = [TextColumn("[bold]{task.description}")]
            if wide:
                columns.append(BarColumn(bar_width=None))
            columns += [MofNCompleteColumn(), TextColumn("{task.fields[stats]}")]
            self._bar = RichProgress(*columns, console=console, transient=False)
            self._task = self._bar.add_task(description, total=total, completed=initial, stats="")
            self._bar.start()

    def notice(self, text: str) -> None:
        """A one-off line (e.g. that the first steps compile)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def left(self, step: int) -> float | None:
        """Seconds left at the rate since the second update, once two chunks after it are timed
        (the time to the first update and the first chunk hold compilation); else None."""
        if len(self._marks) < 4:
            return None
        (t0, s0), (t1, s1) = self._marks[1], self._marks[-1]
        if s1 <= s0:
            return None
        return (t1 - t0) / (s1 - s0) * max(self.total - step, 0)

    def _times(self, step: int) -> str:
        elapsed = self._clock() - self._start
        left = self.left(step)
        return f"elapsed {_clock(elapsed)}" + ("" if left is None else f", left {_clock(left)}")

    def update(
        self, step: int, loss: float | None, sharpness: float | None, threshold: float | None
    ) -> None:
        if not self.enabled:
            return
        if not self._marks or step > self._marks[-1][1]:
            self._marks.append((self._clock(), step))
        stats = f"loss {_fmt(loss)}  sharpness {_fmt(sharpness, '.3f')} / {_fmt(threshold, '.3f')}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, stats=f"{stats}  {self._times(step)}")
            return
        now = self._clock()
        if now - self._last_line >= self.every or step >= self.total:
            self._last_line = now
            line = f"step {step}/{self.total}  {stats}  {self._times(step)}"
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
