"""Small parts of the engine: session folders and parameters, snapshot pruning and coalescing, the client."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import torch
from ports import free_port
from snapshot_factory import make_snapshot

from otf2d.control.client import EngineClient, EngineTimeoutError
from otf2d.core.config import Class2DParams
from otf2d.core.errors import ConfigError
from otf2d.core.snapshot import ClassSnapshot, ParticleAssignments
from otf2d.engine.serving.folding import latest_snapshot_iteration
from otf2d.engine.serving.metrics import EngineMetrics
from otf2d.engine.serving.session import Session, merge_params, params_from_dict, params_to_dict, session_directory_name
from otf2d.engine.serving.snapshot_writer import SnapshotJob, SnapshotWriter, prune_snapshots


def test_session_folder_names_are_safe_and_distinct() -> None:
    assert session_directory_name("grid3_2025-01-01") == "grid3_2025-01-01"
    odd = ["../../etc", ".hidden", "a/b", "a b", "x" * 200, "ünïcode"]
    names = [session_directory_name(n) for n in odd]
    assert len(set(names)) == len(odd)
    for name in names:
        assert "/" not in name and not name.startswith(".") and 0 < len(name) <= 100
    assert session_directory_name("a/b") != session_directory_name("a_b")


def test_parameters_round_trip_through_json_including_nulls() -> None:
    params = Class2DParams(n_classes=7, max_shift_angstrom=12.5)
    assert params_from_dict(params_to_dict(params), "p") == params
    assert merge_params(params, {"batch_size_per_class": 3}, "p").batch_size_per_class == 3
    assert merge_params(params, {"max_shift_angstrom": None}, "p").max_shift_angstrom is None
    with pytest.raises(ConfigError, match="cannot be null"):
        params_from_dict({"n_classes": None}, "p")
    with pytest.raises(ConfigError, match="unknown"):
        merge_params(params, {"n_clases": 3}, "p")
    with pytest.raises(ConfigError):
        merge_params(params, {"n_classes": 0}, "p")


def test_old_snapshots_are_pruned_and_numbering_continues(tmp_path: Path) -> None:
    for it in range(1, 8):
        for suffix in ("_model.star", "_data.star", "_classes.mrcs"):
            (tmp_path / f"run_it{it:03d}{suffix}").write_text("x")
    (tmp_path / "latest.json").write_text("{}")
    assert latest_snapshot_iteration(tmp_path) == 7
    assert prune_snapshots(tmp_path, newest=7, keep=3) == 12
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left[0] == "latest.json" and {n[:9] for n in left[1:]} == {"run_it005", "run_it006", "run_it007"}
    assert latest_snapshot_iteration(tmp_path / "missing") == 0


class _FakeJournal:
    count = 0

    def assignments(self) -> ParticleAssignments:
        return make_snapshot().particles


class _FakeSession:
    def __init__(self, root: Path) -> None:
        self.name = "s"
        self.snapshot_dir = root
        self.project_dir = None
        self.journal = _FakeJournal()


def test_snapshot_jobs_of_a_session_coalesce_behind_a_slow_write(tmp_path: Path) -> None:
    release = threading.Event()
    written: list[int] = []
    heard: list[tuple[str, int]] = []

    def slow_write(snapshot: ClassSnapshot, out_dir: Path, **_: Any) -> None:
        release.wait(10)
        written.append(snapshot.iteration)

    writer = SnapshotWriter(slow_write, EngineMetrics(), keep=0)
    writer.add_listener(lambda name, snapshot: heard.append((name, snapshot.iteration)))
    writer.start()
    session: Any = _FakeSession(tmp_path)

    def job(iteration: int) -> SnapshotJob:
        def build(particles: ParticleAssignments) -> Future[ClassSnapshot]:
            future: Future[ClassSnapshot] = Future()
            future.set_result(make_snapshot(iteration=iteration))
            return future

        return SnapshotJob(session, iteration, build, time.time())

    writer.submit(job(1))
    time.sleep(0.2)  # job 1 is being written
    for it in (2, 3, 4):
        writer.submit(job(it))
    assert not writer.idle()
    release.set()
    writer.stop(10)
    assert written == [1, 4]
    assert heard == [("s", 1), ("s", 4)]
    assert writer.records["s"].iteration == 4


def test_client_times_out_without_an_engine() -> None:
    start = time.monotonic()
    with EngineClient(f"tcp://127.0.0.1:{free_port()}", timeout_s=0.3) as client, pytest.raises(EngineTimeoutError):
        client.status()
    assert time.monotonic() - start < 3


def test_a_session_reopens_with_its_parameters(tmp_path: Path) -> None:
    params = Class2DParams(n_classes=3, mask_diameter_angstrom=150.0)
    created = Session.create(tmp_path, "name with spaces", params, project_dir="/data/project")
    created.journal.close()
    reopened = Session.open(created.root)
    assert (reopened.name, reopened.params, reopened.project_dir) == ("name with spaces", params, "/data/project")
    reopened.journal.close()


def test_one_engine_per_data_directory_and_broken_sessions_are_left_alone(tmp_path: Path) -> None:
    from otf2d.engine.serving.em_adapter import em_classifier_factory
    from otf2d.engine.serving.service import EngineConfig, EngineService
    from otf2d.monitoring.snapshots import write_snapshot

    broken = tmp_path / "sessions" / "broken"
    broken.mkdir(parents=True)
    (broken / "session.json").write_text("{not json")

    def service() -> EngineService:
        return EngineService(
            EngineConfig(data_dir=tmp_path), em_classifier_factory, torch.device("cpu"), write_snapshot
        )

    first = service()
    first.open()
    try:
        assert str(broken) in first.status()["engine"]["broken_sessions"]
        assert (broken / "session.json").read_text() == "{not json"
        second = service()
        with pytest.raises(ConfigError, match="another engine"):
            second.open()
    finally:
        first.close(drain_timeout_s=1)
    third = service()  # the lock went with the first engine
    third.open()
    third.close(drain_timeout_s=1)


def test_free_port_never_hands_out_a_port_twice() -> None:
    # Fixtures, the demo and the benchmarks take several ports before any process binds them.
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[-1]))  # and each was free when handed out
