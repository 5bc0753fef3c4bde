"""Logging of problems caused by clients or the environment, once per cause and rate-limited.

A client that sends a thousand bad messages a second must not fill the journal with a thousand
warnings and tracebacks: :class:`ProblemLog` logs the first occurrence of each *cause* (a short
key such as ``"rejected batch"`` or ``"engine error: KeyError"``), then at most one line per
``interval_s`` for that cause, saying how many were not logged in between. A traceback is logged
only with the first occurrence of an unexpected exception's cause.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Cause:
    last_logged: float
    suppressed: int = 0


class ProblemLog:
    """Rate-limited problem logging (see the module docstring).

    Parameters
    ----------
    logger
        Where the lines go.
    interval_s
        Least time between two lines of the same cause.
    clock
        Monotonic seconds (injectable for tests).
    max_causes
        Causes remembered; beyond, the oldest are forgotten (a client cannot grow this table).
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_causes: int = 256,
    ) -> None:
        self.logger = logger
        self.interval_s = float(interval_s)
        self.clock = clock
        self.max_causes = max_causes
        self._causes: dict[str, _Cause] = {}
        self._lock = threading.Lock()
        self.total = 0

    def _due(self, cause: str) -> tuple[bool, int, bool]:
        """``(log now, suppressed since the last line, first time)`` for one occurrence of ``cause``."""
        now = self.clock()
        with self._lock:
            self.total += 1
            entry = self._causes.get(cause)
            if entry is None:
                if len(self._causes) >= self.max_causes:
                    self._causes.pop(next(iter(self._causes)))
                self._causes[cause] = _Cause(now)
                return True, 0, True
            if now - entry.last_logged < self.interval_s:
                entry.suppressed += 1
                return False, 0, False
            suppressed, entry.suppressed, entry.last_logged = entry.suppressed, 0, now
            return True, suppressed, False

    def report(self, level: int, cause: str, message: str, *, traceback: bool = False) -> bool:
        """Log ``message`` under ``cause`` if due; ``traceback`` adds the current exception's, the first time.

        Returns whether a line was written.
        """
        due, suppressed, first = self._due(cause)
        if not due:
            return False
        more = f" ({suppressed} more like it in the last {self.interval_s:g} s)" if suppressed else ""
        self.logger.log(level, "%s%s", message, more, exc_info=traceback and first)
        return True


__all__ = ["ProblemLog"]
