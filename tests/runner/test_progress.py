"""The progress line's time left: honest from the first estimate (a fake clock)."""

from __future__ import annotations

import re

from eoslab.runner.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _left(line: str) -> str | None:
    m = re.search(r"left (\d+:\d\d:\d\d)", line)
    return m.group(1) if m else None


def test_no_estimate_until_two_chunks_after_compilation_are_timed(capsys):
    # a 2-minute run: 13 s to the first probe (compiling it), 14 s more for the first 10 steps
    # (compiling the step), then 2 s per 10 steps; the old estimate at step 10 was 27 s / 10 steps
    # x 590 steps left = 0:26:33 for a run with 2 minutes to go
    clock = FakeClock()
    bar = Progress(600, enabled=True, every=0.0, clock=clock)
    for now, step in ((13.0, 0), (27.0, 10), (29.0, 20), (31.0, 30), (33.0, 40)):
        clock.now = now
        bar.update(step, 0.5, 7.0, 20.0)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [_left(ln) for ln in lines[:3]] == [None, None, None]
    assert all("elapsed" in ln for ln in lines)
    # from step 10 on: 2 s per 10 steps (by hand), so 560 steps take 112 s at step 40
    rate = (33.0 - 27.0) / (40 - 10)
    assert rate == 0.2
    assert _left(lines[3]) == "0:01:54"  # 570 steps x 0.2 s at step 30
    assert _left(lines[4]) == "0:01:52"
    assert bar.left(40) == rate * 560


def test_a_resumed_run_also_times_from_its_second_update(capsys):
    clock = FakeClock()
    bar = Progress(1000, initial=500, enabled=True, every=0.0, clock=clock)
    for now, step in ((20.0, 500), (50.0, 550), (51.0, 600)):
        clock.now = now
        bar.update(step, 0.5, 7.0, 20.0)
    assert bar.left(600) is None  # one timed chunk only
    clock.now = 52.0
    bar.update(650, 0.5, 7.0, 20.0)
    assert bar.left(650) == (52.0 - 50.0) / (650 - 550) * 350
    assert _left(capsys.readouterr().err.strip().splitlines()[-1]) == "0:00:07"
