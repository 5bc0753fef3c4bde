"""The engine accepts only what its classifier can classify; a session's geometry is fixed by its
start_session (or its first accepted batch) and a disagreeing batch is NACKed, never a dead letter;
a session costs no file descriptor while idle.

Against a real engine process on loopback ZeroMQ (module fixture), and the journal on real files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_helpers import TEST_PARAMS, TestClient, engine_process, make_batch, send_batches, wait_ready
from ports import free_port

from otf2d.control.client import EngineClient, EngineRequestError
from otf2d.core.particles import CtfParams, ParticleBatch
from otf2d.core.wire import KIND_ACK, KIND_REJECT
from otf2d.engine.serving.ingest_checks import batch_problem
from otf2d.engine.storage.journal import MAX_CONNECTIONS_PER_THREAD, Journal


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, EngineClient]]:
    data = tmp_path_factory.mktemp("ingest") / "data"
    port = free_port()
    with engine_process(data, port, "--snapshot-seconds", "0") as proc:
        endpoint = f"tcp://127.0.0.1:{port}"
        client, control = TestClient(endpoint, identity="ingest-scope"), EngineClient(endpoint, timeout_s=10.0)
        try:
            wait_ready(client, proc)
            yield client, control
        finally:
            client.close()
            control.close()
        assert proc.poll() is None, "the engine died during the tests"


def _tiny(session: str, micrograph: int, n: int) -> ParticleBatch:
    """``n`` particles of 8 px: too small for the classifier (the simulator refuses to make them)."""
    good = make_batch(session, micrograph, n)
    return ParticleBatch(
        images=np.random.default_rng(micrograph).standard_normal((n, 8, 8)).astype(np.float32),
        pixel_size_angstrom=good.pixel_size_angstrom,
        ctf=good.ctf,
        session=session,
        stack_paths=good.stack_paths,
        indices=good.indices,
        optics_groups=good.optics_groups,
    )


def _with_ctf(batch: ParticleBatch, **values: float) -> ParticleBatch:
    fields = {name: np.array(getattr(batch.ctf, name), dtype=np.float64) for name in CtfParams.__dataclass_fields__}
    for name, value in values.items():
        fields[name][1] = value  # the second particle only
    return ParticleBatch(
        images=batch.images,
        pixel_size_angstrom=batch.pixel_size_angstrom,
        ctf=CtfParams(**fields),
        session=batch.session,
        stack_paths=batch.stack_paths,
        indices=batch.indices,
        optics_groups=batch.optics_groups,
    )


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"voltage_kv": 0.0}, "voltage_kv = 0 kV is outside 60-400"),
        ({"voltage_kv": -300.0}, "voltage_kv = -300"),
        ({"voltage_kv": 3_000_000.0}, "voltage_kv = 3e+06"),
        ({"amplitude_contrast": 2.0}, "amplitude_contrast = 2"),
        ({"spherical_aberration_mm": 20.0}, "spherical_aberration_mm = 20 mm"),
        ({"defocus_u_angstrom": 5e6}, "defocus_u_angstrom"),
        ({"scale": 0.0}, "scale = 0"),
    ],
)
def test_physically_absurd_ctf_is_rejected_naming_the_particle(change: dict[str, float], words: str) -> None:
    problem = batch_problem(_with_ctf(make_batch("s", 1, 3), **change))
    assert words in problem and "particle 2 of Extract/job007/Movies/mic_00001.mrcs" in problem
    assert batch_problem(make_batch("s", 1, 3)) == ""


def test_boxes_and_pixel_sizes_the_classifier_cannot_take() -> None:
    assert "boxes of 16 to 2048" in batch_problem(_tiny("s", 1, 2))
    good = make_batch("s", 1, 2)
    for pixel in (0.01, 100.0):
        bad = ParticleBatch(
            images=good.images,
            pixel_size_angstrom=pixel,
            ctf=good.ctf,
            session="s",
            stack_paths=good.stack_paths,
            indices=good.indices,
            optics_groups=good.optics_groups,
        )
        assert "pixel size" in batch_problem(bad)


def _answer(client: TestClient, msg_id: str, batch: ParticleBatch) -> dict[str, Any]:
    return send_batches(client, [(msg_id, batch)])[msg_id]


def test_the_engine_rejects_what_it_cannot_classify_and_acks_the_rest(
    engine: tuple[TestClient, EngineClient],
) -> None:
    client, control = engine
    control.start_session("physics", TEST_PARAMS)
    tiny = _answer(client, "phys:1", _tiny("physics", 1, 2))
    assert tiny["kind"] == KIND_REJECT and "box 8" in tiny["reason"]
    zero_kv = _answer(client, "phys:2", _with_ctf(make_batch("physics", 2, 3), voltage_kv=0.0))
    assert zero_kv["kind"] == KIND_REJECT and "voltage_kv = 0 kV" in zero_kv["reason"]
    good = _answer(client, "phys:3", make_batch("physics", 3, 3))
    assert good["kind"] == KIND_ACK and good["n_accepted"] == 3
    assert control.status("physics")["sessions"]["physics"]["particles_journaled"] == 3


def test_start_session_fixes_the_geometry_and_a_stray_batch_cannot(engine: tuple[TestClient, EngineClient]) -> None:
    client, control = engine
    real = make_batch("victim", 1, 3)
    control.start_session("victim", {**TEST_PARAMS, "box_size": 32, "pixel_size_angstrom": real.pixel_size_angstrom})
    stray = _answer(client, "stray:1", make_batch("victim", 9, 1, box=16))
    assert stray["kind"] == "nack" and "differs from session 'victim'" in stray["reason"]
    ok = _answer(client, "victim:1", real)
    assert ok["kind"] == KIND_ACK and ok["n_accepted"] == 3
    with pytest.raises(EngineRequestError, match="geometry"):
        control.start_session("victim", {**TEST_PARAMS, "box_size": 64, "pixel_size_angstrom": 4.0})
    with pytest.raises(EngineRequestError, match="go together"):
        control.start_session("half", {**TEST_PARAMS, "box_size": 64})


def test_without_start_session_a_disagreeing_batch_is_nacked_not_dead_lettered(
    engine: tuple[TestClient, EngineClient],
) -> None:
    client, control = engine
    first = _answer(client, "first:1", make_batch("unset", 1, 1, box=16))
    assert first["kind"] == KIND_ACK
    later = _answer(client, "later:1", make_batch("unset", 2, 3))
    assert later["kind"] == "nack" and "box 32" in later["reason"] and "box 16" in later["reason"]
    assert control.status("unset")["sessions"]["unset"]["particles_journaled"] == 1


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to count file descriptors")
def test_idle_sessions_hold_no_file_descriptors(tmp_path: Path) -> None:
    before = _open_fds()
    journals = [Journal(tmp_path / f"j{i}", f"s{i}") for i in range(3 * MAX_CONNECTIONS_PER_THREAD)]
    try:
        for i, journal in enumerate(journals):
            batch = make_batch(f"s{i}", 1, 1)
            assert journal.append_many([({"msg_id": f"m:{i}", "file_ready_time": 1.0}, batch)])[0].accepted
        held = _open_fds() - before
        assert held <= 3 * MAX_CONNECTIONS_PER_THREAD + 4, held  # not 4 per journal
        assert all(j.count == 1 for j in journals)
        assert journals[0].read(0, 1).batch.images.shape == (1, 32, 32)  # a closed one reopens
    finally:
        for journal in journals:
            journal.close()
