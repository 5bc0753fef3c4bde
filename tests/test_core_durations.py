"""otf2d.core.durations: the clock of progress lines and the words of verdict reasons."""

from __future__ import annotations

import math

from otf2d.core.durations import format_clock, format_in_words


def test_a_clock_rounds_and_grows_hours() -> None:
    assert format_clock(0) == "0:00"
    assert format_clock(61.4) == "1:01"
    assert format_clock(3 * 3600 + 5 * 60 + 7) == "3:05:07"
    assert format_clock(float("inf")) == "--:--"
    assert format_clock(float("nan")) == "--:--"
    assert format_clock(-1.0) == "--:--"


def test_words_pick_the_unit_a_person_would() -> None:
    assert format_in_words(41 * 3600 + 59) == "41 h"
    assert format_in_words(1500) == "25 min"
    assert format_in_words(20) == "1 min"
    assert format_in_words(5 * 3600) == "5.0 h"
    assert format_in_words(5 * 86400) == "5.0 days"
    assert format_in_words(math.inf) == "never"
