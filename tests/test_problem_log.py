"""Problems are logged once per cause, then at most once per interval with how many were left out."""

from __future__ import annotations

import logging

import pytest

from otf2d.engine.serving.problem_log import ProblemLog


def test_a_cause_is_logged_once_then_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    problems = ProblemLog(logging.getLogger("test.problems"), interval_s=60.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="test.problems")
    for _ in range(1000):
        problems.report(logging.WARNING, "bad batch", "rejected a batch")
    assert caplog.text.count("rejected a batch") == 1
    problems.report(logging.WARNING, "other cause", "something else")
    assert "something else" in caplog.text  # another cause has its own first line
    now[0] = 61.0
    assert problems.report(logging.WARNING, "bad batch", "rejected a batch")
    assert "(999 more like it in the last 60 s)" in caplog.text
    assert problems.total == 1002


def test_a_traceback_only_the_first_time(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    problems = ProblemLog(logging.getLogger("test.tb"), interval_s=1.0, clock=lambda: now[0])
    caplog.set_level(logging.ERROR, logger="test.tb")
    for step in range(3):
        now[0] = 2.0 * step
        try:
            raise KeyError("x")
        except KeyError:
            problems.report(logging.ERROR, "engine error KeyError", "boom", traceback=True)
    assert caplog.text.count("Traceback") == 1
    assert caplog.text.count("boom") == 3


def test_the_table_of_causes_is_bounded() -> None:
    problems = ProblemLog(logging.getLogger("test.bounded"), max_causes=8)
    for i in range(100):
        problems.report(logging.DEBUG, f"cause {i}", "m")
    assert len(problems._causes) <= 8
