"""A snapshot of a live session: ask the running engine for one now and wait until it is on disk.

Uses only :class:`otf2d.control.client.EngineClient` (torch-free: core + pyzmq). The engine writes the
snapshot into the session's ``snapshots/`` folder and reports that folder; this machine must see
it (the same host, or a shared filesystem) — the snapshot is then read like any other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otf2d.control.client import EngineClient, EngineTimeoutError
from otf2d.core.curve import CurveClientFiles
from otf2d.core.errors import InputError

#: Seconds between two status polls while waiting for the snapshot.
POLL_INTERVAL_S = 0.25


@dataclass(frozen=True)
class LiveSnapshot:
    """Where the engine wrote the requested snapshot.

    Attributes
    ----------
    session
        The session name.
    iteration
        The snapshot's iteration (``run_itNNN``).
    directory
        The session's snapshot folder as the engine reported it.
    n_particles
        Particles in the snapshot.
    """

    session: str
    iteration: int
    directory: Path
    n_particles: int


def request_snapshot(
    client: Any,
    session: str,
    *,
    wait_s: float = 120.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> LiveSnapshot:
    """Ask for a snapshot of ``session`` now and poll the engine's status until it is written.

    Parameters
    ----------
    client
        An :class:`otf2d.control.client.EngineClient` (or anything with its ``snapshot`` and ``status``).
    session
        The session to snapshot.
    wait_s
        Longest wait for the snapshot to be on disk, seconds.
    clock, sleep
        Time source and sleep (tests pass fakes).

    Returns
    -------
    LiveSnapshot
        The iteration and folder of the snapshot written.

    Raises
    ------
    EngineRequestError
        The engine refused (no such session, no classes yet).
    EngineTimeoutError
        No answer, or the snapshot was not written within ``wait_s``.
    """
    # An error from an earlier snapshot may still be reported: only a new one ends the wait early.
    earlier_error = client.status(session)["sessions"].get(session, {}).get("snapshot_error")
    scheduled = client.snapshot(session)
    iteration = int(scheduled["iteration"])
    deadline = clock() + float(wait_s)
    while True:
        status = client.status(session)["sessions"].get(session, {})
        written = status.get("last_snapshot")
        if written is not None and int(written["iteration"]) >= iteration:
            return LiveSnapshot(
                session=session,
                iteration=int(written["iteration"]),
                directory=Path(str(written.get("directory") or scheduled["directory"])),
                n_particles=int(written.get("n_particles", 0)),
            )
        error = status.get("snapshot_error")
        if error and error != earlier_error:
            raise InputError(None, f"the engine could not write snapshot {iteration} of session {session!r}: {error}")
        if clock() >= deadline:
            raise EngineTimeoutError(f"snapshot {iteration} of session {session!r} not written within {wait_s:g} s")
        sleep(POLL_INTERVAL_S)


def live_snapshot_directory(
    endpoint: str,
    session: str,
    *,
    timeout_s: float = 5.0,
    wait_s: float = 120.0,
    curve: CurveClientFiles | None = None,
) -> LiveSnapshot:
    """Connect to the engine at ``endpoint`` and :func:`request_snapshot` of ``session``.

    Raises
    ------
    InputError
        The snapshot folder the engine reports is not visible from this machine.
    EngineRequestError, EngineTimeoutError
        As :func:`request_snapshot`.
    """
    with EngineClient(endpoint, timeout_s=timeout_s, curve=curve) as client:
        live = request_snapshot(client, session, wait_s=wait_s)
    if not live.directory.is_dir():
        raise InputError(
            live.directory,
            f"the engine wrote snapshot {live.iteration} of {session!r} here, but this folder is not visible from "
            "this machine: run the command where the engine's data folder is mounted",
        )
    return live


__all__ = ["POLL_INTERVAL_S", "LiveSnapshot", "live_snapshot_directory", "request_snapshot"]
