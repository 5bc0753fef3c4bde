"""Handing freed heap back to the OS (otf2d.engine.resources.heap): real RSS on glibc, a no-op where libc lacks
malloc_trim, and the worker trimming once it has nothing to fold."""

from __future__ import annotations

import ctypes
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from engine_helpers import make_batch

from otf2d.core.config import Class2DParams
from otf2d.core.errors import ConfigError
from otf2d.core.particles import ParticleBatch
from otf2d.core.snapshot import AssignmentRecord, ClassSnapshot, OpticsGroup, ParticleAssignments
from otf2d.engine.em.driver import ParticleSource
from otf2d.engine.resources import heap
from otf2d.engine.resources.heap import (
    MAX_MMAP_THRESHOLD_BYTES,
    HeapTrimmer,
    malloc_trim_function,
    set_mmap_threshold,
    trim_heap,
)
from otf2d.engine.serving.classifier_port import Reclassification
from otf2d.engine.serving.cli import apply_mmap_threshold
from otf2d.engine.serving.metrics import EngineMetrics
from otf2d.engine.serving.session import Session
from otf2d.engine.serving.snapshot_writer import SnapshotWriter
from otf2d.engine.serving.worker import Worker, WorkerConfig
from otf2d.engine.storage.journal import ASSIGNMENT_COLUMNS

BLOCK = 64 * 1024  # below glibc's mmap threshold: the blocks come from the arena, not from mmap
N_BLOCKS = 800  # ~50 MB


def _rss_anon_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or not Path("/proc/self/status").exists():
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - the attribute lookup is the check
    except (OSError, AttributeError):
        return None
    return libc


def test_trim_returns_freed_arena_pages_to_the_os() -> None:
    libc = _glibc()
    if libc is None:
        pytest.skip("needs Linux with glibc (malloc_trim and /proc/self/status)")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    trim_heap()  # free pages left resident by earlier tests would otherwise take the blocks without growing RSS
    before = _rss_anon_bytes()
    blocks = [libc.malloc(BLOCK) for _ in range(N_BLOCKS)]
    pin = libc.malloc(BLOCK)  # allocated last: it keeps the freed blocks below it from being trimmed at free()
    assert all(blocks) and pin
    try:
        for block in blocks:
            ctypes.memset(block, 1, BLOCK)  # touch every page: now resident
        resident = _rss_anon_bytes()
        assert resident - before > 0.8 * BLOCK * N_BLOCKS
        for block in blocks:
            libc.free(block)
        kept = _rss_anon_bytes()
        # glibc keeps the freed pages (nothing is returned while the pinned block sits above them)
        assert kept - before > 0.5 * BLOCK * N_BLOCKS
        assert trim_heap() is True
        released = kept - _rss_anon_bytes()
        assert released > 0.5 * BLOCK * N_BLOCKS
    finally:
        libc.free(pin)


def test_without_malloc_trim_every_trim_is_a_logged_no_op(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class NoTrimLibc:  # a C library without malloc_trim (musl, macOS)
        def __init__(self, name: str | None) -> None:
            self.name = name

        def __getattr__(self, attr: str) -> object:
            raise AttributeError(f"{self.name}: undefined symbol: {attr}")

    malloc_trim_function.cache_clear()
    monkeypatch.setattr(heap.ctypes, "CDLL", NoTrimLibc)
    try:
        with caplog.at_level(logging.DEBUG, logger="otf2d.engine.resources.heap"):
            assert malloc_trim_function() is None
            assert trim_heap() is False
            assert trim_heap(collect=True) is False
        assert sum("no malloc_trim" in r.getMessage() for r in caplog.records) == 1  # looked up once
        trimmer = HeapTrimmer(0.001)
        trimmer.note_work()
        assert trimmer.trim() is False
        assert trimmer.trims == 0
    finally:
        malloc_trim_function.cache_clear()


def test_a_c_library_that_cannot_be_loaded_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    def unloadable(name: str | None) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    malloc_trim_function.cache_clear()
    monkeypatch.setattr(heap.ctypes, "CDLL", unloadable)
    try:
        assert trim_heap() is False
    finally:
        malloc_trim_function.cache_clear()


def test_trimmer_trims_only_after_work_and_at_most_once_per_interval() -> None:
    now = [100.0]
    calls: list[float] = []

    def fake_trim() -> bool:
        calls.append(now[0])
        return True

    trimmer = HeapTrimmer(10.0, clock=lambda: now[0], trim=fake_trim)
    now[0] = 200.0
    assert trimmer.maybe_trim() is False  # nothing done since the start: nothing to give back
    trimmer.note_work()
    assert trimmer.maybe_trim() is True
    trimmer.note_work()
    now[0] = 205.0
    assert trimmer.maybe_trim() is False  # 5 s after the last trim
    now[0] = 210.0
    assert trimmer.maybe_trim() is True
    now[0] = 300.0
    assert trimmer.maybe_trim() is False  # idle since: no trim again and again
    assert calls == [200.0, 210.0]
    assert trimmer.trims == 2
    assert trimmer.trim() is True  # an explicit trim ignores the interval
    disabled = HeapTrimmer(0.0, clock=lambda: now[0], trim=fake_trim)
    disabled.note_work()
    now[0] = 1000.0
    assert disabled.maybe_trim() is False


class _ConstantClassifier:
    """A classifier port that puts every particle in class 0 (the worker's plumbing is under test)."""

    def _judgements(self, batch: ParticleBatch) -> AssignmentRecord:
        n = len(batch)
        return AssignmentRecord(
            **{
                c: np.zeros(n, dtype=np.int64 if c in ("class_index", "n_significant") else np.float64)
                for c in ASSIGNMENT_COLUMNS
            }
        )

    def initialise(self, batch: ParticleBatch, *, quick: bool = False) -> AssignmentRecord:
        return self._judgements(batch)

    def fold(self, batch: ParticleBatch) -> AssignmentRecord:
        return self._judgements(batch)

    def judge(self, batch: ParticleBatch) -> AssignmentRecord:
        return self._judgements(batch)

    def reclassify(self, particles: ParticleSource) -> Reclassification:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {"n": 0}

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def snapshot(self, particles: ParticleAssignments, *, iteration: int, optics: list[OpticsGroup]) -> ClassSnapshot:
        raise NotImplementedError


def test_the_worker_trims_once_it_has_nothing_to_fold_and_not_again_while_idle(tmp_path: Path) -> None:
    params = Class2DParams(n_classes=2, batch_size_per_class=5)
    session = Session.create(tmp_path / "sessions", "s", params)
    config = WorkerConfig(
        max_step_particles=16,
        revisit=False,
        heap_trim_seconds=0.05,
        checkpoint_every=0,
        checkpoint_seconds=0,
        snapshot_every=0,
        snapshot_seconds=0,
    )
    metrics = EngineMetrics()
    worker = Worker(
        config,
        lambda *_: _ConstantClassifier(),
        torch.device("cpu"),
        metrics,
        SnapshotWriter(lambda *a, **k: None, metrics),
    )
    pending_at_trim: list[int] = []

    def counting_trim() -> bool:
        pending_at_trim.append(worker.queue_depth())
        return True

    worker.heap = HeapTrimmer(config.heap_trim_seconds, trim=counting_trim)
    for m in range(4):
        batch = make_batch("s", m, 20)
        header = {"msg_id": f"m{m}", "file_ready_time": time.time(), "source": f"mic{m}.star"}
        session.journal.append_many([(header, batch)])
    worker.add_session(session)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while (worker.queue_depth() or not pending_at_trim) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.folder("s") is not None and worker.folder("s").consumed == 80  # type: ignore[union-attr]
        assert pending_at_trim and pending_at_trim[-1] == 0  # trimmed once everything was folded
        trims = len(pending_at_trim)
        for _ in range(5):  # idle rounds, each after more than an interval: nothing done, nothing to trim
            worker.notify()
            time.sleep(0.1)
        assert len(pending_at_trim) == trims
    finally:
        assert worker.stop(drain_timeout_s=5)
        session.journal.close()
    assert worker.heap.trims == len(pending_at_trim) >= 1


_MMAP_PROBE = """
import ctypes, sys
from pathlib import Path
from otf2d.engine.resources.heap import set_mmap_threshold

def anon():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fixed":
    assert set_mmap_threshold(1 << 20)
size, count = 3 << 19, 40  # 1.5 MiB blocks: above the fixed threshold, below glibc's dynamic one once raised
warm = libc.malloc(16 << 20)  # freeing a 16 MiB mapping raises glibc's dynamic threshold to 16 MiB
libc.free(warm)
before = anon()
blocks = [libc.malloc(size) for _ in range(count)]
pin = libc.malloc(4096)  # a small live block above them keeps the heap from shrinking at free()
for b in blocks:
    ctypes.memset(b, 1, size)
for b in blocks:
    libc.free(b)
print((anon() - before) / (size * count))
"""


@pytest.mark.parametrize("mode", ["dynamic", "fixed"])
def test_a_fixed_mmap_threshold_returns_big_blocks_at_free(mode: str) -> None:
    if _glibc() is None:
        pytest.skip("needs Linux with glibc (mallopt and /proc/self/status)")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _MMAP_PROBE, mode], capture_output=True, text=True, cwd=root, timeout=60, check=True
    )
    kept = float(done.stdout.strip())  # share of the freed blocks still resident
    if mode == "dynamic":
        assert kept > 0.5  # glibc's raised threshold put them in the heap, which keeps them
    else:
        assert kept < 0.1  # each had its own mapping, gone at free()


def test_mmap_threshold_bounds() -> None:
    for bad in (0, -1, MAX_MMAP_THRESHOLD_BYTES + 1):
        with pytest.raises(ValueError, match="mmap threshold"):
            set_mmap_threshold(bad)


def test_engine_rejects_a_bad_mmap_threshold() -> None:
    with pytest.raises(ConfigError, match="--mmap-threshold-mb"):
        apply_mmap_threshold(-1.0)
    with pytest.raises(ConfigError, match="--mmap-threshold-mb"):
        apply_mmap_threshold(64.0)
