"""Session lifecycle: open → idle → closed, and whether a session is still exported.

A facility runs the engine for months; sessions end. :class:`SessionLifecycle` follows every
session from its counts (particles received and classified, sampled about once a second by the
engine) and from explicit closes (``otf2d close --session NAME``):

- **open**: a particle arrived within the last ``idle_after_minutes``;
- **idle**: none since then (the session may resume: a new particle makes it open again);
- **closed**: closed by a user, or idle for ``close_after_idle_hours``. Particles arriving for a
  closed session reopen it (logged): the data are never refused because of the lifecycle.

A closed session keeps its files. Its per-class series leave ``/metrics`` at once and every
other series ``retain_closed_minutes`` after it closed; meanwhile ``otf2d_session_state`` says it
is closed, so alert rules can leave it out. The state that must survive a restart (closed or not,
when, why, the last particle time) lives in ``<session>/lifecycle.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from otf2d.core.config import LifecycleConfig
from otf2d.core.durable import write_json_atomic
from otf2d.core.errors import InputError

log = logging.getLogger(__name__)

OPEN, IDLE, CLOSED = "open", "idle", "closed"
#: Values of the ``state`` label of ``otf2d_session_state``.
LIFECYCLE_STATES: tuple[str, ...] = (OPEN, IDLE, CLOSED)
#: The file of a session's lifecycle, in its folder.
LIFECYCLE_FILE = "lifecycle.json"
LIFECYCLE_SCHEMA = 1


@dataclass(frozen=True)
class Activity:
    """What is known about one session's activity (immutable; replaced on every change).

    Attributes
    ----------
    received, classified
        Cumulative particles journaled and folded into the classes.
    last_particle_time
        Unix time when ``received`` last grew (or when the session was first seen).
    closed_at
        Unix time of the close, ``None`` while not closed.
    closed_by
        ``"user"`` or ``"idle"`` once closed.
    counted
        Whether the counts were observed (``False`` for an activity restored from disk: its first
        counts after a restart are a baseline, not new particles).
    """

    received: int = 0
    classified: int = 0
    last_particle_time: float = 0.0
    closed_at: float | None = None
    closed_by: str | None = None
    counted: bool = True

    def state(self, now: float, config: LifecycleConfig) -> str:
        """``open``, ``idle`` or ``closed`` at ``now``."""
        if self.closed_at is not None:
            return CLOSED
        return IDLE if now - self.last_particle_time >= config.idle_after_minutes * 60.0 else OPEN

    def exported(self, now: float, config: LifecycleConfig) -> bool:
        """Whether the session still appears in ``/metrics`` at ``now``."""
        return self.closed_at is None or now - self.closed_at < config.retain_closed_minutes * 60.0

    def to_json(self, now: float, config: LifecycleConfig) -> dict[str, Any]:
        """The activity and the state, as strict JSON."""
        fields = asdict(self)
        fields.pop("counted")
        return {**fields, "state": self.state(now, config), "idle_seconds": max(0.0, now - self.last_particle_time)}


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def load_activity(path: Path) -> Activity | None:
    """The activity saved in ``path`` (``None`` when there is none).

    Raises
    ------
    InputError
        The file exists but is not a lifecycle record (which file, what is wrong).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable lifecycle record: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema") != LIFECYCLE_SCHEMA:
        raise InputError(path, f"not a lifecycle record of schema {LIFECYCLE_SCHEMA}")
    closed_at = data.get("closed_at")
    last = data.get("last_particle_time")
    closed_by = data.get("closed_by")
    if not _is_time(last) or last is None:
        raise InputError(path, f"last_particle_time must be a unix time, got {last!r}")
    if closed_at is not None and not _is_time(closed_at):
        raise InputError(path, f"closed_at must be a unix time or null, got {closed_at!r}")
    if closed_by not in (None, "user", "idle"):
        raise InputError(path, f"closed_by must be user, idle or null, got {closed_by!r}")
    return Activity(
        last_particle_time=float(last),
        closed_at=None if closed_at is None else float(closed_at),
        closed_by=closed_by,
        counted=False,
    )


def save_activity(path: Path, activity: Activity) -> None:
    """Write the part of ``activity`` that must survive a restart to ``path`` atomically."""
    write_json_atomic(
        path,
        {
            "schema": LIFECYCLE_SCHEMA,
            "last_particle_time": activity.last_particle_time,
            "closed_at": activity.closed_at,
            "closed_by": activity.closed_by,
        },
    )


class SessionLifecycle:
    """The activity and lifecycle state of every session, thread-safe.

    Parameters
    ----------
    config
        ``idle_after_minutes``, ``close_after_idle_hours``, ``retain_closed_minutes``.
    clock
        Source of unix time (for tests).
    on_change
        Called as ``on_change(session, activity)`` after a close or reopen and after every
        transition between open and idle (the engine saves :data:`LIFECYCLE_FILE` there).
    """

    def __init__(
        self,
        config: LifecycleConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[str, Activity], None] | None = None,
    ) -> None:
        self.config = config if config is not None else LifecycleConfig()
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._sessions: dict[str, Activity] = {}
        self._last_state: dict[str, str] = {}

    def restore(self, session: str, activity: Activity) -> None:
        """Start following ``session`` from a saved activity (at engine start)."""
        with self._lock:
            self._sessions[session] = activity
            self._last_state[session] = activity.state(self._clock(), self.config)

    def observe(self, session: str, received: int, classified: int, now: float | None = None) -> str:
        """Record the session's cumulative counts; returns its state after them.

        A growing ``received`` count marks activity (and reopens a closed session). A session
        idle for ``close_after_idle_hours`` is closed here (``closed_by = "idle"``).
        """
        t = self._clock() if now is None else float(now)
        with self._lock:
            old = self._sessions.get(session)
            if old is None:
                new = Activity(received, classified, t)
            elif not old.counted:
                new = replace(old, received=received, classified=classified, counted=True)
            elif received > old.received:
                new = replace(old, received=received, classified=classified, last_particle_time=t)
                if old.closed_at is not None:
                    log.warning("session %s received particles after it was closed: reopened", session)
                    new = replace(new, closed_at=None, closed_by=None)
            else:
                new = replace(old, received=max(received, old.received), classified=max(classified, old.classified))
            limit = self.config.close_after_idle_hours * 3600.0
            if new.closed_at is None and limit > 0 and t - new.last_particle_time >= limit:
                log.info("session %s idle for %.1f h: closed", session, (t - new.last_particle_time) / 3600.0)
                new = replace(new, closed_at=t, closed_by="idle")
            self._sessions[session] = new
        reopened = old is not None and old.closed_at is not None and new.closed_at is None
        return self._settle(session, new, t, reopened=reopened)

    def _settle(self, session: str, activity: Activity, now: float, *, reopened: bool = False) -> str:
        state = activity.state(now, self.config)
        with self._lock:
            before = self._last_state.get(session)
            self._last_state[session] = state
        if (before != state or reopened) and before is not None and self._on_change is not None:
            try:
                self._on_change(session, activity)
            except Exception:  # persisting must never stop the sampling
                log.exception("session %s: saving the lifecycle failed", session)
        return state

    def close(self, session: str, by: str = "user", now: float | None = None) -> Activity:
        """Close ``session`` (idempotent: closing a closed session keeps its first close).

        Raises
        ------
        InputError
            No such session.
        """
        t = self._clock() if now is None else float(now)
        with self._lock:
            old = self._sessions.get(session)
            if old is None:
                raise InputError(None, f"no session named {session!r}")
            new = old if old.closed_at is not None else replace(old, closed_at=t, closed_by=by)
            self._sessions[session] = new
        if new is not old:
            log.info("session %s closed by %s", session, by)
            with self._lock:
                self._last_state[session] = OPEN  # force the change callback
            self._settle(session, new, t)
        return new

    def forget(self, session: str) -> None:
        """Stop following ``session``."""
        with self._lock:
            self._sessions.pop(session, None)
            self._last_state.pop(session, None)

    def activities(self) -> dict[str, Activity]:
        """Every followed session's activity (a copy)."""
        with self._lock:
            return dict(self._sessions)

    def state(self, session: str, now: float | None = None) -> str | None:
        """The session's state (``None`` when not followed)."""
        activity = self.activities().get(session)
        return None if activity is None else activity.state(self._clock() if now is None else now, self.config)


def lifecycle_path(session_root: str | os.PathLike[str]) -> Path:
    """Where the session's lifecycle record lives."""
    return Path(session_root) / LIFECYCLE_FILE


__all__ = [
    "CLOSED",
    "IDLE",
    "LIFECYCLE_FILE",
    "LIFECYCLE_STATES",
    "OPEN",
    "Activity",
    "SessionLifecycle",
    "lifecycle_path",
    "load_activity",
    "save_activity",
]
