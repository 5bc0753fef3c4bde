"""A plain-text progress bar for long offline runs (no dependency): phase, iteration, particles, rate, ETA.

On a terminal it is one line rewritten in place (``\\r``); into a file or a pipe it writes a whole
line at most every ``log_interval_seconds`` (so logs stay readable). Work is counted in particles
processed; the ETA assumes the remaining particles go at the average rate so far.

Example::

    bar = ProgressBar(total_particles=110_000)
    bar.set_phase("online", 1, 21)
    bar.advance(5000)
    bar.close()
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from otf2d.core.durations import format_clock

#: Width of the bar itself, in characters.
BAR_WIDTH = 24


class ProgressBar:
    """Progress of a classification on a text stream (see the module docstring).

    Parameters
    ----------
    total_particles
        Particles that the whole run will process (every pass counted), ≥ 1.
    stream
        Where to write (default ``sys.stderr``).
    interactive
        Rewrite one line in place; ``None``: when ``stream`` is a terminal.
    min_interval_seconds
        Shortest time between two redraws on a terminal.
    log_interval_seconds
        Shortest time between two lines when not on a terminal.
    clock
        Monotonic clock (seconds), injectable for tests.
    """

    def __init__(
        self,
        total_particles: int,
        *,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        min_interval_seconds: float = 0.1,
        log_interval_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = max(1, int(total_particles))
        self.stream = stream if stream is not None else sys.stderr
        if interactive is None:
            isatty = getattr(self.stream, "isatty", None)
            interactive = bool(isatty()) if callable(isatty) else False
        self.interactive = interactive
        self.min_interval = min_interval_seconds if interactive else log_interval_seconds
        self.clock = clock
        self.start = clock()
        self.done = 0
        self.phase = "start"
        self.iteration = 0
        self.total_iterations = 0
        self._last_draw = -float("inf")
        self._width = 0

    @property
    def elapsed_seconds(self) -> float:
        """Seconds since the bar was made."""
        return self.clock() - self.start

    def rate(self) -> float:
        """Average particles per second so far (0 before any)."""
        elapsed = self.elapsed_seconds
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self) -> float:
        """Seconds left at the average rate (``inf`` before any progress)."""
        rate = self.rate()
        return max(self.total - self.done, 0) / rate if rate > 0 else float("inf")

    def line(self) -> str:
        """The text of the bar now."""
        frac = min(self.done / self.total, 1.0)
        filled = round(frac * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        where = f"{self.phase} {self.iteration}/{self.total_iterations}" if self.total_iterations else self.phase
        return (
            f"{where:<14} |{bar}| {100 * frac:5.1f}%  {self.done}/{self.total} particles  "
            f"{self.rate():,.0f}/s  elapsed {format_clock(self.elapsed_seconds)}  "
            f"ETA {format_clock(self.eta_seconds())}"
        )

    def set_phase(self, phase: str, iteration: int, total_iterations: int) -> None:
        """Enter ``phase`` at ``iteration`` of ``total_iterations`` (redraws now)."""
        self.phase, self.iteration, self.total_iterations = phase, int(iteration), int(total_iterations)
        self.draw(force=self.interactive)

    def advance(self, particles: int) -> None:
        """Count ``particles`` more as processed (redraws when due)."""
        self.done += int(particles)
        self.draw()

    def draw(self, *, force: bool = False) -> None:
        """Write the bar if ``min_interval`` has passed since the last time (or ``force``)."""
        now = self.clock()
        if not force and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        text = self.line()
        if self.interactive:
            pad = " " * max(self._width - len(text), 0)
            self.stream.write("\r" + text + pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        self._last_draw = -float("inf")
        self.draw(force=True)
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()


__all__ = ["BAR_WIDTH", "ProgressBar"]
