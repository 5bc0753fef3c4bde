"""File descriptors an engine process holds per session: N one-particle batches to N new sessions.

Starts ``otf2d engine`` (CPU, loopback, ``--max-sessions`` above N) on a fresh data folder, sends
one batch of one 32-px particle to each of ``--sessions`` new session names, waits for every ACK,
then counts ``/proc/<pid>/fd`` (and again after a ``status`` of every session). Prints one line::

    sessions 600: 2431 fds after ingest (4.0 per session), 2433 after status; idle engine 31

Usage::

    .venv/bin/python benchmarks/session_fds.py --sessions 600
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otf2d.core.particles import CtfParams, ParticleBatch  # noqa: E402
from otf2d.core.wire import decode_control, encode_batch, encode_control  # noqa: E402
from otf2d.demo.demo_run import free_port  # noqa: E402


def one_particle(session: str) -> ParticleBatch:
    ctf = CtfParams(
        defocus_u_angstrom=np.array([15000.0]),
        defocus_v_angstrom=np.array([14000.0]),
        defocus_angle_degrees=np.zeros(1),
        voltage_kv=np.array([300.0]),
        spherical_aberration_mm=np.array([2.7]),
        amplitude_contrast=np.array([0.1]),
        phase_shift_degrees=np.zeros(1),
        bfactor_angstrom2=np.zeros(1),
        scale=np.ones(1),
    )
    return ParticleBatch(
        images=np.random.default_rng(0).standard_normal((1, 32, 32)).astype(np.float32),
        pixel_size_angstrom=2.0,
        ctf=ctf,
        session=session,
        stack_paths=np.array(["Extract/a.mrcs"]),
        indices=np.array([1]),
        optics_groups=np.array([1]),
    )


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def answer(socket: zmq.Socket[bytes], timeout_s: float) -> dict[str, object]:
    while True:
        if not socket.poll(int(timeout_s * 1000)):
            raise TimeoutError("the engine did not answer")
        message = decode_control(socket.recv_multipart())
        if message["kind"] != "pong":  # pongs of the start-up pings
            return message


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=600)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "otf2d.core.cli", "engine", "--listen", f"tcp://127.0.0.1:{port}"]
        argv += ["--data", f"{tmp}/data", "--device", "cpu", "--threads", "1", "--http-port", "0"]
        argv += ["--max-sessions", str(args.sessions + 10)]
        log = open(f"{tmp}/engine.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(f"tcp://127.0.0.1:{port}")
        try:
            deadline = time.monotonic() + 60
            while True:
                socket.send_multipart(encode_control("ping", seq=1))
                if socket.poll(500):
                    socket.recv_multipart()
                    break
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the engine did not start")
            idle = fds(proc.pid)
            for i in range(args.sessions):
                socket.send_multipart(
                    encode_batch(one_particle(f"s{i:05d}"), msg_id=f"m:{i}", source="a.star", file_ready_time=1.0)
                )
                reply = answer(socket, 30.0)
                if reply["kind"] != "ack":
                    raise RuntimeError(f"session {i}: {reply}")
            after_ingest = fds(proc.pid)
            socket.send_multipart(encode_control("status", request_id="s"))
            answer(socket, 120.0)
            after_status = fds(proc.pid)
        finally:
            socket.close(0)
            proc.terminate()
            proc.wait(60)
            log.close()
    per = (after_ingest - idle) / max(1, args.sessions)
    print(
        f"sessions {args.sessions}: {after_ingest} fds after ingest ({per:.1f} per session), "
        f"{after_status} after status; idle engine {idle}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
