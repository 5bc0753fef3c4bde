"""Durability against damaged files: a checkpoint that cannot be read falls back to the previous one,
and with none usable the session replays its journal from the start; the engine never stops.

Real files: an in-process engine service (real journal, SQLite, checkpoints) in a temporary folder,
closed and reopened around the damage, as a restart would.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import TEST_PARAMS, make_batch

from otf2d.engine.serving.service import EngineConfig, EngineService
from otf2d.engine.serving.worker import WorkerConfig
from otf2d.engine.storage.checkpoint import previous_path

SESSION = "durable"


def _service(data: Path) -> EngineService:
    from otf2d.engine.serving.em_adapter import em_classifier_factory
    from otf2d.monitoring.snapshots import write_snapshot

    worker = WorkerConfig(checkpoint_every=0, checkpoint_seconds=3600, snapshot_every=0, snapshot_seconds=3600)
    service = EngineService(
        EngineConfig(data_dir=data, worker=worker), em_classifier_factory, torch.device("cpu"), write_snapshot
    )
    service.open()
    return service


def _status(service: EngineService) -> dict[str, object]:
    return service.status(SESSION)["sessions"][SESSION]


def _wait(predicate: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _checkpoint(service: EngineService, n_before: int) -> None:
    folder = service.worker.folder(SESSION)
    assert folder is not None
    service.worker.request(SESSION, "checkpoint")
    service.worker.notify()
    _wait(lambda: folder.checkpoint_consumed > n_before, "a checkpoint")


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session folded in two steps with a checkpoint after each (``checkpoint.npz`` + ``.prev.npz``)."""
    data = tmp_path_factory.mktemp("durable") / "data"
    service = _service(data)
    try:
        service.start_session(SESSION, TEST_PARAMS)
        for step, first in ((0, 1), (1, 61)):
            batch = make_batch(SESSION, step, 60, first_index=first)
            header = {"msg_id": f"d:{step}", "session": SESSION, "file_ready_time": 1.0, "source": "x"}
            assert service.ingest([(header, batch)])[0].kind == "ack"
            _wait(lambda n=60 * (step + 1): _status(service)["particles_classified"] == n, "folding")
            _checkpoint(service, 60 * step)
    finally:
        service.close(drain_timeout_s=5)
    root = data / "sessions" / SESSION
    assert (root / "checkpoint.npz").is_file() and previous_path(root / "checkpoint.npz").is_file()
    return data


def _copy(data: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "data"
    shutil.copytree(data, target)
    (target / "engine.lock").unlink(missing_ok=True)
    return target


def _reopened(data: Path) -> tuple[dict[str, object], dict[str, str]]:
    service = _service(data)
    try:
        _wait(lambda: _status(service)["particles_classified"] == 120, "the replay", 120.0)
        return _status(service), service.status()["engine"]["broken_sessions"]
    finally:
        service.close(drain_timeout_s=5)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:200] + bytes(x ^ 0x5A for x in b[200:400]) + b[400:], id="corrupt"),
    ],
)
def test_an_unreadable_checkpoint_falls_back_to_the_previous_one(
    two_checkpoints: Path, tmp_path: Path, damage: Callable[[bytes], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="otf2d.engine")
    data = _copy(two_checkpoints, tmp_path)
    path = data / "sessions" / SESSION / "checkpoint.npz"
    path.write_bytes(damage(path.read_bytes()))
    status, broken = _reopened(data)
    assert broken == {}
    assert status["phase"] == "streaming"
    assert "restored the previous checkpoint" in caplog.text
    assert "restored checkpoint (streaming," in caplog.text
    assert status["particles_classified"] == 120


def test_with_no_usable_checkpoint_the_session_replays_its_journal(
    two_checkpoints: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _copy(two_checkpoints, tmp_path)
    root = data / "sessions" / SESSION
    (root / "checkpoint.npz").write_bytes(b"")
    previous_path(root / "checkpoint.npz").write_bytes(b"PK\x03\x04 not really a zip")
    status, broken = _reopened(data)
    assert broken == {}
    assert status["phase"] == "streaming" and status["particles_classified"] == 120
    assert "replaying the journal from the start" in caplog.text
    assert len(list(root.glob("checkpoint*.unusable-*.npz"))) == 2  # set aside, kept


def _journal_with_three_batches(directory: Path) -> list[int]:
    """A journal of three 10-particle batches; returns each chunk's end offset in segment 0."""
    from otf2d.engine.storage.journal import Journal

    journal = Journal(directory, "j")
    try:
        for k in range(3):
            batch = make_batch("j", k, 10)
            assert journal.append_many([({"msg_id": f"j:{k}", "file_ready_time": 1.0}, batch)])[0].accepted
        ends = [int(e) for (e,) in journal._conn().execute("SELECT byte_offset FROM chunks ORDER BY first_seq")]
    finally:
        journal.close()
    return [*ends[1:], (directory / "segments" / "000000.seg").stat().st_size]


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_journal_tail_is_cut_never_zero_filled(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    from otf2d.engine.storage.journal import Journal

    directory = tmp_path / "journal"
    ends = _journal_with_three_batches(directory)
    segment = directory / "segments" / "000000.seg"
    data = segment.read_bytes()
    if damage == "truncated":
        segment.write_bytes(data[: ends[2] - 800])  # 800 bytes of the last batch lost
    else:
        middle = (ends[1] + ends[2]) // 2
        segment.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :])
    journal = Journal(directory, "j")
    try:
        assert journal.count == 20  # the damaged third batch is cut from the index
        assert journal.message("j:2") is None and journal.message("j:1") is not None
        images = journal.read(0, 20).batch.images
        assert np.all(np.abs(images).reshape(20, -1).max(axis=1) > 0)  # no blank (zero-filled) image
        assert segment.stat().st_size == ends[1]  # cut back, never extended with zeros
        again = make_batch("j", 2, 10)  # the lost batch can be journaled again
        assert journal.append_many([({"msg_id": "j:2", "file_ready_time": 1.0}, again)])[0].n_accepted == 10
        assert journal.count == 30
    finally:
        journal.close()
    assert "damaged tail" in caplog.text


def test_an_intact_journal_is_not_cut(tmp_path: Path) -> None:
    from otf2d.engine.storage.journal import Journal

    directory = tmp_path / "journal"
    _journal_with_three_batches(directory)
    journal = Journal(directory, "j")
    try:
        assert journal.count == 30
    finally:
        journal.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MB tmpfs (root only; skipped otherwise), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path) -> None:
    """Write ``path`` until the file system is full."""
    with open(path, "wb") as handle:
        block = b"\0" * 65536
        try:
            while True:
                handle.write(block)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    for size in (4096, 512, 1):  # the last crumbs too
        try:
            with open(path, "ab") as handle:
                while True:
                    handle.write(b"\0" * size)
                    handle.flush()
        except OSError:
            pass


def test_a_full_disk_pauses_ingest_and_it_resumes_by_itself(small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="otf2d.engine")
    service = _service(small_disk / "data")
    service.worker.disk.retry_s = 0.3
    try:
        service.start_session(SESSION, TEST_PARAMS)

        def send(k: int) -> object:
            header = {"msg_id": f"full:{k}", "session": SESSION, "file_ready_time": 1.0, "source": "x"}
            return service.ingest([(header, make_batch(SESSION, k, 20))])[0]

        assert send(0).kind == "ack"
        _fill(small_disk / "filler")
        answers = [send(k) for k in range(1, 6)]
        assert all(a.kind == "nack" and "disk full" in a.fields["reason"] for a in answers), answers
        assert caplog.text.count("writes paused") == 1  # logged once, not per batch
        assert _status(service)["phase"] != "failed"
        (small_disk / "filler").unlink()
        time.sleep(0.4)
        assert send(1).kind == "ack"  # the same batch, re-sent: accepted now
        assert "disk space is back" in caplog.text
        assert _status(service)["particles_journaled"] == 40
        _wait(lambda: _status(service)["particles_classified"] == 40, "folding after the disk emptied")
    finally:
        service.close(drain_timeout_s=5)


def test_a_full_disk_while_folding_pauses_it_instead_of_failing_the_session(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="otf2d.engine")
    service = _service(small_disk / "data")
    service.worker.disk.retry_s = 0.3
    try:
        service.start_session(SESSION, TEST_PARAMS)
        service.control({"kind": "pause", "request_id": "p", "session": SESSION})
        header = {"msg_id": "fold:0", "session": SESSION, "file_ready_time": 1.0, "source": "x"}
        assert service.ingest([(header, make_batch(SESSION, 0, 40))])[0].kind == "ack"
        _fill(small_disk / "filler")
        service.control({"kind": "resume", "request_id": "r", "session": SESSION})  # initialisation must store
        _wait(lambda: service.worker.disk.trips > 0, "the disk-full error of the store")
        time.sleep(1.0)  # retried meanwhile: still full
        status = _status(service)
        assert status["phase"] == "streaming" and not status["error"]  # not failed
        assert "writes paused" in caplog.text
        (small_disk / "filler").unlink()
        session = service.session(SESSION)
        assert session is not None
        _wait(lambda: session.journal.n_assigned() == 40, "the judgements stored once space returned")
        assert _status(service)["particles_classified"] == 40  # folded once, not twice
    finally:
        service.close(drain_timeout_s=5)


def test_a_snapshot_that_failed_is_written_again(small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    from otf2d.engine.serving.em_adapter import em_classifier_factory
    from otf2d.monitoring.snapshots import write_snapshot

    caplog.set_level(logging.INFO, logger="otf2d.engine")
    worker = WorkerConfig(
        checkpoint_every=0, checkpoint_seconds=3600, snapshot_every=0, snapshot_seconds=3600, retry_seconds=0.5
    )
    config = EngineConfig(data_dir=small_disk / "data", worker=worker)
    service = EngineService(config, em_classifier_factory, torch.device("cpu"), write_snapshot)
    service.open()
    try:
        service.start_session(SESSION, TEST_PARAMS)
        header = {"msg_id": "snap:0", "session": SESSION, "file_ready_time": 1.0, "source": "x"}
        assert service.ingest([(header, make_batch(SESSION, 0, 40))])[0].kind == "ack"
        _wait(lambda: _status(service)["particles_classified"] == 40, "initialisation")
        _fill(small_disk / "filler")
        service.control({"kind": "snapshot", "request_id": "s", "session": SESSION})
        _wait(lambda: service.snapshots.errors.get(SESSION) is not None, "the snapshot to fail")
        assert _status(service)["last_snapshot"] is None
        (small_disk / "filler").unlink()
        _wait(lambda: _status(service)["last_snapshot"] is not None, "the snapshot written again", 60.0)
        assert service.snapshots.errors.get(SESSION) is None
    finally:
        service.close(drain_timeout_s=5)
