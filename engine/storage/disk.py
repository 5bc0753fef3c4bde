"""A full disk pauses the engine's writes instead of failing sessions, and they resume by themselves.

:func:`is_disk_full` recognises "no space left" (``ENOSPC``, ``EDQUOT``) from the OS and SQLite's
"database or disk is full". :class:`DiskGuard` is shared by ingest and the worker: the first such
error trips it (logged once, with the reason); while tripped, ingest NACKs with the reason and the
worker neither folds nor checkpoints nor snapshots, until ``retry_s`` has passed; then the next
write is tried, and its success clears the guard (logged once: "disk space is back").
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk or quota is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        if isinstance(current, sqlite3.Error) and "disk is full" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


class DiskGuard:
    """Pause writes while the disk is full (see the module docstring).

    Parameters
    ----------
    retry_s
        How long after a disk-full error the next write is tried.
    clock
        Monotonic seconds (injectable for tests).
    """

    def __init__(self, retry_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_s = float(retry_s)
        self.clock = clock
        self._lock = threading.Lock()
        self._reason = ""
        self._retry_at = 0.0
        self.trips = 0

    def paused(self) -> str:
        """The reason writes are paused now ("" when a write may be tried)."""
        with self._lock:
            if self._reason and self.clock() < self._retry_at:
                return self._reason
            return ""

    @property
    def full(self) -> bool:
        """Whether the last write failed for lack of space (cleared by the next success)."""
        return bool(self._reason)

    def trip(self, exc: BaseException, what: str) -> None:
        """Record a disk-full error of ``what`` (logged only when the guard was clear)."""
        with self._lock:
            first = not self._reason
            self._reason = f"disk full ({what}: {exc}); writes paused, retried every {self.retry_s:g} s"
            self._retry_at = self.clock() + self.retry_s
            self.trips += 1
        if first:
            log.error("%s", self._reason)

    def clear(self) -> None:
        """A write succeeded: resume (logged once)."""
        if not self._reason:
            return
        with self._lock:
            was, self._reason = self._reason, ""
        if was:
            log.warning("disk space is back: ingest, folding and snapshots resume")


__all__ = ["DiskGuard", "is_disk_full"]
