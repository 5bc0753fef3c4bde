"""The engine as a real process on loopback: exactly-once journaling, re-ACKs, rejects, control, snapshots, metrics.

One engine process serves this module (each test uses its own session); the kill / restart tests
are in ``test_engine_restart.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pytest
import starfile
from engine_helpers import (
    ROOT,
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

from otf2d.control.client import EngineClient, EngineRequestError
from otf2d.core.wire import KIND_ACK, KIND_REJECT, KIND_REPLY, encode_control
from otf2d.engine.resources.memory import resident_memory_bytes
from otf2d.engine.storage.journal import Journal


@dataclass
class RunningEngine:
    endpoint: str
    data: Path
    metrics_port: int
    client: TestClient
    control: EngineClient
    pid: int


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    root = tmp_path_factory.mktemp("engine")
    data = root / "data"
    port, metrics_port = free_port(), free_port()
    extra: tuple[str, ...] = ("--snapshot-every", "100", "--snapshot-seconds", "0", "--snapshot-min-seconds", "0")
    extra += ("--metrics-port", str(metrics_port))
    with engine_process(data, port, *extra, "--metrics-addr", "127.0.0.1") as proc:
        endpoint = f"tcp://127.0.0.1:{port}"
        client = TestClient(endpoint)
        control = EngineClient(endpoint, timeout_s=10.0)
        try:
            wait_ready(client, proc)
            yield RunningEngine(endpoint, data, metrics_port, client, control, proc.pid)
        finally:
            client.close()
            control.close()
        assert proc.poll() is None, "the engine died during the tests"


def session_status(engine: RunningEngine, session: str) -> dict[str, Any]:
    return engine.control.status(session)["sessions"][session]


def classified_all(engine: RunningEngine, session: str, n: int) -> dict[str, Any] | None:
    status = session_status(engine, session)
    return status if status["particles_classified"] == n and status["particles_journaled"] == n else None


def test_every_particle_is_journaled_and_classified_exactly_once(engine: RunningEngine) -> None:
    session = "once"
    engine.control.start_session(session, TEST_PARAMS)
    batches = [(f"once:{m}", make_batch(session, m, 12)) for m in range(10)]
    answers = send_batches(engine.client, batches)
    assert all(a["kind"] == KIND_ACK and a["n_accepted"] == 12 for a in answers.values())

    # re-sends of ACKed messages are ACKed again, storing nothing
    again = send_batches(engine.client, batches[2:5])
    assert [(a["kind"], a["n_accepted"]) for a in again.values()] == [(KIND_ACK, 0)] * 3
    # a new message whose particles overlap: only the new ones are journaled
    overlap = make_batch(session, 9, 12, first_index=7)  # indices 7..18 of micrograph 9: 7..12 known
    answer = send_batches(engine.client, [("once:10", overlap)])["once:10"]
    assert (answer["n_accepted"], answer["n_duplicates"]) == (6, 6)

    total = 10 * 12 + 6
    status = wait_until(lambda: classified_all(engine, session, total), 60, "every particle classified")
    assert status["phase"] == "streaming"
    iteration = engine.control.snapshot(session)["iteration"]
    status = wait_until(
        lambda: (
            (s := session_status(engine, session))["last_snapshot"]
            and s["last_snapshot"]["iteration"] >= iteration
            and s
        ),
        30,
        "the snapshot",
    )
    assert sum(status["class_counts"]) == total == status["last_snapshot"]["n_particles"]
    assert status["messages"] == 11 and status["duplicates"] == 6

    journal = Journal(Path(status["directory"]) / "journal", session)
    try:
        part = journal.read(0, journal.count)
        keys = list(zip(part.batch.stack_paths.tolist(), part.batch.indices.tolist(), strict=True))
        sent = {(str(p), int(i)) for _, b in batches for p, i in zip(b.stack_paths, b.indices, strict=True)}
        sent |= {(str(p), int(i)) for p, i in zip(overlap.stack_paths, overlap.indices, strict=True)}
        assert len(keys) == len(set(keys)) == total
        assert set(keys) == sent
        assigned = journal.assignments()
        assert len(assigned) == total
        assert set(assigned.class_index.tolist()) <= set(range(TEST_PARAMS["n_classes"]))
    finally:
        journal.close()


def _bad_messages(session: str) -> list[tuple[str, list[Any]]]:
    good = make_batch(session, 1, 4)
    frames = [bytes(f) for f in batch_frames(good, "bad:1")]
    header = json.loads(frames[0])
    nan_images = good.images.copy()
    nan_images[2, 3, 3] = np.nan

    def with_header(**changes: Any) -> list[Any]:
        return [json.dumps({**header, **changes}).encode(), frames[1], frames[2]]

    nan_frame = nan_images.astype("<f4").tobytes()
    return [
        ("not json", [b"\xff\xfe not json", frames[1], frames[2]]),
        ("version", with_header(schema_version=99)),
        ("crc", with_header(images={**header["images"], "crc32": (header["images"]["crc32"] + 1) % 2**32})),
        ("frames", frames[:2]),
        (
            "nan",
            [
                json.dumps({**header, "images": {**header["images"], "crc32": zlib.crc32(nan_frame)}}).encode(),
                nan_frame,
                frames[2],
            ],
        ),
        ("indices", with_header(indices=[0, 1, 2, 3])),
        ("session", with_header(session="")),
    ]


def test_bad_messages_are_rejected_and_the_engine_keeps_going(engine: RunningEngine) -> None:
    session = "poison"
    engine.control.start_session(session, TEST_PARAMS)
    client = engine.client
    for label, frames in _bad_messages(session):
        client.answers.clear()
        client.send(frames)
        answer = client.receive(10.0)
        assert answer is not None, label
        assert answer["kind"] == KIND_REJECT, label
        assert answer["reason"], label
        assert answer["msg_id"] in ("", "bad:1"), label

    # a box that differs from the session's: NACKed with the reason (never a dead letter), nothing stored
    send_batches(client, [("poison:0", make_batch(session, 0, 5))])
    other = send_batches(client, [("poison:1", make_batch(session, 1, 5, box=24))])["poison:1"]
    assert other["kind"] == "nack" and "differs" in other["reason"]
    # control requests with a problem get a reply with ok=false, never silence
    client.send(encode_control("status", request_id="r1", session="no-such-session"))
    reply = client.receive(10.0)
    assert reply is not None and reply["kind"] == KIND_REPLY and reply["ok"] is False
    assert "no session" in reply["error"]
    client.send([json.dumps({"schema_version": 1, "kind": "status", "request_id": 5}).encode()])
    reply = client.receive(10.0)
    assert reply is not None and reply["kind"] == KIND_REJECT
    with pytest.raises(EngineRequestError, match="n_classes"):
        engine.control.start_session("badparams", {"n_classes": "many"})
    with pytest.raises(EngineRequestError, match="no classes yet"):
        engine.control.snapshot(session)

    # still alive and accepting
    assert client.ping(5.0)
    good = send_batches(client, [("poison:2", make_batch(session, 2, 5))])["poison:2"]
    assert good["kind"] == KIND_ACK and good["n_accepted"] == 5
    assert session_status(engine, session)["particles_journaled"] == 10


def test_start_session_sets_and_protects_parameters(engine: RunningEngine) -> None:
    created = engine.control.start_session("params", {**TEST_PARAMS, "n_classes": 5})
    assert created["created"] is True and created["params"]["n_classes"] == 5
    # while collecting, parameters may change; the same ones again are a no-op
    assert engine.control.start_session("params", TEST_PARAMS)["updated"] is True
    assert engine.control.start_session("params", TEST_PARAMS)["updated"] is False
    send_batches(engine.client, [(f"params:{m}", make_batch("params", m, 20)) for m in range(3)])
    wait_until(lambda: classified_all(engine, "params", 60), 60, "classification")
    with pytest.raises(EngineRequestError, match="already classifying"):
        engine.control.start_session("params", {**TEST_PARAMS, "n_classes": 6})
    session_json = json.loads((Path(session_status(engine, "params")["directory"]) / "session.json").read_text())
    assert session_json["params"]["n_classes"] == TEST_PARAMS["n_classes"]
    # pause: still journaled and ACKed, not folded; resume: folded
    engine.control.pause("params")
    send_batches(engine.client, [("params:9", make_batch("params", 9, 7))])
    status = session_status(engine, "params")
    assert status["paused"] and status["particles_journaled"] == 67 and status["particles_classified"] == 60
    engine.control.resume("params")
    wait_until(lambda: classified_all(engine, "params", 67), 30, "folding after resume")


def test_snapshots_on_disk_and_on_request_are_readable(engine: RunningEngine) -> None:
    session = "snap"
    engine.control.start_session(session, TEST_PARAMS)
    send_batches(engine.client, [(f"snap:{m}", make_batch(session, m, 25)) for m in range(8)])
    wait_until(lambda: classified_all(engine, session, 200), 60, "classification")
    # the CLI client: a separate process, no torch
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "otf2d.core.cli",
            "snapshot",
            "--engine",
            engine.endpoint,
            "--session",
            session,
            "--wait",
            "30",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "written: 200 particles" in out.stdout
    snapshot_dir = Path(session_status(engine, session)["snapshot_directory"])
    latest = json.loads((snapshot_dir / "latest.json").read_text())
    files = {role: snapshot_dir / name for role, name in latest["files"].items()}
    assert all(p.exists() for p in files.values())
    data = starfile.read(files["data_star"], always_dict=True)
    particles = data["particles"]
    assert len(particles) == 200
    assert particles["rlnClassNumber"].between(1, TEST_PARAMS["n_classes"]).all()
    with mrcfile.open(files["classes_mrcs"], permissive=True) as mrc:
        assert mrc.data.shape == (TEST_PARAMS["n_classes"], 32, 32)
        assert np.isfinite(mrc.data).all() and mrc.data.std() > 0
    model = starfile.read(files["model_star"], always_dict=True)
    assert abs(model["model_classes"]["rlnClassDistribution"].sum() - 1.0) < 1e-6
    assert files["gallery_png"].stat().st_size > 0
    if shutil.which("relion_star_handler") is None:
        pytest.skip("relion_star_handler not installed: RELION read-back not checked")
    relion = subprocess.run(
        ["relion_star_handler", "--i", str(files["data_star"]), "--o", str(snapshot_dir / "relion_copy.star")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert relion.returncode == 0, relion.stderr
    copied = starfile.read(snapshot_dir / "relion_copy.star", always_dict=True)
    assert len(copied["particles"]) == 200


def test_status_command_and_metrics(engine: RunningEngine) -> None:
    session = "metrics"
    engine.control.start_session(session, TEST_PARAMS)
    send_batches(engine.client, [(f"metrics:{m}", make_batch(session, m, 15)) for m in range(4)])
    wait_until(lambda: classified_all(engine, session, 60), 60, "classification")
    out = subprocess.run(
        [sys.executable, "-m", "otf2d.core.cli", "status", "--engine", engine.endpoint, "--session", session],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert f"{session}: streaming, 60 journaled, 60 classified" in out.stdout
    text = urllib.request.urlopen(f"http://127.0.0.1:{engine.metrics_port}/metrics", timeout=10).read().decode()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    everything = engine.control.status()
    journaled = sum(s["particles_journaled"] for s in everything["sessions"].values())
    classified = sum(s["particles_classified"] for s in everything["sessions"].values())
    assert samples["otf2d_particles_received_total"] == journaled
    assert samples["otf2d_particles_classified_total"] == classified
    assert samples["otf2d_file_to_classified_latency_seconds_count"] == classified
    assert samples["otf2d_queue_depth"] == everything["engine"]["queue_depth"]
    for reason in ("invalid", "inconsistent", "duplicate"):
        assert f'otf2d_particles_rejected_total{{reason="{reason}"}}' in samples
    assert samples["otf2d_em_batch_duration_seconds_count"] >= 1
    # memory: the engine's own reading, the status line and /metrics agree with the kernel's
    memory = everything["engine"]["memory"]
    kernel = resident_memory_bytes(Path(f"/proc/{engine.pid}/status"))
    if not kernel:
        pytest.skip("no /proc: the engine's memory is not reported")
    assert memory["peak_resident_bytes"] >= memory["resident_bytes"] > 50e6
    assert abs(memory["resident_bytes"] / kernel["resident_bytes"] - 1) < 0.25
    assert abs(samples["process_resident_memory_bytes"] / kernel["resident_bytes"] - 1) < 0.25
    shown = re.search(r", memory (\d+) MB \(peak (\d+) MB\)", out.stdout)
    assert shown is not None, out.stdout
    assert abs(float(shown.group(1)) * 1e6 / kernel["resident_bytes"] - 1) < 0.25
    assert "device_reserved_bytes" not in memory  # a CPU engine
    assert not any(name.startswith("otf2d_device_memory_bytes") for name in samples)


def test_clients_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import otf2d.control.client, otf2d.control.status_cmd, otf2d.control.snapshot_cmd\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monitoring')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
