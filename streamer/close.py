"""Tell the engine that a session's collection has ended (``otf2d stream --once --close-session``).

The streamer knows when a collection is over only when it is told so: with ``--once`` and
``--close-session`` it sends what exists, waits for every acknowledgement and then sends a
``close_session`` control request (``otf2d.core.wire``) on its own short-lived DEALER socket, exactly
what ``otf2d close`` does. The engine then shows the session closed, checkpoints it, writes a
last snapshot and drops its series from ``/metrics`` after ``retain_closed_minutes``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import zmq

from otf2d.core.errors import Otf2dError
from otf2d.core.wire import KIND_CLOSE_SESSION, KIND_REPLY, decode_control, encode_control


class CloseRefused(Otf2dError):
    """The engine refused to close the session, or did not answer in time."""


def close_session(endpoint: str, session: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """Ask the engine at ``endpoint`` to close ``session``; returns the engine's result.

    Raises
    ------
    CloseRefused
        The engine refused (e.g. no such session) or gave no answer within ``timeout_s``.
    """
    request_id = uuid.uuid4().hex
    socket: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(endpoint)
        socket.send_multipart(encode_control(KIND_CLOSE_SESSION, request_id=request_id, session=session))
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            if not socket.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                break
            try:
                reply = decode_control(socket.recv_multipart())
            except ValueError:
                continue
            if reply["kind"] != KIND_REPLY or reply.get("request_id") != request_id:
                continue
            if not reply["ok"]:
                raise CloseRefused(f"the engine refused to close {session!r}: {reply.get('error', 'no reason')}")
            result: dict[str, Any] = reply.get("result", {})
            return result
    finally:
        socket.close(linger=0)
    raise CloseRefused(f"no answer from the engine at {endpoint} to closing {session!r} within {timeout_s:g} s")


__all__ = ["CloseRefused", "close_session"]
