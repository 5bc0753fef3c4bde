"""Sending batches to the engine: a DEALER socket with a credit window, re-sends and heartbeats.

- ``IDENTITY`` = the session / microscope name; connects to the engine's ROUTER.
- At most ``window`` batches are un-acknowledged at any time (credit-based flow control): the
  backlog stays in the ledger on disk, and a batch's images are read from its stacks only when it
  is (re)sent, then dropped, so memory is bounded by ``window`` batches however far behind the
  engine is.
- A batch not acknowledged within ``ack_timeout_s`` is sent again with the same ``msg_id`` (Lazy
  Pirate, on a DEALER so several requests can be outstanding); the engine deduplicates. A NACK
  re-sends after its ``retry_after_s``; a REJECT makes the batch a dead letter.
- ``IMMEDIATE=1``: nothing is queued in memory while the engine is unreachable (a send would
  block: the batch stays in the ledger, and time blocked is counted as backpressure).
- ZMTP heartbeats (``HEARTBEAT_IVL`` / ``TIMEOUT`` / ``TTL``) drop dead connections; an
  application ``ping`` goes out when the engine has been silent for ``heartbeat_s``; *any*
  incoming frame counts as liveness.
- Small ``LINGER``: on close, unsent frames are dropped (they are in the ledger).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from otf2d.control.curve import apply_client
from otf2d.core.curve import CurveClientFiles
from otf2d.core.errors import DecodeError, InputError
from otf2d.core.particles import ParticleBatch
from otf2d.core.wire import (
    KIND_ACK,
    KIND_NACK,
    KIND_PING,
    KIND_PONG,
    KIND_REJECT,
    decode_control,
    encode_batch,
    encode_control,
)
from otf2d.streamer.ledger import BatchRecord, BatchState, Ledger, PlannedBatch
from otf2d.streamer.metrics import StreamerMetrics
from otf2d.streamer.reload import load_planned

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SenderConfig:
    """Socket and delivery settings.

    Attributes
    ----------
    engine
        Endpoint of the engine's ROUTER, e.g. ``tcp://gpu-node:5555``.
    identity
        DEALER identity (session / microscope name), 1–255 bytes in UTF-8.
    window
        Most un-acknowledged batches in flight.
    ack_timeout_s
        Re-send a batch not acknowledged after this long.
    heartbeat_s
        Ping the engine after this long without hearing from it; the engine counts as down
        after three times as long.
    nack_retry_s
        Wait before re-sending a NACKed batch when the NACK gives no ``retry_after_s``.
    linger_ms
        Socket ``LINGER``.
    curve
        CurveZMQ certificate files (this streamer's secret, the engine's public key); ``None``: plain TCP.
    """

    engine: str
    identity: str
    window: int = 8
    ack_timeout_s: float = 10.0
    heartbeat_s: float = 2.0
    nack_retry_s: float = 1.0
    linger_ms: int = 200
    curve: CurveClientFiles | None = None

    def __post_init__(self) -> None:
        if self.window < 1:
            raise InputError(None, f"window must be >= 1, got {self.window}")
        if not 1 <= len(self.identity.encode()) <= 255:
            raise InputError(None, f"identity must be 1-255 bytes, got {self.identity!r}")
        if self.ack_timeout_s <= 0 or self.heartbeat_s <= 0:
            raise InputError(None, "ack_timeout_s and heartbeat_s must be > 0")


@dataclass
class _InFlight:
    seq: int
    msg_id: str
    n_particles: int
    sent_at: float
    attempts: int
    resend_at: float


class Sender:
    """Moves batches from the ledger to the engine and records the replies.

    Parameters
    ----------
    config
        Socket settings.
    ledger
        Source of batches and sink of their states.
    session
        Session name of the particle keys.
    metrics
        Where to count; ``None`` for none.
    context
        ZeroMQ context (default: the global instance).
    loader
        Reads a planned batch's images (default :func:`otf2d.streamer.reload.load_planned`).
    """

    def __init__(
        self,
        config: SenderConfig,
        ledger: Ledger,
        session: str,
        *,
        metrics: StreamerMetrics | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        loader: Callable[[PlannedBatch, str], ParticleBatch] = load_planned,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.session = session
        self.metrics = metrics
        self.loader = loader
        ctx = context if context is not None else zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, config.identity.encode())
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.LINGER, config.linger_ms)
        sock.setsockopt(zmq.SNDHWM, max(16, 2 * config.window))
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        sock.setsockopt(zmq.HEARTBEAT_TTL, 10000)
        if config.curve is not None:
            apply_client(sock, config.curve)
        sock.connect(config.engine)
        self.socket = sock
        self._in_flight: dict[str, _InFlight] = {}
        self._last_rx = 0.0
        self._last_ping = 0.0
        self._ping_seq = 0
        self._last_pump = time.monotonic()
        self.max_in_flight_seen = 0

    # ----------------------------------------------------------------- state

    @property
    def in_flight(self) -> int:
        """Batches sent and not yet acknowledged / rejected."""
        return len(self._in_flight)

    @property
    def engine_alive(self) -> bool:
        """Whether the engine sent anything within three heartbeat intervals."""
        return time.monotonic() - self._last_rx < 3 * self.config.heartbeat_s if self._last_rx else False

    def close(self) -> None:
        """Close the socket (un-acknowledged batches stay in the ledger for the next run)."""
        self.socket.close(linger=self.config.linger_ms)

    # ------------------------------------------------------------------ loop

    def pump(self, timeout_s: float) -> int:
        """Handle replies (waiting up to ``timeout_s`` for one), re-send, fill the window, ping.

        Returns
        -------
        int
            Number of messages received.
        """
        received = 0
        if self.socket.poll(int(max(0.0, timeout_s) * 1000), zmq.POLLIN):
            received = self._receive()
        now = time.monotonic()
        blocked = self._resend_due(now) | self._fill_window(now)
        self._heartbeat(now)
        if self.metrics is not None:
            if blocked:
                self.metrics.backpressure_seconds.inc(max(0.0, now - self._last_pump))
            self.metrics.in_flight.set(len(self._in_flight))
            self.metrics.engine_up.set(1 if self.engine_alive else 0)
        self._last_pump = now
        return received

    def next_wakeup(self) -> float:
        """Seconds until the earliest re-send or ping is due (for the caller's poll timeout)."""
        now = time.monotonic()
        due = [f.resend_at for f in self._in_flight.values()]
        due.append(max(self._last_rx, self._last_ping) + self.config.heartbeat_s)
        return max(0.0, min(due) - now)

    def _writable(self) -> bool:
        return bool(int(self.socket.getsockopt(zmq.EVENTS)) & zmq.POLLOUT)

    def _send(self, record: BatchRecord, attempt: int) -> str:
        """Read and send one batch: ``sent``, ``blocked`` (engine unreachable) or ``failed``."""
        if not self._writable():
            return "blocked"
        try:
            batch = self.loader(record.batch, self.session)
        except InputError as exc:
            reason = f"cannot read the batch back from disk: {exc}"
            log.error("%s (%s): %s", record.msg_id, record.batch.source, reason)
            self.ledger.mark_rejected(record.seq, reason, now=time.time(), state=BatchState.FAILED)
            if self.metrics is not None:
                self.metrics.batches_dead.inc()
            return "failed"
        frames = encode_batch(
            batch,
            msg_id=record.msg_id,
            source=record.batch.source,
            file_ready_time=record.batch.file_ready_time,
            sent_time=time.time(),
            attempt=attempt,
        )
        try:
            self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return "blocked"
        self.ledger.mark_sent(record.seq, now=time.time())
        if self.metrics is not None:
            (self.metrics.batches_sent if attempt == 1 else self.metrics.batches_resent).inc()
            self.metrics.bytes_sent.inc(sum(memoryview(f).nbytes for f in frames))
        return "sent"

    def _fill_window(self, now: float) -> bool:
        """Send new batches while credit remains; ``True`` if work waits on the window or the engine."""
        free = self.config.window - len(self._in_flight)
        if free <= 0:
            return bool(self.ledger.to_send({f.seq for f in self._in_flight.values()}, 1))
        exclude = {f.seq for f in self._in_flight.values()}
        for record in self.ledger.to_send(exclude, free):
            attempt = record.attempts + 1
            outcome = self._send(record, attempt)
            if outcome == "blocked":
                return True
            if outcome == "sent":
                self._in_flight[record.msg_id] = _InFlight(
                    record.seq, record.msg_id, len(record.batch), now, attempt, now + self.config.ack_timeout_s
                )
                self.max_in_flight_seen = max(self.max_in_flight_seen, len(self._in_flight))
        return False

    def _resend_due(self, now: float) -> bool:
        blocked = False
        for flight in sorted(self._in_flight.values(), key=lambda f: f.seq):
            if flight.resend_at > now:
                continue
            record = self.ledger.batch(flight.seq)
            if record is None or record.state not in (BatchState.PENDING, BatchState.SENT):
                self._in_flight.pop(flight.msg_id, None)
                continue
            outcome = self._send(record, record.attempts + 1)
            if outcome == "sent":
                log.info("%s not acknowledged after %.1f s: sent again", flight.msg_id, now - flight.sent_at)
                flight.attempts = record.attempts + 1
                flight.sent_at = now
                flight.resend_at = now + self.config.ack_timeout_s
            elif outcome == "blocked":
                flight.resend_at = now + min(1.0, self.config.ack_timeout_s)
                blocked = True
            else:
                self._in_flight.pop(flight.msg_id, None)
        return blocked

    def _heartbeat(self, now: float) -> None:
        if now - max(self._last_rx, self._last_ping) < self.config.heartbeat_s:
            return
        self._last_ping = now
        self._ping_seq += 1
        with contextlib.suppress(zmq.Again):
            self.socket.send_multipart(encode_control(KIND_PING, seq=self._ping_seq, time=time.time()), zmq.NOBLOCK)

    def _receive(self) -> int:
        n = 0
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return n
            n += 1
            self._last_rx = time.monotonic()
            try:
                message = decode_control(frames)
            except DecodeError as exc:
                log.warning("ignoring a malformed message from the engine: %s", exc)
                continue
            self._handle(message)

    def _handle(self, message: dict[str, object]) -> None:
        kind = message["kind"]
        if kind == KIND_PING:
            reply = {k: message[k] for k in ("seq", "time") if k in message}
            with contextlib.suppress(zmq.Again):
                self.socket.send_multipart(encode_control(KIND_PONG, **reply), zmq.NOBLOCK)
            return
        if kind not in (KIND_ACK, KIND_NACK, KIND_REJECT):
            if kind != KIND_PONG:
                log.debug("ignoring %s message from the engine", kind)
            return
        msg_id = str(message["msg_id"])
        seq = self.ledger.seq_of(msg_id)
        if seq is None:
            log.warning("engine sent %s for a message that is not ours: %r (%s)", kind, msg_id, message.get("reason"))
            return
        now = time.time()
        flight = self._in_flight.get(msg_id)
        if kind == KIND_ACK:
            self._in_flight.pop(msg_id, None)
            if self.ledger.mark_acked(seq, now=now) and self.metrics is not None:
                record = self.ledger.batch(seq)
                self.metrics.batches_acked.inc()
                self.metrics.particles_acked.inc(len(record.batch) if record is not None else 0)
                self.metrics.last_ack.set(now)
        elif kind == KIND_NACK:
            if self.metrics is not None:
                self.metrics.batches_nacked.inc()
            retry = message.get("retry_after_s")
            delay = float(retry) if isinstance(retry, int | float) else self.config.nack_retry_s
            if flight is not None:
                flight.resend_at = time.monotonic() + delay
            log.info("engine NACKed %s (%s): retry in %.1f s", msg_id, message.get("reason", "no reason"), delay)
        else:
            self._in_flight.pop(msg_id, None)
            reason = str(message.get("reason", ""))
            if self.ledger.mark_rejected(seq, f"rejected by the engine: {reason}", now=now):
                log.error("engine rejected %s: %s (dead letter)", msg_id, reason)
                if self.metrics is not None:
                    self.metrics.batches_dead.inc()


__all__ = ["Sender", "SenderConfig"]
