"""A small DEALER client for the engine's control requests (torch-free: imports only core and pyzmq).

Example::

    with EngineClient("tcp://gpu-node:5555") as client:
        print(client.status())                       # every session
        client.start_session("grid3", {"n_classes": 50})
        client.snapshot("grid3")                     # write a snapshot now
        client.set_class_override("grid3", 7, "junk")  # class 7 of the gallery is junk

Every request carries a fresh ``request_id`` and waits up to ``timeout_s`` for the ``reply`` with
that id (other messages are ignored). A reply with ``ok = false`` raises :class:`EngineRequestError`;
no reply in time raises :class:`EngineTimeoutError`.
"""

from __future__ import annotations

import time
import uuid
from types import TracebackType
from typing import Any

import zmq

from otf2d.control.curve import apply_client
from otf2d.core.curve import CurveClientFiles
from otf2d.core.errors import DecodeError, Otf2dError
from otf2d.core.wire import (
    KIND_CLOSE_SESSION,
    KIND_PAUSE,
    KIND_PING,
    KIND_PONG,
    KIND_REPLY,
    KIND_RESUME,
    KIND_SET_CLASS_OVERRIDE,
    KIND_SNAPSHOT,
    KIND_START_SESSION,
    KIND_STATUS,
    decode_control,
    encode_control,
)


class EngineTimeoutError(Otf2dError, TimeoutError):
    """The engine did not answer in time (down, unreachable, or busy)."""


class EngineRequestError(Otf2dError, RuntimeError):
    """The engine answered a request with ``ok = false``; ``reason`` is its ``error``."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"engine refused {kind!r}: {reason}")


class EngineClient:
    """DEALER connected to the engine's ROUTER.

    Parameters
    ----------
    endpoint
        The engine, e.g. ``tcp://127.0.0.1:5555``.
    timeout_s
        How long each request waits for its reply.
    context
        ZeroMQ context (default: the process-wide one).
    curve
        This client's and the engine's certificate files (:mod:`otf2d.core.curve`); ``None``: plain TCP.
        An engine that does not accept the key answers nothing (the request times out).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 5.0,
        context: zmq.Context[Any] | None = None,
        curve: CurveClientFiles | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = float(timeout_s)
        ctx = context if context is not None else zmq.Context.instance()
        self._socket: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout_s * 1000)))
        if curve is not None:
            apply_client(self._socket, curve)
        self._socket.connect(endpoint)

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket."""
        self._socket.close(linger=0)

    def _receive(self, matches: Any, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not self._socket.poll(remaining_ms, zmq.POLLIN):
                raise EngineTimeoutError(
                    f"no answer from the engine at {self.endpoint} to {what} within {self.timeout_s:g} s"
                )
            frames = self._socket.recv_multipart()
            try:
                message = decode_control(frames)
            except DecodeError:
                continue
            if matches(message):
                return message

    def _send(self, frames: list[bytes], what: str) -> None:
        """Send, waiting at most ``timeout_s`` for a connection (a refused CURVE key never gets one)."""
        try:
            self._socket.send_multipart(frames)
        except zmq.Again as exc:
            raise EngineTimeoutError(
                f"could not send {what} to the engine at {self.endpoint} within {self.timeout_s:g} s "
                "(not reachable, or it does not accept this client's key)"
            ) from exc

    def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Send one control request and return the ``result`` of its reply.

        Raises
        ------
        EngineTimeoutError
            No reply within ``timeout_s``.
        EngineRequestError
            The engine answered ``ok = false``.
        """
        request_id = uuid.uuid4().hex
        self._send(encode_control(kind, request_id=request_id, **fields), f"a {kind!r} request")
        reply = self._receive(
            lambda m: m["kind"] == KIND_REPLY and m.get("request_id") == request_id, f"a {kind!r} request"
        )
        if not reply["ok"]:
            raise EngineRequestError(kind, str(reply.get("error", "no reason given")))
        result: dict[str, Any] = reply.get("result", {})
        return result

    def ping(self) -> float:
        """Round-trip time of a ``ping``, seconds."""
        seq = int(uuid.uuid4().int % 1_000_000_000)
        start = time.monotonic()
        self._send(encode_control(KIND_PING, seq=seq, time=time.time()), "a ping")
        self._receive(lambda m: m["kind"] == KIND_PONG and m.get("seq") == seq, "a ping")
        return time.monotonic() - start

    def status(self, session: str | None = None) -> dict[str, Any]:
        """The engine's status (one session, or every session)."""
        return self.request(KIND_STATUS, session=session)

    def snapshot(self, session: str) -> dict[str, Any]:
        """Ask for a snapshot of ``session`` now (written in the background; see ``status``)."""
        return self.request(KIND_SNAPSHOT, session=session)

    def pause(self, session: str | None = None) -> dict[str, Any]:
        """Stop folding particles in (they are still journaled and ACKed)."""
        return self.request(KIND_PAUSE, session=session)

    def resume(self, session: str | None = None) -> dict[str, Any]:
        """Resume folding."""
        return self.request(KIND_RESUME, session=session)

    def start_session(self, session: str, params: dict[str, Any]) -> dict[str, Any]:
        """Create ``session`` with classification ``params`` (or check they match an existing one)."""
        return self.request(KIND_START_SESSION, session=session, params=params)

    def set_class_override(self, session: str, class_number: int, override: str) -> dict[str, Any]:
        """Mark class ``class_number`` (1-based, as numbered in the newest snapshot and gallery)
        ``"good"`` or ``"junk"``, or ``"auto"`` to remove the override; kept across restarts."""
        return self.request(KIND_SET_CLASS_OVERRIDE, session=session, class_number=int(class_number), override=override)

    def close_session(self, session: str) -> dict[str, Any]:
        """Close ``session``: the collection has ended (its files stay; it leaves ``/metrics`` later)."""
        return self.request(KIND_CLOSE_SESSION, session=session)


__all__ = ["EngineClient", "EngineRequestError", "EngineTimeoutError"]
