"""The engine's ZeroMQ ROUTER: receives batches and control requests, answers each.

Socket: ``ROUTER_MANDATORY=1`` (an answer to a vanished peer fails loudly instead of vanishing;
it is logged and dropped — the streamer re-sends), ``ROUTER_HANDOVER=1`` (a streamer restarted
with the same identity takes its connection over), ZMTP heartbeats, explicit ``RCVHWM``/``SNDHWM``,
a small ``LINGER`` and a ``MAXMSGSIZE``. Answers are sent with ``NOBLOCK``: a peer that does not
read its answers loses them rather than stalling the engine.

Each turn of the loop takes every message already waiting (up to ``max_group`` messages or
``max_group_bytes``), answers pings and control requests at once, decodes the batches
(:func:`otf2d.core.wire.decode_batch`; a :class:`~otf2d.core.errors.DecodeError` becomes a REJECT with the
reason, never a crash) and hands them to :meth:`EngineService.ingest` together: one durable write
per session for the whole group (group commit), then one ACK per batch.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

import zmq

from otf2d.control.curve import ServerCurve, client_key
from otf2d.core.errors import DecodeError
from otf2d.core.particles import ParticleBatch
from otf2d.core.wire import (
    KIND_ACK,
    KIND_BATCH,
    KIND_PING,
    KIND_PONG,
    KIND_REJECT,
    KIND_REPLY,
    MAX_HEADER_BYTES,
    MAX_ID_CHARS,
    decode_batch,
    decode_control,
    encode_control,
    message_kind,
    parse_json,
)
from otf2d.engine.serving.problem_log import ProblemLog
from otf2d.engine.serving.service import Answer, EngineService

log = logging.getLogger(__name__)

#: Kinds that are answers, never requests: an engine receiving one ignores it.
_IGNORED = frozenset({KIND_ACK, "nack", "reject", KIND_PONG, KIND_REPLY})


@dataclass(frozen=True)
class _Entry:
    """A decoded batch waiting for the group's durable write, with who sent it."""

    identity: bytes
    header: dict[str, Any]
    batch: ParticleBatch
    client: str | None


@dataclass(frozen=True)
class ServerConfig:
    """Socket settings.

    Attributes
    ----------
    listen
        Endpoint to bind, e.g. ``tcp://*:5555``.
    rcvhwm, sndhwm
        High-water marks (messages per peer).
    linger_ms
        ``LINGER`` on close (answers still queued get this long to leave).
    heartbeat_ivl_ms, heartbeat_timeout_ms, heartbeat_ttl_ms
        ZMTP heartbeats.
    max_message_bytes
        ``MAXMSGSIZE``: a peer sending a larger frame is disconnected.
    max_group, max_group_bytes
        Most messages / bytes journaled in one durable write.
    poll_ms
        Longest wait before the loop checks its stop flag.
    """

    listen: str
    rcvhwm: int = 1000
    sndhwm: int = 1000
    linger_ms: int = 200
    heartbeat_ivl_ms: int = 2000
    heartbeat_timeout_ms: int = 10000
    heartbeat_ttl_ms: int = 10000
    max_message_bytes: int = 1 << 30
    max_group: int = 64
    max_group_bytes: int = 256 << 20
    poll_ms: int = 100


_REQUEST_ID = re.compile(rb'"request_id"\s*:\s*"([0-9A-Za-z_.:-]{1,128})"')


def _raw_request_id(frames: list[Any]) -> str | None:
    """A plain ``request_id`` found in a header that is not valid JSON (so that the client gets its reply)."""
    try:
        raw = bytes(frames[0].buffer if hasattr(frames[0], "buffer") else frames[0])[:MAX_HEADER_BYTES]
    except (IndexError, TypeError):
        return None
    match = _REQUEST_ID.search(raw)
    return match.group(1).decode("ascii") if match else None


def _header_fields(frames: list[Any]) -> tuple[str, int, str | None]:
    """Best-effort ``(msg_id, n_particles, request_id)`` of a message that could not be handled."""
    try:
        header = parse_json(frames[0])
    except (DecodeError, IndexError):
        return "", 0, _raw_request_id(frames)
    if not isinstance(header, dict):
        return "", 0, None
    msg_id = header.get("msg_id")
    n = header.get("n_particles")
    request_id = header.get("request_id")
    return (
        msg_id if isinstance(msg_id, str) and len(msg_id) <= MAX_ID_CHARS else "",
        n if type(n) is int and n >= 0 else 0,
        request_id if isinstance(request_id, str) and len(request_id) <= MAX_ID_CHARS else None,
    )


class EngineServer:
    """The ROUTER loop in front of an :class:`EngineService`.

    Parameters
    ----------
    service
        Where batches and requests go.
    config
        Socket settings.
    context
        ZeroMQ context (default: the process-wide one).
    curve
        CurveZMQ settings: only clients with a listed key get through, and each message carries
        its sender's key (the owner of the sessions it creates). ``None``: plain TCP.
    """

    def __init__(
        self,
        service: EngineService,
        config: ServerConfig,
        context: zmq.Context[Any] | None = None,
        curve: ServerCurve | None = None,
    ) -> None:
        self.service = service
        self.config = config
        ctx = context if context is not None else zmq.Context.instance()
        self.socket: zmq.Socket[Any] = ctx.socket(zmq.ROUTER)
        self.curve = curve
        if curve is not None:
            curve.start(ctx)
            curve.apply(self.socket)
        s, c = self.socket, config
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.ROUTER_HANDOVER, 1)
        s.setsockopt(zmq.LINGER, c.linger_ms)
        s.setsockopt(zmq.RCVHWM, c.rcvhwm)
        s.setsockopt(zmq.SNDHWM, c.sndhwm)
        s.setsockopt(zmq.HEARTBEAT_IVL, c.heartbeat_ivl_ms)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, c.heartbeat_timeout_ms)
        s.setsockopt(zmq.HEARTBEAT_TTL, c.heartbeat_ttl_ms)
        s.setsockopt(zmq.MAXMSGSIZE, c.max_message_bytes)
        self.endpoint = ""
        self.messages_received = 0
        self.problems = ProblemLog(log)

    def bind(self) -> str:
        """Bind to ``config.listen``; returns the endpoint actually bound."""
        self.socket.bind(self.config.listen)
        self.endpoint = str(self.socket.getsockopt_string(zmq.LAST_ENDPOINT))
        self.service.endpoint = self.endpoint
        log.info("engine listening on %s", self.endpoint)
        return self.endpoint

    def serve(self, stop: threading.Event) -> None:
        """Answer messages until ``stop`` is set."""
        while not stop.is_set():
            if self.socket.poll(self.config.poll_ms, zmq.POLLIN):
                self.turn()

    def drain(self) -> int:
        """Journal and answer every message already received, without waiting; returns how many."""
        total = 0
        while True:
            n = self.turn()
            total += n
            if n == 0:
                return total

    def close(self) -> None:
        """Close the socket (answers still queued get ``linger_ms`` to leave)."""
        self.socket.close(linger=self.config.linger_ms)
        if self.curve is not None:
            self.curve.stop()

    # ------------------------------------------------------------------ one turn

    def turn(self) -> int:
        """Take every waiting message (up to the group limits) and answer it; returns how many."""
        group: list[_Entry] = []
        group_bytes = 0
        n = 0
        while n < self.config.max_group and group_bytes < self.config.max_group_bytes:
            try:
                message = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            n += 1
            identity, frames = message[0].bytes, message[1:]
            entry = self._handle(identity, frames, client_key(message[-1]))
            if entry is not None:
                group.append(entry)
                group_bytes += sum(len(f) for f in frames)
        self.messages_received += n
        if group:
            for entry, answer in zip(group, self._ingest(group), strict=True):
                self._send(entry.identity, answer)
        return n

    def _ingest(self, group: list[_Entry]) -> list[Answer]:
        """Journal a group; if the group fails unexpectedly, each batch alone (the one at fault is rejected)."""
        try:
            return self.service.ingest([(e.header, e.batch) for e in group], [e.client for e in group])
        except Exception as exc:
            reason = self._engine_error(exc, "batch")
            if len(group) == 1:
                return [self.service.invalid(str(group[0].header["msg_id"]), reason, len(group[0].batch))]
        return [answer for entry in group for answer in self._ingest([entry])]

    def _engine_error(self, exc: Exception, what: str) -> str:
        """Log an unexpected exception (its traceback once per cause); returns the reason to answer."""
        reason = f"the engine could not handle this {what}: {type(exc).__name__}: {exc!s:.300}"
        self.problems.report(logging.ERROR, f"engine error {type(exc).__name__}", reason, traceback=True)
        return reason

    def _handle(self, identity: bytes, frames: list[Any], client: str | None = None) -> _Entry | None:
        """Decode and answer one message: the one boundary where any failure becomes a refusal."""
        try:
            return self._dispatch(identity, frames, client)
        except Exception as exc:
            msg_id, n_particles, request_id = _header_fields(frames)
            reason = self._engine_error(exc, "message")
            if request_id is not None:
                self._send(identity, Answer(KIND_REPLY, {"request_id": request_id, "ok": False, "error": reason}))
            else:
                self._send(identity, self.service.invalid(msg_id, reason, n_particles))
            return None

    def _dispatch(self, identity: bytes, frames: list[Any], client: str | None) -> _Entry | None:
        try:
            kind = message_kind(frames)
        except DecodeError as exc:
            self.problems.report(logging.WARNING, "unreadable", f"unreadable message from {identity!r:.80}: {exc}")
            self._send(identity, self.service.invalid("", exc.what))
            return None
        if kind == KIND_BATCH:
            try:
                header, batch = decode_batch(frames)
            except DecodeError as exc:
                msg_id, n_particles, _ = _header_fields(frames)
                self.problems.report(
                    logging.WARNING, "invalid batch", f"rejected batch {msg_id!r} from {identity!r:.80}: {exc.what}"
                )
                self._send(identity, self.service.invalid(msg_id, exc.what, n_particles))
                return None
            return _Entry(identity, header, batch, client)
        try:
            request = decode_control(frames)
        except DecodeError as exc:
            msg_id, _, request_id = _header_fields(frames)
            self.problems.report(
                logging.WARNING, "invalid control", f"invalid {kind!r:.40} message from {identity!r:.80}: {exc.what}"
            )
            if request_id is not None:
                self._send(identity, Answer(KIND_REPLY, {"request_id": request_id, "ok": False, "error": exc.what}))
            else:
                self._send(identity, self.service.invalid(msg_id, exc.what))
            return None
        if kind == KIND_PING:
            self._send(identity, Answer(KIND_PONG, {"seq": request.get("seq"), "time": request.get("time")}))
        elif kind in _IGNORED:
            log.debug("ignored a %r from %r", kind, identity)
        else:
            try:
                reply = self.service.control(request, client)
            except Exception as exc:
                reply = {"ok": False, "error": self._engine_error(exc, f"{kind!r} request")}
            self._send(identity, Answer(KIND_REPLY, {"request_id": request["request_id"], **reply}))
        return None

    def _send(self, identity: bytes, answer: Answer) -> None:
        try:
            frames = encode_control(answer.kind, **answer.fields)
        except Exception as exc:  # a reply the wire cannot carry: say so instead
            self.problems.report(
                logging.ERROR, "unencodable answer", f"could not encode a {answer.kind!r} answer: {exc}"
            )
            request_id, msg_id = answer.fields.get("request_id"), answer.fields.get("msg_id")
            error = f"engine error: the answer could not be encoded ({type(exc).__name__})"
            if isinstance(request_id, str):
                frames = encode_control(KIND_REPLY, request_id=request_id, ok=False, error=error)
            elif isinstance(msg_id, str):
                frames = encode_control(KIND_REJECT, msg_id=msg_id, reason=error)
            else:
                return
        try:
            self.socket.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # EHOSTUNREACH (peer gone) or EAGAIN (peer not reading)
            self.problems.report(
                logging.INFO, "answer dropped", f"answer {answer.kind} to {identity!r:.80} dropped: {exc}"
            )


__all__ = ["EngineServer", "ServerConfig"]
