"""The streamer's parts without sockets: file kinds, observer choice, optics cache, ledger, gate, reload."""

from __future__ import annotations

import os
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from otf2d.core.errors import ConfigError
from otf2d.core.wire import CTF_FIELDS
from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.session import iter_session
from otf2d.streamer.gate import Gate, GateConfig, file_kind
from otf2d.streamer.ledger import BatchState, FileState, Ledger, PlannedBatch, particle_key
from otf2d.streamer.optics_source import OpticsCache, find_job_particles_star, optics_block_text
from otf2d.streamer.reload import load_planned
from otf2d.streamer.watcher import choose_observer, filesystem_type, scan

SESSION = "sess"


def simulate(out: Path, n_particles: int = 60, n_micrographs: int = 3, **kw: object) -> list[Path]:
    """Write a small session; returns the _extract.star paths."""
    config = SimulationConfig(n_particles=n_particles, n_micrographs=n_micrographs, box=16, seed=3, **kw)  # type: ignore[arg-type]
    return [r.extract_star_path for r in iter_session(config, out)]


def test_file_kind() -> None:
    assert file_kind("/a/b/mic_001_extract.star") == "extract"
    assert file_kind("Extract/job005/particles.star") == "particles"
    assert file_kind("J12/J12_passthrough_particles.cs") == "cs"
    for other in ("mic_001_extract.star.tmp", "particles.star.tmp", "x.mrcs", "run_data.star", "particles.star~"):
        assert file_kind(other) is None


def test_observer_choice_from_mounts(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        "server:/export /data nfs4 rw 0 0\n"
        "//nas/share /data/smb\\040share cifs rw 0 0\n"
        "sshfs#x /mnt/remote fuse.sshfs rw 0 0\n"
        "/dev/sdb1 /data/local xfs rw 0 0\n"
    )
    m = str(mounts)
    assert filesystem_type("/data/grid1", m) == "nfs4"
    assert filesystem_type("/data/smb share/x", m) == "cifs"
    assert filesystem_type("/data/local/x", m) == "xfs"
    assert filesystem_type("/home/user", m) == "ext4"
    assert choose_observer("/data/grid1", "auto", m) == "polling"
    assert choose_observer("/data/smb share/x", "auto", m) == "polling"
    assert choose_observer("/mnt/remote/a", "auto", m) == "polling"
    assert choose_observer("/data/local/x", "auto", m) == "inotify"
    assert choose_observer("/data/grid1", "inotify", m) == "inotify"
    assert choose_observer("/home", "polling", m) == "polling"
    with pytest.raises(ConfigError):
        choose_observer("/home", "magic", m)


def test_scan_finds_particle_files_only(tmp_path: Path) -> None:
    stars = simulate(tmp_path)
    found = scan(tmp_path)
    assert sorted(found) == sorted([*map(str, stars), str(tmp_path / "Extract/job005/particles.star")])


def test_optics_block_and_cache(tmp_path: Path) -> None:
    stars = simulate(tmp_path / "p")
    job_star = find_job_particles_star(stars[0], [tmp_path / "p"])
    assert job_star == tmp_path / "p/Extract/job005/particles.star"
    text = optics_block_text(job_star)
    assert text is not None and "rlnVoltage" in text and "rlnImageName" not in text
    cache = OpticsCache(tmp_path / "cache")
    copy = cache.optics_file(job_star)
    assert copy is not None
    optics = starfile.read(copy, always_dict=True)["optics"]
    full = starfile.read(job_star, always_dict=True)["optics"]
    assert float(optics["rlnVoltage"][0]) == float(full["rlnVoltage"][0]) == 300.0
    assert float(optics["rlnImagePixelSize"][0]) == float(full["rlnImagePixelSize"][0])
    assert cache.optics_file(job_star) == copy
    # no particles.star yet: nothing found (the search stops at the job directory)
    lonely = tmp_path / "q/Extract/job009/Movies/a_extract.star"
    lonely.parent.mkdir(parents=True)
    lonely.write_text("data_images\n")
    (tmp_path / "q/particles.star").write_text("data_optics\n")  # above the job dir: not ours
    assert find_job_particles_star(lonely, [tmp_path / "q"]) is None


def _planned(n: int, stack: str = "S/a.mrcs", start: int = 1) -> PlannedBatch:
    return PlannedBatch(
        stack_paths=[stack] * n,
        indices=list(range(start, start + n)),
        optics_groups=[1] * n,
        ctf=np.arange(n * 9, dtype=np.float64).reshape(n, 9),
        stack_files={stack: "/abs/" + stack},
        pixel_size_angstrom=1.5,
        source="S/a_extract.star",
        file_ready_time=123.0,
    )


def test_ledger_lifecycle_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path, session=SESSION)
    assert ledger.observe("/x/a_extract.star", "extract", 10, 1, now=100.0)
    assert not ledger.observe("/x/a_extract.star", "extract", 10, 1, now=101.0)  # unchanged
    assert [f.path for f in ledger.due_files(100.0)] == ["/x/a_extract.star"]
    ids = ledger.plan_file(
        "/x/a_extract.star", [_planned(3), _planned(2, start=4)], size=10, mtime_ns=1, n_particles=5, now=102.0
    )
    assert len(ids) == 2 and all(i.startswith(ledger.ledger_id + ":") for i in ids)
    assert ledger.file("/x/a_extract.star").state == FileState.QUEUED  # type: ignore[union-attr]
    assert ledger.known_keys([particle_key("S/a.mrcs", i) for i in range(1, 8)]) == {
        particle_key("S/a.mrcs", i) for i in range(1, 6)
    }
    first, second = ledger.to_send(set(), 10)
    np.testing.assert_array_equal(first.batch.ctf, _planned(3).ctf)
    assert first.batch.indices == [1, 2, 3] and second.batch.indices == [4, 5]
    ledger.mark_sent(first.seq, now=103.0)
    assert ledger.file("/x/a_extract.star").state == FileState.QUEUED  # type: ignore[union-attr]
    ledger.mark_sent(second.seq, now=103.0)
    assert ledger.file("/x/a_extract.star").state == FileState.SENT  # type: ignore[union-attr]
    assert ledger.mark_acked(first.seq, now=104.0)
    assert not ledger.mark_acked(first.seq, now=104.0)  # already final
    # read again with nothing new while a batch is still un-acknowledged: the file stays "sent"
    assert ledger.observe("/x/a_extract.star", "extract", 10, 5, now=104.5)
    assert ledger.plan_file("/x/a_extract.star", [], size=10, mtime_ns=5, n_particles=5, now=104.5) == []
    assert ledger.file("/x/a_extract.star").state == FileState.SENT  # type: ignore[union-attr]
    assert ledger.to_send({second.seq}, 10) == []
    ledger_id = ledger.ledger_id
    ledger.close()

    again = Ledger(path, session=SESSION)  # a restart: same scope, the sent batch comes back
    assert again.ledger_id == ledger_id
    back = again.to_send(set(), 10)
    assert [b.msg_id for b in back] == [ids[1]] and back[0].state == BatchState.SENT and back[0].attempts == 1
    assert again.seq_of(ids[1]) == second.seq and again.seq_of("other:1") is None
    assert again.mark_rejected(second.seq, "poison", now=105.0)
    assert again.file("/x/a_extract.star").state == FileState.REJECTED  # type: ignore[union-attr]
    assert again.dead_letters() == [(ids[1], "/x/a_extract.star", "poison")]
    counts = again.counts()
    assert counts["batches"]["acked"] == 1 and counts["particles"]["acked"] == 3
    assert counts["batches"]["rejected"] == 1 and counts["particle_keys"] == 5
    # a changed file is read again
    assert again.observe("/x/a_extract.star", "extract", 11, 6, now=106.0)
    assert again.file("/x/a_extract.star").state == FileState.SEEN  # type: ignore[union-attr]
    again.close()
    with pytest.raises(ConfigError, match="belongs to session"):
        Ledger(path, session="another")


def _gate(tmp_path: Path, ledger: Ledger, root: Path, **kw: object) -> Gate:
    config = GateConfig(session=SESSION, roots=(root,), retry_base_s=0.01, **kw)  # type: ignore[arg-type]
    return Gate(config, ledger, OpticsCache(tmp_path / "cache"))


def _observe(ledger: Ledger, path: Path) -> None:
    st = path.stat()
    ledger.observe(str(path), str(file_kind(path)), st.st_size, st.st_mtime_ns, now=time.time())


def _process(gate: Gate, ledger: Ledger, path: Path) -> str:
    record = ledger.file(str(path))
    assert record is not None
    return gate.process(record, max(time.time(), record.next_try)).action


def test_gate_plans_new_particles_once(tmp_path: Path) -> None:
    root = tmp_path / "p"
    stars = simulate(root)
    ledger = Ledger(tmp_path / "l.sqlite", session=SESSION)
    gate = _gate(tmp_path, ledger, root, batch_size=7)
    _observe(ledger, stars[0])
    outcome = gate.process(ledger.due_files(time.time())[0], time.time())
    assert outcome.action == "planned" and outcome.n_new == 20 and len(outcome.msg_ids) == 3  # 7 + 7 + 6
    job_star = root / "Extract/job005/particles.star"
    _observe(ledger, job_star)
    outcome = gate.process(ledger.file(str(job_star)), time.time())  # type: ignore[arg-type]
    assert outcome.n_particles == 60 and outcome.n_new == 40  # the first micrograph's 20 are known
    batches = ledger.to_send(set(), 100)
    keys = [particle_key(s, i) for b in batches for s, i in zip(b.batch.stack_paths, b.batch.indices, strict=True)]
    assert len(keys) == len(set(keys)) == 60
    assert batches[0].batch.source == "Extract/job005/Movies/mic_00001_extract.star"
    # CTF from the extract star + optics from the job's particles.star (cache), in wire order
    table = starfile.read(stars[0], always_dict=True)["images"]
    ctf = batches[0].batch.ctf
    np.testing.assert_allclose(ctf[:, CTF_FIELDS.index("defocus_u_angstrom")], table["rlnDefocusU"][:7])
    np.testing.assert_allclose(ctf[:, CTF_FIELDS.index("voltage_kv")], 300.0)
    np.testing.assert_allclose(ctf[:, CTF_FIELDS.index("spherical_aberration_mm")], 2.7)
    assert batches[0].batch.pixel_size_angstrom == pytest.approx(4.0)
    # reading the batch back gives exactly the stack's images (independent read with mrcfile)
    batch = load_planned(batches[0].batch, SESSION)
    with mrcfile.open(root / "Extract/job005/Movies/mic_00001.mrcs") as mrc:
        np.testing.assert_array_equal(batch.images, mrc.data[:7])
    assert batch.keys()[0].session == SESSION


def test_gate_waits_for_optics(tmp_path: Path) -> None:
    root = tmp_path / "p"
    stars = simulate(root, n_micrographs=2, n_particles=20)
    job_star = root / "Extract/job005/particles.star"
    hidden = job_star.with_name("hidden.star")
    os.replace(job_star, hidden)
    ledger = Ledger(tmp_path / "l.sqlite", session=SESSION)
    gate = _gate(tmp_path, ledger, root)
    _observe(ledger, stars[0])
    assert _process(gate, ledger, stars[0]) == "waiting"
    assert "optics" in (ledger.file(str(stars[0])).reason or "")  # type: ignore[union-attr]
    os.replace(hidden, job_star)
    assert _process(gate, ledger, stars[0]) == "planned"
    # explicit optics need no particles.star
    ledger2 = Ledger(tmp_path / "l2.sqlite", session=SESSION)
    gate2 = _gate(tmp_path, ledger2, root, voltage_kv=200.0, spherical_aberration_mm=2.0, amplitude_contrast=0.07)
    os.replace(job_star, hidden)
    _observe(ledger2, stars[1])
    assert _process(gate2, ledger2, stars[1]) == "planned"
    ctf = ledger2.to_send(set(), 1)[0].batch.ctf
    np.testing.assert_allclose(ctf[:, CTF_FIELDS.index("voltage_kv")], 200.0)


def test_gate_waits_for_incomplete_stack(tmp_path: Path) -> None:
    root = tmp_path / "p"
    stars = simulate(root, n_micrographs=1, n_particles=10)
    stack = root / "Extract/job005/Movies/mic_00001.mrcs"
    full = stack.read_bytes()
    stack.write_bytes(full[: len(full) - 100])  # truncated: the header promises more
    ledger = Ledger(tmp_path / "l.sqlite", session=SESSION)
    gate = _gate(tmp_path, ledger, root, incomplete_timeout_s=60.0)
    _observe(ledger, stars[0])
    for _ in range(4):  # never quarantined for being incomplete, however often it is tried
        assert _process(gate, ledger, stars[0]) == "waiting"
    record = ledger.file(str(stars[0]))
    assert record is not None and record.state == FileState.SEEN and "still being written" in (record.reason or "")
    assert ledger.to_send(set(), 10) == []
    # a short but valid stack (RELION mid-append: header says 4 images) also waits
    with pytest.warns(RuntimeWarning), mrcfile.open(stack, mode="r+", permissive=True) as mrc:
        data = np.frombuffer(full[1024:], dtype=np.float32).reshape(10, 16, 16)
        mrc.set_data(data[:4].copy())
    assert _process(gate, ledger, stars[0]) == "waiting"
    assert "needs index 10" in (ledger.file(str(stars[0])).reason or "")  # type: ignore[union-attr]
    stack.write_bytes(full)
    assert _process(gate, ledger, stars[0]) == "planned"
    assert sum(len(b.batch) for b in ledger.to_send(set(), 10)) == 10


def test_gate_quarantines_after_timeout(tmp_path: Path) -> None:
    root = tmp_path / "p"
    stars = simulate(root, n_micrographs=1, n_particles=10)
    stack = root / "Extract/job005/Movies/mic_00001.mrcs"
    stack.write_bytes(stack.read_bytes()[:-100])
    ledger = Ledger(tmp_path / "l.sqlite", session=SESSION)
    gate = _gate(tmp_path, ledger, root, incomplete_timeout_s=0.2)
    _observe(ledger, stars[0])
    assert _process(gate, ledger, stars[0]) == "waiting"
    time.sleep(0.3)
    assert _process(gate, ledger, stars[0]) == "quarantined"
    [(path, reason)] = ledger.quarantined()
    assert path == str(stars[0]) and "still not complete" in reason


@pytest.mark.parametrize("damage", ["garbage star", "nan pixels", "bad mode"])
def test_gate_quarantines_bad_content_after_retries(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "p"
    stars = simulate(root, n_micrographs=1, n_particles=10)
    stack = root / "Extract/job005/Movies/mic_00001.mrcs"
    if damage == "garbage star":
        stars[0].write_bytes(b"\x00\x01binary junk")
    elif damage == "nan pixels":
        with mrcfile.open(stack, mode="r+") as mrc:
            mrc.data[3, 2, 2] = np.nan
    else:  # an MRC mode no reader supports (header word 4)
        raw = bytearray(stack.read_bytes())
        raw[12:16] = np.int32(99).tobytes()
        stack.write_bytes(bytes(raw))
    ledger = Ledger(tmp_path / "l.sqlite", session=SESSION)
    gate = _gate(tmp_path, ledger, root, max_bad_attempts=3)
    _observe(ledger, stars[0])
    assert [_process(gate, ledger, stars[0]) for _ in range(3)] == ["retry", "retry", "quarantined"]
    [(_, reason)] = ledger.quarantined()
    expected = {"garbage star": "binary", "nan pixels": "NaN", "bad mode": "mode 99"}[damage]
    assert expected in reason and "after 3 reading(s)" in reason
    assert ledger.to_send(set(), 10) == []


def test_gate_settles_unknown_producers(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite", session=SESSION)
    gate = _gate(tmp_path, ledger, tmp_path, settle_s=0.3)
    cs = tmp_path / "J1_particles.cs"
    cs.write_bytes(b"x" * 10)
    _observe(ledger, cs)
    assert _process(gate, ledger, cs) == "waiting"  # too fresh
    assert (ledger.file(str(cs)).reason or "").startswith("settling")  # type: ignore[union-attr]
    cs.write_bytes(b"x" * 20)  # still growing
    assert _process(gate, ledger, cs) == "waiting"
    assert "changing" in (ledger.file(str(cs)).reason or "")  # type: ignore[union-attr]
    old = time.time() - 10
    os.utime(cs, (old, old))
    ledger.defer(str(cs), next_try=0.0, reason="", size=cs.stat().st_size, mtime_ns=cs.stat().st_mtime_ns)
    assert _process(gate, ledger, cs) == "retry"  # settled, read, and not a valid .cs: bad content
