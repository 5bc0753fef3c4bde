"""Shared helpers of the engine tests: simulated batches, encoded messages, a DEALER test client,
and an engine run as a real child process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from otf2d.core.particles import ParticleBatch
from otf2d.core.wire import KIND_PING, KIND_PONG, decode_control, encode_batch, encode_control
from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.particles import SimulationSetup, prepare_simulation, simulate_particles

ROOT = Path(__file__).resolve().parents[1]
BOX = 32


@lru_cache(maxsize=4)
def simulation_setup(box: int = BOX, seed: int = 0) -> SimulationSetup:
    """A prepared virtual microscope (cached: preparing it costs ~0.1 s)."""
    return prepare_simulation(SimulationConfig(box=box, pixel_size_angstrom=256.0 / box, junk_fraction=0.1, seed=seed))


def make_batch(
    session: str,
    micrograph: int,
    n: int,
    *,
    seed: int = 0,
    box: int = BOX,
    first_index: int = 1,
    stack: str | None = None,
) -> ParticleBatch:
    """``n`` simulated particles of one micrograph's stack (deterministic in ``seed`` and ``micrograph``)."""
    setup = simulation_setup(box)
    rng = np.random.default_rng([seed, micrograph, first_index])
    sim = simulate_particles(setup, n, rng)
    path = stack if stack is not None else f"Extract/job007/Movies/mic_{micrograph:05d}.mrcs"
    return ParticleBatch(
        images=sim.images,
        pixel_size_angstrom=setup.pixel_size_angstrom,
        ctf=sim.ctf,
        session=session,
        stack_paths=np.array([path] * n),
        indices=np.arange(first_index, first_index + n, dtype=np.int64),
        optics_groups=np.ones(n, dtype=np.int64),
    )


def batch_frames(batch: ParticleBatch, msg_id: str, *, ready: float | None = None) -> list[Any]:
    """The wire frames of ``batch``."""
    return encode_batch(
        batch,
        msg_id=msg_id,
        source=f"Extract/job007/Movies/{batch.stack_paths[0]}.star",
        file_ready_time=time.time() if ready is None else ready,
    )


class TestClient:
    """A DEALER like the streamer's: sends batches, collects the engine's answers by ``msg_id``."""

    __test__ = False

    def __init__(self, endpoint: str, identity: str = "test-scope") -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, identity.encode())
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.answers: dict[str, list[dict[str, Any]]] = {}

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()

    def send(self, frames: list[Any]) -> None:
        self.socket.send_multipart(frames, copy=False)

    def receive(self, timeout_s: float) -> dict[str, Any] | None:
        if not self.socket.poll(int(timeout_s * 1000), zmq.POLLIN):
            return None
        message = decode_control(self.socket.recv_multipart())
        if "msg_id" in message:
            self.answers.setdefault(message["msg_id"], []).append(message)
        return message

    def wait_answers(self, msg_ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
        """The latest answer to each of ``msg_ids`` (raises if one does not come in time)."""
        deadline = time.monotonic() + timeout_s
        while any(m not in self.answers for m in msg_ids):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [m for m in msg_ids if m not in self.answers]
                raise TimeoutError(f"no answer to {missing[:5]} ({len(missing)} missing)")
            self.receive(remaining)
        return {m: self.answers[m][-1] for m in msg_ids}

    def send_and_wait(self, frames: list[Any], msg_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
        self.answers.pop(msg_id, None)
        self.send(frames)
        return self.wait_answers([msg_id], timeout_s)[msg_id]

    def ping(self, timeout_s: float) -> bool:
        self.socket.send_multipart(encode_control(KIND_PING, seq=7))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = self.receive(max(0.0, deadline - time.monotonic()))
            if message is not None and message["kind"] == KIND_PONG:
                return True
        return False


def engine_command(data: Path, port: int, *extra: str) -> list[str]:
    """``python -m otf2d.core.cli engine ...`` for a child process."""
    return [
        sys.executable,
        "-m",
        "otf2d.core.cli",
        "-v",
        "engine",
        "--listen",
        f"tcp://127.0.0.1:{port}",
        "--data",
        str(data),
        "--device",
        "cpu",
        *extra,
    ]


@contextlib.contextmanager
def engine_process(
    data: Path, port: int, *extra: str, log_name: str = "engine.log"
) -> Iterator[subprocess.Popen[bytes]]:
    """An engine child process; killed (SIGKILL) on exit if still running. Its log goes to ``data/../log_name``."""
    log_path = data.parent / log_name
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            engine_command(data, port, *extra), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)


def wait_ready(client: TestClient, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Ping until the engine answers (raises if it dies or stays silent)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"engine exited early with {proc.returncode}")
        if client.ping(0.5):
            return
    raise TimeoutError("engine did not answer pings")


#: Small, fast classification parameters for the tests: initialised after 40 particles.
TEST_PARAMS: dict[str, Any] = {
    "n_classes": 4,
    "batch_size_per_class": 10,
    "online_em_iterations": 5,
    "force_max_over_poses": True,
    "seed": 1,
}


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Poll ``predicate()`` until it returns something truthy; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval_s)


def send_batches(
    client: TestClient, batches: list[tuple[str, ParticleBatch]], timeout_s: float = 20.0
) -> dict[str, dict[str, Any]]:
    """Send ``(msg_id, batch)`` pairs and wait for every answer."""
    for msg_id, batch in batches:
        client.answers.pop(msg_id, None)
        client.send(batch_frames(batch, msg_id))
    return client.wait_answers([m for m, _ in batches], timeout_s)
