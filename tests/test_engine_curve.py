"""CurveZMQ on a real engine process (loopback ZeroMQ): only listed client keys get through, a session
belongs to the key that created it, at most ``--max-sessions`` sessions, and an engine refuses to
listen beyond this host without CURVE unless ``--insecure``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
from engine_helpers import ROOT, TEST_PARAMS, batch_frames, engine_process, make_batch
from ports import free_port
from streamer_harness import fast_config, simulate

from otf2d.control.client import EngineClient, EngineRequestError, EngineTimeoutError
from otf2d.control.curve import apply_client, create_keys
from otf2d.core.curve import CurveClientFiles, client_files, is_loopback
from otf2d.core.errors import ConfigError
from otf2d.core.wire import KIND_ACK, KIND_NACK, decode_control, encode_control
from otf2d.streamer.close import CloseRefused, close_session
from otf2d.streamer.daemon import Streamer
from otf2d.streamer.ledger import Ledger

MAX_SESSIONS = 6


@dataclass
class CurveEngine:
    endpoint: str
    keys: Path
    data: Path

    def files(self, name: str) -> CurveClientFiles:
        return CurveClientFiles(self.keys / f"{name}.key_secret", self.keys / "engine.key")

    def client(self, name: str, timeout_s: float = 10.0) -> EngineClient:
        return EngineClient(self.endpoint, timeout_s=timeout_s, context=zmq.Context(), curve=self.files(name))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CurveEngine]:
    root = tmp_path_factory.mktemp("curve")
    keys, clients = root / "keys", root / "clients"
    clients.mkdir()
    for name in ("engine", "alice", "bob", "mallory", "streamer"):
        public, _ = create_keys(keys, name)
        if name in ("alice", "bob", "streamer"):
            (clients / public.name).write_bytes(public.read_bytes())
    port = free_port()
    extra = ("--curve-secret", str(keys / "engine.key_secret"), "--curve-clients", str(clients))
    with engine_process(root / "data", port, *extra, "--max-sessions", str(MAX_SESSIONS)) as proc:
        running = CurveEngine(f"tcp://127.0.0.1:{port}", keys, root / "data")
        with running.client("alice", timeout_s=1.0) as alice:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, "the engine exited"
                try:
                    alice.ping()
                    break
                except EngineTimeoutError:
                    assert time.monotonic() < deadline, "the engine did not answer a listed key"
        yield running
        assert proc.poll() is None, "the engine died during the tests"


def _dealer(engine: CurveEngine, name: str | None) -> zmq.Socket[Any]:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    # A refused handshake leaves the DEALER without a peer, and a send then blocks for ever: give up.
    socket.setsockopt(zmq.SNDTIMEO, 2000)
    if name is not None:
        apply_client(socket, engine.files(name))
    socket.connect(engine.endpoint)
    return socket


def _answer(socket: zmq.Socket[Any], timeout_s: float) -> dict[str, Any] | None:
    if not socket.poll(int(timeout_s * 1000), zmq.POLLIN):
        return None
    return decode_control(socket.recv_multipart())


def _send_batch(socket: zmq.Socket[Any], session: str, msg_id: str, micrograph: int) -> dict[str, Any] | None:
    socket.send_multipart(batch_frames(make_batch(session, micrograph, 3), msg_id), copy=False)
    return _answer(socket, 10.0)


def test_a_listed_key_works(engine: CurveEngine) -> None:
    with engine.client("alice") as alice:
        alice.start_session("alice-grid", TEST_PARAMS)
        status = alice.status("alice-grid")["sessions"]["alice-grid"]
    dealer = _dealer(engine, "alice")
    try:
        answer = _send_batch(dealer, "alice-grid", "alice:1", 1)
    finally:
        dealer.close(0)
    assert answer is not None and answer["kind"] == KIND_ACK and answer["n_accepted"] == 3
    assert status["owner"] == zmq.auth.load_certificate(str(engine.keys / "alice.key"))[0].decode()


@pytest.mark.parametrize("who", ["mallory", None], ids=["unlisted key", "no CURVE"])
def test_an_unlisted_client_gets_nothing_through(engine: CurveEngine, who: str | None) -> None:
    dealer = _dealer(engine, who)
    try:
        try:
            dealer.send_multipart(encode_control("ping", seq=1))
            dealer.send_multipart(encode_control("start_session", request_id="r", session="forged", params={}))
            dealer.send_multipart(encode_control("pause", request_id="p"))
            dealer.send_multipart(batch_frames(make_batch("forged", 1, 3), "forged:1"), copy=False)
        except zmq.Again:
            pass  # the handshake was refused before everything was queued: nothing can be sent
        assert _answer(dealer, 2.0) is None
    finally:
        dealer.close(0)
    if who is not None:
        with engine.client(who, timeout_s=1.0) as mallory, pytest.raises(EngineTimeoutError):
            mallory.status()
    with engine.client("alice") as alice:
        status = alice.status()
    assert "forged" not in status["sessions"]
    assert not any(s["paused"] for s in status["sessions"].values())


def test_a_session_belongs_to_the_key_that_created_it(engine: CurveEngine) -> None:
    with engine.client("alice") as alice, engine.client("bob") as bob:
        alice.start_session("owned", TEST_PARAMS)
        for attempt in (
            lambda: bob.pause("owned"),
            lambda: bob.resume("owned"),
            lambda: bob.snapshot("owned"),
            lambda: bob.start_session("owned", {**TEST_PARAMS, "n_classes": 3}),
            lambda: bob.set_class_override("owned", 1, "junk"),
            lambda: bob.close_session("owned"),
        ):
            with pytest.raises(EngineRequestError, match="belongs to another client key"):
                attempt()
        assert "owned" in bob.status("owned")["sessions"]  # reading is allowed
        bob.pause()  # every session: only bob's own
        assert alice.status("owned")["sessions"]["owned"]["paused"] is False
        assert alice.pause("owned")["paused"] == ["owned"]
        alice.resume("owned")
    bob_socket = _dealer(engine, "bob")
    try:
        forged = _send_batch(bob_socket, "owned", "bob:1", 2)
    finally:
        bob_socket.close(0)
    assert forged is not None and forged["kind"] == KIND_NACK and "belongs to another client key" in forged["reason"]
    with engine.client("alice") as alice:
        assert alice.status("owned")["sessions"]["owned"]["particles_journaled"] == 0


def test_the_streamer_delivers_with_its_key(engine: CurveEngine, tmp_path: Path) -> None:
    project, ledger_path = tmp_path / "project", tmp_path / "ledger.sqlite"
    simulate(project, n_particles=20, n_micrographs=2)
    config = fast_config(
        project,
        ledger_path,
        engine.endpoint,
        once=True,
        session="streamed",
        curve_secret=engine.keys / "streamer.key_secret",
        curve_server=engine.keys / "engine.key",
    )
    thread = threading.Thread(target=Streamer(config).run, daemon=True)
    thread.start()
    thread.join(30.0)
    assert not thread.is_alive(), "--once did not finish"
    ledger = Ledger(ledger_path, session="streamed")
    try:
        assert ledger.counts()["particles"]["acked"] == 20
    finally:
        ledger.close()
    # --close-session closes with the streamer's key (the owner); another key is refused, not ignored
    with pytest.raises(CloseRefused, match="belongs to another client key"):
        close_session(engine.endpoint, "streamed", timeout_s=10.0, curve=engine.files("bob"))
    closed = close_session(engine.endpoint, "streamed", timeout_s=10.0, curve=config.curve_files)
    assert closed["session"] == "streamed" and closed["closed_by"] == "user" and closed["received"] == 20


def test_otf2d_close_takes_the_client_key(engine: CurveEngine) -> None:
    with engine.client("alice") as alice:
        alice.start_session("closed-by-cli", TEST_PARAMS)
    command = [sys.executable, "-m", "otf2d.core.cli", "close", "--engine", engine.endpoint]
    command += ["--session", "closed-by-cli"]
    plain = subprocess.run([*command, "--timeout", "2"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert plain.returncode == 2 and ("no answer from the engine" in plain.stderr or "could not send" in plain.stderr)
    keys = ["--curve-secret", str(engine.keys / "alice.key_secret"), "--curve-server", str(engine.keys / "engine.key")]
    keyed = subprocess.run([*command, *keys], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert keyed.returncode == 0, keyed.stderr
    assert "closed-by-cli: closed (by user)" in keyed.stdout


def test_at_most_max_sessions(engine: CurveEngine) -> None:
    with engine.client("alice") as alice:
        for i in range(MAX_SESSIONS + 1):
            held = alice.status()["engine"]["sessions"]
            if held >= MAX_SESSIONS:
                break
            alice.start_session(f"fill-{i}", TEST_PARAMS)
        assert alice.status()["engine"]["sessions"] == MAX_SESSIONS
        with pytest.raises(EngineRequestError, match="max_sessions"):
            alice.start_session("one-too-many", TEST_PARAMS)
    dealer = _dealer(engine, "alice")
    try:
        answer = _send_batch(dealer, "one-more-by-batch", "more:1", 3)
    finally:
        dealer.close(0)
    assert answer is not None and answer["kind"] == KIND_NACK and "max_sessions" in answer["reason"]


def test_a_reachable_address_without_curve_is_refused_unless_insecure(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "otf2d.core.cli", "engine", "--data", str(tmp_path / "d"), "--device", "cpu"]
    refused = subprocess.run(
        [*command, "--listen", f"tcp://0.0.0.0:{free_port()}"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert refused.returncode == 2
    assert "without CurveZMQ" in refused.stderr and "--insecure" in refused.stderr
    assert not (tmp_path / "d").exists()


def test_endpoints_and_client_flags() -> None:
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("tcp://[::1]:5555") and is_loopback("ipc:///tmp/x")
    assert is_loopback("tcp://localhost:5555")
    assert not is_loopback("tcp://*:5555") and not is_loopback("tcp://0.0.0.0:5555")
    assert not is_loopback("tcp://10.0.0.5:5555") and not is_loopback("tcp://eth0:5555")
    import argparse

    with pytest.raises(ConfigError, match="go together"):
        client_files(argparse.Namespace(curve_secret=Path("a"), curve_server=None))
    assert client_files(argparse.Namespace(curve_secret=None, curve_server=None)) is None
