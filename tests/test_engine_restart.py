"""Engine restarts as real processes: SIGKILL loses no ACKed particle, counts none twice, and the classes continue;
SIGTERM drains, checkpoints and exits 0."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pytest
from engine_helpers import (
    TEST_PARAMS,
    TestClient,
    batch_frames,
    engine_process,
    make_batch,
    send_batches,
    wait_ready,
    wait_until,
)
from ports import free_port

from otf2d.control.client import EngineClient
from otf2d.core.particles import ParticleBatch
from otf2d.core.wire import KIND_ACK
from otf2d.engine.storage.journal import Journal

SESSION = "restart"
PER_BATCH = 20
CADENCE = ("--checkpoint-every", "60", "--checkpoint-seconds", "0", "--snapshot-every", "0", "--snapshot-seconds", "0")


def batches(first: int, last: int) -> list[tuple[str, ParticleBatch]]:
    """Messages ``first .. last - 1``: one micrograph of ``PER_BATCH`` particles each."""
    return [(f"{SESSION}:{m}", make_batch(SESSION, m, PER_BATCH)) for m in range(first, last)]


def status(control: EngineClient) -> dict[str, Any]:
    return control.status(SESSION)["sessions"][SESSION]


def all_classified(control: EngineClient, n: int) -> dict[str, Any] | None:
    s = status(control)
    return s if s["particles_journaled"] == n and s["particles_classified"] == n else None


def snapshot_classes(control: EngineClient) -> tuple[np.ndarray, dict[str, Any]]:
    """Request a snapshot, wait for it, return its averages in engine class order and its parameters."""
    iteration = control.snapshot(SESSION)["iteration"]
    record = wait_until(
        lambda: (s := status(control)["last_snapshot"]) is not None and s["iteration"] >= iteration and s,
        30,
        "the snapshot",
    )
    folder = Path(record["directory"])
    latest = json.loads((folder / "latest.json").read_text())
    with mrcfile.open(folder / latest["files"]["classes_mrcs"], permissive=True) as mrc:
        averages = np.array(mrc.data, dtype=np.float64)
    provenance = json.loads((folder / latest["files"]["provenance_json"]).read_text())
    parameters = provenance["parameters"]
    engine_order = np.empty(len(averages), dtype=np.int64)
    engine_order[np.asarray(parameters["engine_class_of_snapshot_class"])] = np.arange(len(averages))
    return averages[engine_order], parameters


def correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each pair of images ``a[k]``, ``b[k]``."""
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(axis=1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def first_acks(runs: list[dict[str, list[dict[str, Any]]]]) -> dict[str, int]:
    """``n_accepted`` of the first ACK of each msg_id over the runs (re-ACKs must say 0)."""
    accepted: dict[str, int] = {}
    for answers in runs:
        for msg_id, replies in answers.items():
            for reply in replies:
                if reply["kind"] != KIND_ACK:
                    continue
                if msg_id in accepted:
                    assert reply["n_accepted"] == 0, f"{msg_id} accepted twice"
                else:
                    accepted[msg_id] = reply["n_accepted"]
    return accepted


@pytest.mark.slow
def test_sigkill_mid_session_resumes_from_checkpoint_and_journal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    runs: list[dict[str, list[dict[str, Any]]]] = []

    # run 1: classify 200 particles, snapshot, then pause (checkpoint) and journal 100 more unfolded; SIGKILL
    with engine_process(data, port, *CADENCE) as proc:
        client, control = TestClient(endpoint), EngineClient(endpoint, timeout_s=10)
        wait_ready(client, proc)
        control.start_session(SESSION, TEST_PARAMS)
        send_batches(client, batches(0, 10))
        wait_until(lambda: all_classified(control, 200), 60, "200 classified")
        before, params_before = snapshot_classes(control)
        control.pause(SESSION)
        wait_until(lambda: status(control)["last_checkpoint_particles"] == 200, 20, "the pause checkpoint")
        send_batches(client, batches(10, 15))
        assert status(control)["particles_classified"] == 200
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        runs.append(client.answers)
        client.close()
        control.close()

    # run 2: replays the 100 journaled particles; then more batches with a SIGKILL at an arbitrary moment
    with engine_process(data, port, *CADENCE) as proc:
        client, control = TestClient(endpoint), EngineClient(endpoint, timeout_s=10)
        wait_ready(client, proc)
        resumed = wait_until(lambda: all_classified(control, 300), 60, "the journal replayed")
        assert resumed["phase"] == "streaming"
        after, params_after = snapshot_classes(control)
        for m, batch in batches(15, 40):
            client.send(batch_frames(batch, m))
            client.receive(0.02)
        while client.receive(0.05) is not None and len(client.answers) < 12:
            pass
        proc.send_signal(signal.SIGKILL)  # batches in flight, folding and checkpoints under way
        proc.wait(10)
        runs.append(client.answers)
        client.close()
        control.close()

    # run 3: the streamer re-sends everything it has not seen ACKed (here: everything from 10 on)
    with engine_process(data, port, *CADENCE) as proc:
        client, control = TestClient(endpoint), EngineClient(endpoint, timeout_s=10)
        wait_ready(client, proc)
        resent = send_batches(client, batches(10, 40), timeout_s=60)
        assert all(a["kind"] == KIND_ACK for a in resent.values())
        final = wait_until(lambda: all_classified(control, 800), 90, "all 800 classified")
        runs.append(client.answers)
        journal_dir = Path(final["directory"]) / "journal"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        client.close()
        control.close()

    # Each message was journaled once with all its particles; a re-send got n_accepted = 0. (The first
    # ACK seen may be a re-ACK with 0 when the ACK of the durable append died with the engine.)
    accepted = first_acks(runs)
    assert set(accepted) == {f"{SESSION}:{m}" for m in range(40)}
    journal = Journal(journal_dir, SESSION)
    try:
        for msg_id, n in accepted.items():
            record = journal.message(msg_id)
            assert record is not None and record["n_accepted"] == PER_BATCH, msg_id
            assert n in (0, PER_BATCH), msg_id
        part = journal.read(0, journal.count)
        keys = set(zip(part.batch.stack_paths.tolist(), part.batch.indices.tolist(), strict=True))
        assert journal.count == len(keys) == 800
        assert len(journal.assignments()) == 800
    finally:
        journal.close()
    # the classes continued: after replaying 50% more particles each class is still itself, closer to
    # its own past than to any other class (a reset would start from random classes in a random
    # order); an absolute bound on the drift would depend on how the replay was batched
    corr = correlations(before, after)
    assert np.median(corr) > 0.8, corr
    cross = np.corrcoef(before.reshape(len(before), -1), after.reshape(len(after), -1))[: len(before), len(before) :]
    off_diagonal = np.where(np.eye(len(before), dtype=bool), -np.inf, cross)
    assert (np.diag(cross) > off_diagonal.max(axis=1)).all(), cross
    assert params_after["online_updates"] > params_before["online_updates"]
    log = (tmp_path / "engine.log").read_text()
    assert "restored checkpoint (streaming, 200 folded, 300 journaled: 100 to replay)" in log


@pytest.mark.slow
def test_sigterm_drains_checkpoints_and_exits_zero(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    with engine_process(data, port, "--checkpoint-every", "0", "--checkpoint-seconds", "0") as proc:
        client, control = TestClient(endpoint), EngineClient(endpoint, timeout_s=10)
        wait_ready(client, proc)
        control.start_session(SESSION, TEST_PARAMS)
        send_batches(client, batches(0, 10))  # 200 particles ACKed: the engine is folding them now
        for m, batch in batches(10, 20):  # more arrive while the engine stops
            client.send(batch_frames(batch, m))
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = proc.wait(60)
        while client.receive(0.2) is not None:
            pass
        acked = first_acks([client.answers])
        client.close()
        control.close()
    assert code == 0
    assert time.monotonic() - started < 30
    log = (tmp_path / "engine.log").read_text()
    assert "engine stopped cleanly" in log
    assert "checkpoint at" in log  # no periodic checkpoints: this one is the drain's
    n_acked = sum(acked.values())
    assert n_acked >= 200

    with engine_process(data, port) as proc:
        client, control = TestClient(endpoint), EngineClient(endpoint, timeout_s=10)
        wait_ready(client, proc)
        s = status(control)
        # every ACKed particle is there; those folded before the stop are not folded again
        assert s["particles_journaled"] >= n_acked
        restored = (tmp_path / "engine.log").read_text().split("restored checkpoint (streaming, ")[1]
        folded_at_stop = int(restored.split(" folded")[0])
        assert folded_at_stop == s["particles_journaled"]  # drained: nothing left to replay
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        client.close()
        control.close()


def test_sigterm_while_idle_and_before_any_session(tmp_path: Path) -> None:
    port = free_port()
    with engine_process(tmp_path / "data", port) as proc:
        client = TestClient(f"tcp://127.0.0.1:{port}")
        wait_ready(client, proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        client.close()
    assert isinstance(proc, subprocess.Popen)
