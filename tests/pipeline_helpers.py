"""Helpers of the end-to-end tests: the engine, the streamer and the virtual microscope as real processes.

Every process is started through :func:`started`, a context manager that kills it (and waits for
it) on exit whatever happened, so a failing test leaves no process behind; logs go to files
named after the process, and :func:`describe_failure` puts their ends into assertion messages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine_helpers import ROOT, wait_until
from ports import free_port

from otf2d.control.client import EngineClient, EngineTimeoutError

#: Fast classification of the pipeline tests: 4 classes, initialised from 40 particles, low resolution.
PIPELINE_PARAMS: dict[str, Any] = {
    "n_classes": 4,
    "batch_size_per_class": 10,
    "online_em_iterations": 3,
    "force_max_over_poses": True,
    "max_resolution_angstrom": 20.0,
    "in_plane_step_degrees": 15.0,
    "max_shift_angstrom": 16.0,
    "seed": 1,
}
#: Box and pixel size of the simulated particles (a 256 Å box, as the simulator's default).
SIM_BOX = 32
SIM_PIXEL_SIZE = 8.0


def cli(*args: str) -> list[str]:
    """``python -m otf2d.core.cli ARGS`` (the ``otf2d`` command, run from the repository)."""
    return [sys.executable, "-m", "otf2d.core.cli", *args]


@dataclass
class Started:
    """A running child process and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status (SIGKILL after ``timeout_s``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)


@contextlib.contextmanager
def started(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Iterator[Started]:
    """Start ``argv`` with its output in ``log_dir/<name>.log``; killed on exit if still running."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=environment)
    child = Started(name, proc, log_path)
    try:
        yield child
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)


def describe_failure(*children: Started, lines: int = 25) -> str:
    """The last lines of each child's log, for an assertion message."""
    parts = []
    for child in children:
        try:
            tail = "\n".join(child.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            tail = "(no log)"
        parts.append(f"--- {child.name} (exit {child.process.poll()}) ---\n{tail}")
    return "\n".join(parts)


@dataclass(frozen=True)
class EnginePorts:
    """Where a test engine listens."""

    zmq: int
    http: int

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.zmq}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"


def engine_ports() -> EnginePorts:
    return EnginePorts(free_port(), free_port())


def engine_argv(data: Path, ports: EnginePorts, *extra: str) -> list[str]:
    """``otf2d engine`` on loopback, CPU, status page on ``ports.http``."""
    return cli(
        "-v",
        "engine",
        "--listen",
        ports.endpoint,
        "--data",
        str(data),
        "--device",
        "cpu",
        "--http-port",
        str(ports.http),
        *extra,
    )


def wait_for_engine(endpoint: str, child: Started, timeout_s: float = 60.0) -> None:
    """Ping until the engine answers (raises with its log if it dies or stays silent)."""
    deadline = time.monotonic() + timeout_s
    with EngineClient(endpoint, timeout_s=0.5) as client:
        while time.monotonic() < deadline:
            if not child.alive():
                raise RuntimeError("the engine exited early\n" + describe_failure(child))
            try:
                client.ping()
                return
            except EngineTimeoutError:
                continue
    raise TimeoutError("the engine did not answer pings\n" + describe_failure(child))


def http_text(url: str, timeout_s: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return str(response.read().decode("utf-8"))


def samples(exposition: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of a Prometheus text exposition."""
    out = {}
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def simulate_argv(out: Path, particles: int, micrographs: int, *extra: str) -> list[str]:
    """``otf2d simulate`` of the small pipeline particles."""
    return cli(
        "simulate",
        "--out",
        str(out),
        "--particles",
        str(particles),
        "--micrographs",
        str(micrographs),
        "--box",
        str(SIM_BOX),
        "--pixel-size",
        str(SIM_PIXEL_SIZE),
        "--quiet",
        *extra,
    )


def stream_argv(watch: Path, endpoint: str, session: str, ledger: Path, *extra: str) -> list[str]:
    """``otf2d stream`` of ``watch`` to the engine."""
    return cli(
        "-v",
        "stream",
        "--watch",
        str(watch),
        "--engine",
        endpoint,
        "--session",
        session,
        "--ledger",
        str(ledger),
        *extra,
    )


__all__ = [
    "PIPELINE_PARAMS",
    "EnginePorts",
    "Started",
    "cli",
    "describe_failure",
    "engine_argv",
    "engine_ports",
    "http_text",
    "samples",
    "simulate_argv",
    "started",
    "stream_argv",
    "wait_for_engine",
    "wait_until",
]
