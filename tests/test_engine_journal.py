"""The session journal: durable append, dedup by particle key and msg_id, read-back, assignments, crash recovery."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_helpers import ROOT, batch_frames, make_batch

from otf2d.core.extra_columns import ExtraColumns
from otf2d.core.particles import CtfParams, ParticleBatch
from otf2d.core.snapshot import AssignmentRecord
from otf2d.core.wire import decode_batch, encode_batch
from otf2d.engine.storage.journal import ASSIGNMENT_COLUMNS, STATISTIC_COLUMNS, Journal
from otf2d.engine.storage.segments import segment_path

SESSION = "grid1"


def entry(batch: ParticleBatch, msg_id: str) -> tuple[dict[str, Any], ParticleBatch]:
    """What the server hands to the journal: a decoded wire message."""
    return decode_batch(batch_frames(batch, msg_id, ready=1000.0))


def test_append_and_read_back_equal_the_sent_particles(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", SESSION)
    batches = [make_batch(SESSION, m, 7 + m) for m in range(3)]
    outcomes = journal.append_many([entry(b, f"s:{m}") for m, b in enumerate(batches)])
    assert [(o.accepted, o.n_accepted, o.n_duplicates) for o in outcomes] == [(True, 7, 0), (True, 8, 0), (True, 9, 0)]
    assert journal.count == 24
    journal.close()

    reopened = Journal(tmp_path / "j", SESSION)
    assert reopened.count == 24
    part = reopened.read(5, 20)
    want = ParticleBatch.concatenate(batches).take(np.arange(5, 20))
    np.testing.assert_array_equal(part.seqs, np.arange(5, 20))
    # float16 cache: exactly the float16 rounding of what was sent
    np.testing.assert_array_equal(part.batch.images, want.images.astype(np.float16).astype(np.float32))
    assert part.batch.stack_paths.tolist() == want.stack_paths.tolist()
    np.testing.assert_array_equal(part.batch.indices, want.indices)
    for f in fields(CtfParams):
        np.testing.assert_array_equal(getattr(part.batch.ctf, f.name), getattr(want.ctf, f.name))
    np.testing.assert_array_equal(part.file_ready_time, np.full(15, 1000.0))
    assert part.batch.pixel_size_angstrom == want.pixel_size_angstrom
    assert reopened.box == want.box_size


def test_duplicates_are_dropped_by_key_and_resent_messages_are_recognised(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", SESSION)
    first = make_batch(SESSION, 1, 10)
    journal.append_many([entry(first, "s:1")])
    # a new message overlapping the first one by 4 particles (indices 7..10), plus 6 new ones
    overlap = make_batch(SESSION, 1, 10, first_index=7)
    resent = journal.append_many([entry(first, "s:1"), entry(overlap, "s:2"), entry(overlap, "s:2")])
    assert (resent[0].resent, resent[0].n_accepted) == (True, 0)
    assert (resent[1].resent, resent[1].n_accepted, resent[1].n_duplicates) == (False, 6, 4)
    assert (resent[2].resent, resent[2].n_accepted) == (True, 0)  # same msg_id twice in one group
    assert journal.count == 16
    batch = journal.read(0, 16).batch
    keys = list(zip(batch.stack_paths.tolist(), batch.indices.tolist(), strict=True))
    assert len(set(keys)) == 16
    assert sorted(i for _, i in keys) == list(range(1, 17))
    # the new particles of the overlapping message are its last six images
    np.testing.assert_array_equal(
        journal.read(10, 16).batch.images, overlap.images[4:].astype(np.float16).astype(np.float32)
    )
    assert journal.n_messages() == 2
    assert journal.n_duplicates() == 4


def test_a_batch_inconsistent_with_the_session_is_refused_alone(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", SESSION)
    good = make_batch(SESSION, 1, 5)
    other_box = make_batch(SESSION, 2, 5, box=24)
    outcomes = journal.append_many(
        [entry(good, "s:1"), entry(other_box, "s:2"), entry(make_batch(SESSION, 3, 5), "s:3")]
    )
    assert [o.accepted for o in outcomes] == [True, False, True]
    assert "box 24x24 differs" in outcomes[1].reason
    assert journal.count == 10
    assert journal.message("s:2") is None


def test_images_beyond_float16_range_are_cached_as_float32(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", SESSION)
    batch = make_batch(SESSION, 1, 4)
    loud = ParticleBatch(
        images=(batch.images * 1e5).astype(np.float32),
        pixel_size_angstrom=batch.pixel_size_angstrom,
        ctf=batch.ctf,
        session=SESSION,
        stack_paths=batch.stack_paths,
        indices=batch.indices,
        optics_groups=batch.optics_groups,
    )
    journal.append_many([entry(loud, "s:1")])
    np.testing.assert_array_equal(journal.read(0, 4).batch.images, loud.images)


def test_assignments_are_stored_and_overwritten(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", SESSION)
    journal.append_many([entry(make_batch(SESSION, 1, 6), "s:1")])
    values = {c: np.arange(6, dtype=np.float64) + k for k, c in enumerate(ASSIGNMENT_COLUMNS)}
    values["class_index"] = np.array([0, 1, 1, 2, 2, 2])
    journal.store_assignments(np.arange(6), AssignmentRecord(**values))
    values2 = dict(values, class_index=np.array([2, 2]), psi_degrees=np.array([-90.5, 45.25]))
    journal.store_assignments(np.array([0, 1]), AssignmentRecord(**{c: np.asarray(v)[:2] for c, v in values2.items()}))
    got = journal.assignments()
    np.testing.assert_array_equal(got.class_index, [2, 2, 1, 2, 2, 2])
    np.testing.assert_array_equal(got.psi_degrees, [-90.5, 45.25, 3, 4, 5, 6])
    np.testing.assert_array_equal(got.log_likelihood, np.arange(6) + 8)
    np.testing.assert_array_equal(journal.class_counts(4), [0, 1, 5, 0])
    assert len(journal.assignments(stop=3)) == 3
    assert journal.optics_groups()[0].number == 1


def test_estep_statistics_are_journaled_or_unknown(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", SESSION)
    journal.append_many([entry(make_batch(SESSION, 1, 6), "s:1")])
    values: dict[str, np.ndarray] = {c: np.zeros(6) for c in ASSIGNMENT_COLUMNS}
    journal.store_assignments(np.arange(6), AssignmentRecord(**values))  # a classifier that gives no statistics
    got = journal.assignments()
    assert all(getattr(got, c) is None for c in STATISTIC_COLUMNS)
    stats = {c: np.arange(6, dtype=np.float64) + 10 * k for k, c in enumerate(STATISTIC_COLUMNS)}
    stats["cross_term"][2] = np.nan  # unknown for one particle
    journal.store_assignments(np.arange(6), AssignmentRecord(**values | stats))
    got = journal.assignments()
    for c in STATISTIC_COLUMNS:
        np.testing.assert_array_equal(getattr(got, c), stats[c])
    np.testing.assert_array_equal(got.ctf.scale, make_batch(SESSION, 1, 6).ctf.scale)  # not the particle scale
    forget = AssignmentRecord(**{c: v[:1] for c, v in values.items()})  # no statistics: forgets the old ones
    journal.store_assignments(np.array([0]), forget)
    assert np.isnan(np.asarray(journal.assignments().image_power)[0])


def test_a_journal_written_before_the_statistics_gains_their_columns(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", SESSION)
    journal.append_many([entry(make_batch(SESSION, 1, 3), "s:1")])
    journal.close()
    with sqlite3.connect(tmp_path / "j" / "index.sqlite") as conn:
        for column in ("particle_scale", "image_power", "cross_term", "norm_term"):
            conn.execute(f"ALTER TABLE particles DROP COLUMN {column}")
    journal = Journal(tmp_path / "j", SESSION)
    journal.store_assignments(np.arange(3), AssignmentRecord(**{c: np.zeros(3) for c in ASSIGNMENT_COLUMNS}))
    assert len(journal.assignments()) == 3 and journal.assignments().image_power is None


def test_bytes_written_but_never_committed_are_cut_off(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", SESSION)
    journal.append_many([entry(make_batch(SESSION, 1, 5), "s:1")])
    journal.close()
    seg = segment_path(tmp_path / "j" / "segments", 0)
    size = seg.stat().st_size
    with open(seg, "ab") as handle:  # a crash after the image write, before the index commit
        handle.write(b"\x7f" * 999)
    reopened = Journal(tmp_path / "j", SESSION)
    assert seg.stat().st_size == size
    batch = make_batch(SESSION, 2, 5)
    reopened.append_many([entry(batch, "s:2")])
    np.testing.assert_array_equal(reopened.read(5, 10).batch.images, batch.images.astype(np.float16).astype(np.float32))


def test_segments_roll_over(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", SESSION, segment_bytes=3000)
    batches = [make_batch(SESSION, m, 2) for m in range(4)]  # 2 × 32 × 32 × 2 bytes = 4 KiB each
    for m, b in enumerate(batches):
        journal.append_many([entry(b, f"s:{m}")])
    assert len(list((tmp_path / "j" / "segments").glob("*.seg"))) == 4
    np.testing.assert_array_equal(
        journal.read(0, 8).batch.images,
        np.concatenate([b.images for b in batches]).astype(np.float16).astype(np.float32),
    )


#: ACKs the writer has printed before the test kills it.
WRITER_GOING_ACKS = 6

_WRITER = """
import sys
sys.path[:0] = [{root!r}, {root!r} + "/tests"]
import numpy as np
from otf2d.core.particles import ParticleBatch
from otf2d.core.wire import decode_batch
from otf2d.engine.storage.journal import Journal
from engine_helpers import batch_frames, make_batch
journal = Journal({path!r}, "grid1")
base = make_batch("grid1", 0, 6)
m = 0
while True:
    stacks = np.array([f"mic_{{m}}.mrcs"] * 6)
    b = ParticleBatch(
        base.images, base.pixel_size_angstrom, base.ctf, "grid1", stacks, base.indices, base.optics_groups
    )
    outcome = journal.append_many([decode_batch(batch_frames(b, f"w:{{m}}", ready=1.0))])[0]
    print(outcome.msg_id, outcome.n_accepted, flush=True)
    m += 1
"""


@pytest.mark.slow
def test_sigkill_during_appends_loses_no_acknowledged_message(tmp_path: Path) -> None:
    path = tmp_path / "j"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER.format(root=str(ROOT), path=str(path))],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    early: list[bytes] = []
    try:
        # kill it mid-stream once it is going (a fixed sleep was too short on a loaded CI machine,
        # where importing the writer's modules alone can take seconds), then half a second later
        assert proc.stdout is not None
        deadline = time.monotonic() + 120.0
        while len(early) < WRITER_GOING_ACKS and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            early.append(line)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    acked = [line.split() for line in b"".join([*early, out]).decode().splitlines() if line.strip()]
    assert len(acked) >= WRITER_GOING_ACKS, "the writer did not get going"
    journal = Journal(path, SESSION)
    for msg_id, n_accepted in acked:
        record = journal.message(msg_id)
        assert record is not None, f"ACKed message {msg_id} lost"
        assert record["n_accepted"] == int(n_accepted)
    # every committed particle is readable, once, and the journal accepts more
    part = journal.read(0, journal.count)
    keys = list(zip(part.batch.stack_paths.tolist(), part.batch.indices.tolist(), strict=True))
    assert len(keys) == len(set(keys)) == journal.count >= 6 * len(acked)
    journal.append_many([entry(make_batch(SESSION, 99, 3), "after:1")])
    assert journal.read(journal.count - 3, journal.count).batch.indices.tolist() == [1, 2, 3]


def test_input_columns_are_journaled_with_their_particles(tmp_path: Path) -> None:
    """Issue 14: each message's input columns (the wire's metadata frame) come back with the assignments,
    aligned with the particles, duplicates dropped, after a reopen too."""
    first = make_batch(SESSION, 1, 4)
    second = make_batch(SESSION, 2, 3)
    extra1 = ExtraColumns("relion", {"rlnCoordinateX": np.arange(4.0), "rlnMicrographName": np.array(["a"] * 4)})
    extra2 = ExtraColumns("relion", {"rlnCoordinateX": 10 + np.arange(3.0), "rlnMicrographName": np.array(["b"] * 3)})
    first = dataclasses.replace(first, extra=extra1)
    # the second message repeats particle 1 of the first: it is dropped with its columns
    second = dataclasses.replace(
        second,
        stack_paths=np.array([first.stack_paths[0], *second.stack_paths[1:]]),
        indices=np.array([first.indices[0], *second.indices[1:]]),
        extra=extra2,
    )
    journal = Journal(tmp_path / "j", SESSION)
    for msg, batch in (("s:1", first), ("s:2", second)):
        header, decoded = decode_batch(encode_batch(batch, msg_id=msg, source="f.star", file_ready_time=1.0))
        journal.append_many([(header, decoded)])
    assert journal.count == 6
    values = {c: np.zeros(6) for c in ASSIGNMENT_COLUMNS}
    journal.store_assignments(np.array([0, 2, 4, 5]), AssignmentRecord(**{c: v[:4] for c, v in values.items()}))
    journal.close()
    got = Journal(tmp_path / "j", SESSION).assignments()
    assert got.extra is not None
    np.testing.assert_array_equal(got.extra.columns["rlnCoordinateX"], [0.0, 2.0, 11.0, 12.0])
    assert got.extra.columns["rlnMicrographName"].tolist() == ["a", "a", "b", "b"]
