"""Issue 13 item 4: the streamer never dies on a file.

The real daemon (``Streamer.run``) over a simulated RELION session, a fake engine on real ZeroMQ
(loopback), a real SQLite ledger and real files, with the four inputs that killed it in a loop:
an image number of 99999999999999999999, a ``.cs`` with a scalar ``blob/shape``, a ``.cs`` whose
``alignments2D/shift`` has 3 components, and a file named with Latin-1 bytes. Each bad file is
quarantined with its reason (log, ledger, ``/metrics``); every good particle arrives once.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pytest
from fake_engine import FakeEngine
from particle_files import write_cs
from ports import free_port
from streamer_harness import SESSION, fast_config, simulate, truth_keys

from otf2d.core.particles import ParticleKey
from otf2d.streamer import gate as gate_module
from otf2d.streamer.daemon import Streamer
from otf2d.streamer.gate import Gate, GateConfig, file_kind
from otf2d.streamer.ledger import FileState, Ledger
from otf2d.streamer.optics_source import OpticsCache

MOVIES = "Extract/job005/Movies"
LATIN1_NAME = b"mic_\xe9t\xe9_extract.star"
LATIN1_SHOWN = "mic_\\xe9t\\xe9_extract.star"


def _cs_fields(n: int, stack: str, **extra: np.ndarray) -> dict[str, np.ndarray]:
    fields = {
        "blob/path": np.array([stack.encode()] * n),
        "blob/idx": np.arange(n, dtype="<u4"),
        "blob/shape": np.full((n, 2), 16, dtype="<u4"),
        "blob/psize_A": np.full(n, 4.0, dtype="<f4"),
    }
    fields.update(extra)
    return fields


def _poisoned_project(tmp_path: Path) -> tuple[Path, set[ParticleKey], dict[str, Path]]:
    """A simulated session plus the four loop-killers and two blank images; returns the keys to expect."""
    project = tmp_path / "project"
    simulate(project, n_particles=40, n_micrographs=2)
    expected = truth_keys(project)
    movies = project / MOVIES
    with mrcfile.open(movies / "mic_00002.mrcs", mode="r+") as mrc:
        mrc.data[2] = 0.0  # a blank image: never sent, counted
    expected.discard(ParticleKey(SESSION, f"{MOVIES}/mic_00002.mrcs", 3))
    # a valid micrograph whose _extract.star has a Latin-1 name (its stack has an ASCII one)
    shutil.copyfile(movies / "mic_00002.mrcs", movies / "mic_ete.mrcs")
    text = (movies / "mic_00002_extract.star").read_text().replace("mic_00002.mrcs", "mic_ete.mrcs")
    latin1 = Path(os.fsdecode(os.fsencode(movies) + b"/" + LATIN1_NAME))
    latin1.write_text(text)
    n_ete = sum(1 for line in text.splitlines() if "@" in line)
    expected |= {ParticleKey(SESSION, f"{MOVIES}/mic_ete.mrcs", i) for i in range(1, n_ete + 1) if i != 3}
    # 1. an image number no stack can hold
    big = (movies / "mic_00001_extract.star").read_text().replace("000004@", "99999999999999999999@", 1)
    (movies / "mic_bigindex_extract.star").write_text(big)
    # 2. and 3. cryoSPARC files with fields of the wrong shape
    stack = f"{MOVIES}/mic_00001.mrcs"
    scalar = write_cs(
        project / "J9" / "J9_scalar_shape.cs",
        {**_cs_fields(4, stack), "blob/shape": np.full(4, 16, dtype="<u4")},
    )
    shift3 = write_cs(
        project / "J9" / "J9_shift3.cs",
        _cs_fields(
            4,
            stack,
            **{"alignments2D/pose": np.zeros(4, dtype="<f4"), "alignments2D/shift": np.zeros((4, 3), dtype="<f4")},
        ),
    )
    bad = {"bigindex": movies / "mic_bigindex_extract.star", "scalar": scalar, "shift3": shift3, "latin1": latin1}
    old = time.time() - 60  # the .cs files are settled
    for path in (scalar, shift3):
        os.utime(path, (old, old))
    return project, expected, bad


def _run_once(project: Path, ledger: Path, engine: FakeEngine, **kw: Any) -> Streamer:
    streamer = Streamer(fast_config(project, ledger, engine.endpoint, once=True, max_bad_attempts=2, **kw))
    errors: list[BaseException] = []

    def target() -> None:
        try:
            streamer.run()
        except BaseException as exc:  # surfaced below: the daemon must not die
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(30.0)
    assert not thread.is_alive(), "the streamer did not finish"
    assert not errors, f"the streamer died: {errors[0]!r}"
    return streamer


def _gauge(streamer: Streamer, name: str, **labels: str) -> float:
    value = streamer.metrics.registry.get_sample_value(name, {"session": SESSION, **labels})
    return 0.0 if value is None else float(value)


def test_the_four_loop_killers_are_quarantined_and_the_rest_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    project, expected, bad = _poisoned_project(tmp_path)
    ledger_path = tmp_path / "ledger.sqlite"
    with FakeEngine(free_port()) as engine, caplog.at_level(logging.INFO, logger="otf2d.streamer"):
        streamer = _run_once(project, ledger_path, engine)
    assert set(engine.keys) == expected and max(engine.keys.values()) == 1
    # the Latin-1 file was read and its particles delivered, with a printable provenance on the wire
    sources = {h["source"] for h in engine.headers}
    assert f"{MOVIES}/{LATIN1_SHOWN}" in sources
    ledger = Ledger(ledger_path, session=SESSION)
    try:
        quarantined = dict(ledger.quarantined())
        assert set(quarantined) == {str(bad["bigindex"]), str(bad["scalar"]), str(bad["shift3"])}
        assert "99999999999999999999" in quarantined[str(bad["bigindex"])]
        assert "blob/shape has shape scalar" in quarantined[str(bad["scalar"])]
        assert "alignments2D/shift has shape (3,)" in quarantined[str(bad["shift3"])]
        assert ledger.quarantined_by_reason() == {"out_of_range": 1, "invalid": 2}
        assert ledger.rejected_by_reason() == {"blank": 2}
        latin1 = ledger.file(str(bad["latin1"]))
        assert latin1 is not None and latin1.path == str(bad["latin1"]) and latin1.state == FileState.ACKED
    finally:
        ledger.close()
    raw = sqlite3.connect(ledger_path)
    stored = raw.execute("SELECT path FROM files WHERE typeof(path) = 'blob'").fetchall()
    raw.close()
    assert stored == [(os.fsencode(bad["latin1"]),)]  # the name's own bytes, losslessly
    # /metrics: quarantined files by reason, rejected particles by reason
    assert _gauge(streamer, "otf2d_streamer_quarantined_files", reason="out_of_range") == 1
    assert _gauge(streamer, "otf2d_streamer_quarantined_files", reason="invalid") == 2
    assert _gauge(streamer, "otf2d_streamer_quarantined_files", reason="unexpected_error") == 0
    assert _gauge(streamer, "otf2d_streamer_particles_rejected_total", reason="blank") == 2
    assert _gauge(streamer, "otf2d_streamer_files_quarantined_total") == 3
    # `otf2d stream` output: each quarantine as it happens, and the list on the way out
    assert "mic_bigindex_extract.star: quarantined (out_of_range)" in caplog.text
    assert "3 file(s) quarantined (invalid 2, out_of_range 1)" in caplog.text
    assert LATIN1_SHOWN in caplog.text


def test_a_quarantined_file_is_read_again_only_when_it_changes(tmp_path: Path) -> None:
    project, expected, bad = _poisoned_project(tmp_path)
    ledger_path = tmp_path / "ledger.sqlite"
    with FakeEngine(free_port()) as engine:
        _run_once(project, ledger_path, engine)
        n_messages = engine.n_messages
        again = _run_once(project, ledger_path, engine)  # a restart: nothing is read again
        assert engine.n_messages == n_messages
        assert _gauge(again, "otf2d_streamer_files_quarantined_total") == 0
        assert _gauge(again, "otf2d_streamer_quarantined_files", reason="invalid") == 2
        # the scalar-shape .cs is fixed (rewritten): it changes, so it is read again, and its
        # 4 particles (already delivered through mic_00001's _extract.star) are not sent twice
        write_cs(bad["scalar"], _cs_fields(4, f"{MOVIES}/mic_00001.mrcs"))
        old = time.time() - 60
        os.utime(bad["scalar"], (old, old))
        fixed = _run_once(project, ledger_path, engine)
        assert _gauge(fixed, "otf2d_streamer_quarantined_files", reason="invalid") == 1
    assert set(engine.keys) == expected and max(engine.keys.values()) == 1
    ledger = Ledger(ledger_path, session=SESSION)
    try:
        record = ledger.file(str(bad["scalar"]))
        assert record is not None and record.state == FileState.ACKED
    finally:
        ledger.close()


def test_an_unexpected_reader_failure_quarantines_only_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a reader (any exception type) costs one file, never the daemon."""
    project = tmp_path / "project"
    simulate(project, n_particles=40, n_micrographs=2)
    real_read = gate_module.read_particle_table

    def flaky(path: Any, **kw: Any) -> Any:
        if str(path).endswith("mic_00001_extract.star"):
            raise ZeroDivisionError("a reader bug")
        return real_read(path, **kw)

    monkeypatch.setattr(gate_module, "read_particle_table", flaky)
    with FakeEngine(free_port()) as engine:
        streamer = _run_once(project, tmp_path / "ledger.sqlite", engine, particles_star_interval_s=3600.0)
    assert _gauge(streamer, "otf2d_streamer_quarantined_files", reason="unexpected_error") >= 1
    ledger = Ledger(tmp_path / "ledger.sqlite", session=SESSION)
    try:
        reasons = dict(ledger.quarantined())
    finally:
        ledger.close()
    [reason] = [r for p, r in reasons.items() if p.endswith("mic_00001_extract.star")]
    assert "ZeroDivisionError while reading it: a reader bug" in reason
    assert engine.n_keys() == 40  # mic_00002's own file, and particles.star for the rest


def test_ledger_stores_non_utf8_names_losslessly(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    name = Path(os.fsdecode(os.fsencode(directory) + b"/" + LATIN1_NAME))
    name.write_text("x\n")
    ledger = Ledger(tmp_path / "l.sqlite", session=SESSION)
    st = name.stat()
    assert ledger.observe(str(name), "extract", st.st_size, st.st_mtime_ns, now=0.0)
    ledger.quarantine(str(name), f"cannot read {name}", code="invalid", size=st.st_size, mtime_ns=st.st_mtime_ns)
    ledger.close()
    reopened = Ledger(tmp_path / "l.sqlite", session=SESSION)
    [(path, reason)] = reopened.quarantined()
    assert path == str(name) and Path(path).read_text() == "x\n"  # the same file opens again
    assert LATIN1_SHOWN in reason  # printable
    # the same version is not read again; a changed one is
    assert not reopened.observe(str(name), "extract", st.st_size, st.st_mtime_ns, now=1.0)
    assert reopened.file(str(name)).state == FileState.QUARANTINED  # type: ignore[union-attr]
    assert reopened.observe(str(name), "extract", st.st_size, st.st_mtime_ns + 1, now=2.0)
    assert reopened.file(str(name)).state == FileState.SEEN  # type: ignore[union-attr]
    reopened.close()


def test_star_caught_mid_write_waits_and_is_never_parsed(tmp_path: Path) -> None:
    """A metadata file cut inside a number waits like a growing stack; read in full once complete."""
    project = tmp_path / "project"
    simulate(project, n_particles=20, n_micrographs=1)
    star = project / MOVIES / "mic_00001_extract.star"
    full = star.read_bytes()
    star.write_bytes(full[: len(full) - 20])  # the last row ends inside a number
    ledger = Ledger(tmp_path / "l.sqlite", session=SESSION)
    gate = Gate(GateConfig(session=SESSION, roots=(project,), retry_base_s=0.01), ledger, OpticsCache(tmp_path / "c"))
    st = star.stat()
    ledger.observe(str(star), str(file_kind(star)), st.st_size, st.st_mtime_ns, now=time.time())
    for _ in range(3):
        record = ledger.file(str(star))
        assert record is not None
        outcome = gate.process(record, max(time.time(), record.next_try))
        assert outcome.action == "waiting" and "cut short" in outcome.reason
    assert ledger.to_send(set(), 10) == []
    star.write_bytes(full)
    record = ledger.file(str(star))
    assert record is not None and gate.process(record, max(time.time(), record.next_try)).action == "planned"
    assert sum(len(b.batch) for b in ledger.to_send(set(), 10)) == 20
    ledger.close()


def test_a_project_in_a_latin1_directory_is_delivered(tmp_path: Path) -> None:
    """Directory names that are not UTF-8 (an SMB share written from Windows) all the way through."""
    project = Path(os.fsdecode(os.fsencode(tmp_path) + b"/grille_\xe9t\xe9"))
    simulate(project, n_particles=40, n_micrographs=2)
    with FakeEngine(free_port()) as engine:
        streamer = _run_once(project, tmp_path / "ledger.sqlite", engine)
    assert set(engine.keys) == truth_keys(project) and max(engine.keys.values()) == 1
    assert _gauge(streamer, "otf2d_streamer_files_quarantined_total") == 0
