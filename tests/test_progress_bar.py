"""The plain-text progress bar of ``otf2d classify``: rate, ETA, redraw policy, terminal vs log."""

from __future__ import annotations

import io

import pytest

from otf2d.engine.classify.progress_bar import ProgressBar


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_and_eta_follow_the_average_rate() -> None:
    clock = FakeClock()
    bar = ProgressBar(1000, stream=io.StringIO(), interactive=True, clock=clock)
    assert bar.eta_seconds() == float("inf")
    clock.now += 10.0
    bar.advance(250)
    assert bar.rate() == pytest.approx(25.0)
    assert bar.eta_seconds() == pytest.approx(750 / 25.0)
    bar.set_phase("online", 3, 21)
    line = bar.line()
    assert line.startswith("online 3/21")
    assert "250/1000 particles" in line
    assert "25/s" in line
    assert "ETA 0:30" in line
    assert " 25.0%" in line


def test_terminal_rewrites_one_line_and_ends_it() -> None:
    clock = FakeClock()
    out = io.StringIO()
    bar = ProgressBar(100, stream=out, interactive=True, min_interval_seconds=0.5, clock=clock)
    bar.set_phase("init", 0, 2)
    clock.now += 0.1
    bar.advance(10)  # too soon: not drawn
    clock.now += 1.0
    bar.advance(10)
    bar.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r") == 3  # set_phase, the due advance, close
    assert "20/100 particles" in text.split("\r")[-1]


def test_log_mode_writes_whole_lines_at_most_every_interval() -> None:
    clock = FakeClock()
    out = io.StringIO()
    bar = ProgressBar(100, stream=out, interactive=False, log_interval_seconds=10.0, clock=clock)
    for _ in range(20):
        clock.now += 1.0
        bar.advance(5)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 2 <= len(lines) <= 4  # first advance, every 10 s, and close
    assert "100/100 particles" in lines[-1]
