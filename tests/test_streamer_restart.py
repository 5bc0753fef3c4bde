"""`otf2d stream` as a real process: SIGKILL mid-session and restart → no duplicate, no gap; SIGTERM → clean exit."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_engine import FakeEngine
from ports import free_port
from streamer_harness import SESSION, simulate, truth_keys, wait_until

from otf2d.streamer.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]


def start_streamer(project: Path, ledger: Path, engine: str, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-c",
        "import sys; from otf2d.core.cli import main; sys.exit(main(sys.argv[1:]))",
        "stream",
        "--watch",
        str(project),
        "--engine",
        engine,
        "--session",
        SESSION,
        "--ledger",
        str(ledger),
        "--batch-size",
        "12",
        "--window",
        "4",
        "--ack-timeout",
        "1.0",
        "--heartbeat",
        "0.5",
        "--particles-star-interval",
        "0.5",
    ]
    with log.open("ab") as fh:
        return subprocess.Popen(command, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sigkill_and_restart_no_duplicate_no_gap(tmp_path: Path) -> None:
    project, ledger, log = tmp_path / "project", tmp_path / "ledger.sqlite", tmp_path / "streamer.log"
    project.mkdir()
    n_particles = 300
    processes: list[subprocess.Popen[bytes]] = []
    writer = threading.Thread(
        target=simulate, args=(project, n_particles, 10), kwargs={"rate_per_minute": 9000}, daemon=True
    )
    try:
        # a slow engine keeps batches in flight, so the kill lands while some are un-acknowledged
        with FakeEngine(free_port(), ack_delay_s=0.15) as engine:
            processes.append(start_streamer(project, ledger, engine.endpoint, log))
            writer.start()
            wait_until(lambda: engine.n_keys() >= 60, 15.0, "the first particles")
            processes[0].send_signal(signal.SIGKILL)
            processes[0].wait(5.0)
            killed_at = engine.n_keys()
            assert killed_at < n_particles, "the session ended before the kill; nothing was tested"
            time.sleep(0.3)
            processes.append(start_streamer(project, ledger, engine.endpoint, log))
            writer.join(15.0)
            assert engine.wait_for_keys(n_particles, 15.0), f"{engine.n_keys()} of {n_particles}: a gap"

            def drained() -> bool:
                check = Ledger(ledger, session=SESSION)
                try:
                    return check.backlog()[0] == 0
                finally:
                    check.close()

            wait_until(drained, 10.0, "every batch to be acknowledged")
            processes[1].send_signal(signal.SIGTERM)
            assert processes[1].wait(10.0) == 0, log.read_text()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(5.0)
    expected = truth_keys(project)
    assert len(expected) == n_particles
    assert set(engine.keys) == expected, "a particle is missing"
    assert max(engine.keys.values()) == 1, "a particle was sent under two msg_ids"
    # a message sent again after the restart carries exactly the particles it carried before
    contents: dict[str, set[tuple[tuple[str, ...], tuple[int, ...]]]] = {}
    for header in engine.headers:
        contents.setdefault(header["msg_id"], set()).add((tuple(header["stack_paths"]), tuple(header["indices"])))
    assert all(len(v) == 1 for v in contents.values())
    check = Ledger(ledger, session=SESSION)
    counts = check.counts()
    check.close()
    assert counts["particles"]["acked"] == counts["particle_keys"] == n_particles
    assert counts["batches"]["acked"] == len(contents)
    text = log.read_text()
    assert "SIGTERM: stopping" in text
