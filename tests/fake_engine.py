"""A minimal engine for the streamer tests: a real ZeroMQ ROUTER that decodes with otf2d.core.wire.

It records every message, deduplicates by ``msg_id`` (as the real engine must), counts particle
keys, and ACKs — optionally late, never, or with a REJECT — so the tests can check delivery
without the real engine.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq

from otf2d.core.errors import DecodeError
from otf2d.core.particles import ParticleKey
from otf2d.core.wire import (
    KIND_ACK,
    KIND_BATCH,
    KIND_PING,
    KIND_PONG,
    KIND_REJECT,
    decode_batch,
    encode_control,
    message_kind,
)


class FakeEngine:
    """ROUTER on ``tcp://127.0.0.1:port`` in a background thread.

    Parameters
    ----------
    port
        Port to bind.
    ack_delay_s
        Hold each ACK this long (simulates a slow engine: the streamer's window fills).
    drop_acks
        Never ACK the first ``drop_acks`` messages (the streamer must re-send them).
    reject
        ``reject(header) -> reason or None``: REJECT instead of ACK when it returns a reason.
    """

    def __init__(
        self,
        port: int,
        *,
        ack_delay_s: float = 0.0,
        drop_acks: int = 0,
        reject: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        self.port = port
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.ack_delay_s = ack_delay_s
        self.drop_acks = drop_acks
        self.reject = reject
        self.lock = threading.Lock()
        self.headers: list[dict[str, Any]] = []  # every batch message, re-sends included
        self.msg_ids: set[str] = set()
        self.keys: Counter[ParticleKey] = Counter()  # after msg_id dedup
        self.identities: set[bytes] = set()
        self.decode_errors: list[str] = []
        self.pings = 0
        self.max_unacked = 0
        self._unacked: dict[str, int] = {}
        self._pending: list[tuple[float, bytes, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def __enter__(self) -> FakeEngine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(5.0):
            raise RuntimeError("fake engine did not start")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    @property
    def n_messages(self) -> int:
        with self.lock:
            return len(self.headers)

    def n_keys(self) -> int:
        with self.lock:
            return len(self.keys)

    def wait_for_keys(self, n: int, timeout_s: float) -> bool:
        """Wait until ``n`` distinct particle keys arrived."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.n_keys() >= n:
                return True
            time.sleep(0.05)
        return self.n_keys() >= n

    def _run(self) -> None:
        ctx = zmq.Context.instance()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(self.endpoint)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if router.poll(20, zmq.POLLIN):
                    identity, *frames = router.recv_multipart(copy=False)
                    self._handle(router, identity.bytes, frames)
                self._flush(router)
        finally:
            router.close(linger=0)

    def _handle(self, router: zmq.Socket[Any], identity: bytes, frames: list[Any]) -> None:
        try:
            kind = message_kind(frames)
        except DecodeError as exc:
            self.decode_errors.append(str(exc))
            return
        if kind == KIND_PING:
            self.pings += 1
            self._send(router, identity, encode_control(KIND_PONG))
            return
        if kind != KIND_BATCH:
            return
        try:
            header, batch = decode_batch(frames)
        except DecodeError as exc:
            self.decode_errors.append(str(exc))
            return
        msg_id = header["msg_id"]
        reason = self.reject(header) if self.reject is not None else None
        with self.lock:
            self.identities.add(identity)
            self.headers.append(header)
            new = msg_id not in self.msg_ids
            if reason is None and new:
                self.msg_ids.add(msg_id)
                self.keys.update(batch.keys())
            self._unacked[msg_id] = self._unacked.get(msg_id, 0) + 1
            self.max_unacked = max(self.max_unacked, len(self._unacked))
            drop = self.drop_acks > 0
            if drop:
                self.drop_acks -= 1
                self._unacked.pop(msg_id, None)
        if drop:
            return
        if reason is not None:
            self._unacked.pop(msg_id, None)
            self._send(router, identity, encode_control(KIND_REJECT, msg_id=msg_id, reason=reason))
            return
        self._pending.append((time.monotonic() + self.ack_delay_s, identity, msg_id))

    def _flush(self, router: zmq.Socket[Any]) -> None:
        now = time.monotonic()
        due = [p for p in self._pending if p[0] <= now]
        self._pending = [p for p in self._pending if p[0] > now]
        for _, identity, msg_id in due:
            with self.lock:
                self._unacked.pop(msg_id, None)
            self._send(router, identity, encode_control(KIND_ACK, msg_id=msg_id))

    @staticmethod
    def _send(router: zmq.Socket[Any], identity: bytes, frames: list[bytes]) -> None:
        with contextlib.suppress(zmq.ZMQError):  # EHOSTUNREACH: the streamer went away; it will re-send
            router.send_multipart([identity, *frames])
