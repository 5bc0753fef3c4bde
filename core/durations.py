"""Durations as people read them: a clock (``1:05:07``) on progress lines, words (``41 h``) in reasons."""

from __future__ import annotations

import math


def format_clock(seconds: float) -> str:
    """``H:MM:SS`` or ``M:SS`` of a duration in seconds, rounded (``--:--`` when unknown)."""
    if not seconds >= 0 or seconds == math.inf:
        return "--:--"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_in_words(seconds: float) -> str:
    """A duration in words for a reason: ``"40 min"``, ``"41 h"``, ``"6.0 days"``, ``"never"``."""
    if not math.isfinite(seconds):
        return "never"
    if seconds < 3600:
        return f"{max(1, round(seconds / 60))} min"
    hours = seconds / 3600
    if hours < 72:
        return f"{hours:.1f} h" if hours < 10 else f"{round(hours)} h"
    return f"{hours / 24:.1f} days"


__all__ = ["format_clock", "format_in_words"]
