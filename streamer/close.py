"""Tell the engine that a session's collection has ended (``otf2d stream --once --close-session``).

The streamer knows when a collection is over only when it is told so: with ``--once`` and
``--close-session`` it sends what exists, waits for every acknowledgement and then sends a
``close_session`` control request (``otf2d.core.wire``) through the engine's control client
(:class:`otf2d.control.client.EngineClient`, with the streamer's CurveZMQ certificates when it has
them), exactly what ``otf2d close`` does. The engine then shows the session closed, checkpoints it,
writes a last snapshot and drops its series from ``/metrics`` after ``retain_closed_minutes``.
"""

from __future__ import annotations

from typing import Any

from otf2d.control.client import EngineClient, EngineRequestError, EngineTimeoutError
from otf2d.core.curve import CurveClientFiles
from otf2d.core.errors import Otf2dError


class CloseRefused(Otf2dError):
    """The engine refused to close the session, or did not answer in time."""


def close_session(
    endpoint: str, session: str, *, timeout_s: float = 10.0, curve: CurveClientFiles | None = None
) -> dict[str, Any]:
    """Ask the engine at ``endpoint`` to close ``session``; returns the engine's result.

    ``curve``: this streamer's and the engine's certificate files (``None``: plain TCP); an engine
    with CurveZMQ answers nothing to a client without a listed key.

    Raises
    ------
    CloseRefused
        The engine refused (e.g. no such session, or the session belongs to another client key) or
        gave no answer within ``timeout_s``.
    """
    try:
        with EngineClient(endpoint, timeout_s=timeout_s, curve=curve) as client:
            return client.close_session(session)
    except EngineRequestError as exc:
        raise CloseRefused(f"the engine refused to close {session!r}: {exc.reason}") from exc
    except EngineTimeoutError as exc:
        what = f"no answer from the engine at {endpoint} to closing {session!r} within {timeout_s:g} s"
        raise CloseRefused(what) from exc


__all__ = ["CloseRefused", "close_session"]
