"""Writing snapshots in a background thread, so that neither ingest nor folding waits for disk.

The worker hands over a :class:`SnapshotJob`. This thread reads every particle's latest
assignment from the journal (the slow part, for hundreds of thousands of particles), asks the
worker to build the ``ClassSnapshot`` from the classes as they are (``job.build``: it runs on the
worker thread between two steps, and is quick), and calls the injected ``write`` function
(``otf2d.monitoring.snapshots.write_snapshot``; the engine's composition root passes it in). Jobs of
one session coalesce: a job waiting behind a slow write is replaced by a newer one. After a write,
snapshots older than the newest ``keep`` are deleted (``latest.json`` always names a complete one).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from otf2d.core.snapshot import ClassSnapshot, ParticleAssignments
from otf2d.engine.resources.heap import trim_heap
from otf2d.engine.serving.metrics import EngineMetrics
from otf2d.engine.serving.session import Session

log = logging.getLogger(__name__)

#: ``write(snapshot, out_dir, project_dir=..., session=...)``: returns anything (the paths written).
SnapshotWrite = Callable[..., Any]
#: ``listener(session_name, snapshot)``, called after a snapshot is on disk.
SnapshotListener = Callable[[str, ClassSnapshot], None]


@dataclass(frozen=True)
class SnapshotJob:
    """One snapshot to write: ``build(particles)`` makes it from the classes on the worker thread."""

    session: Session
    iteration: int
    build: Callable[[ParticleAssignments], Future[ClassSnapshot]]
    requested_at: float


@dataclass(frozen=True)
class SnapshotRecord:
    """What was written last for a session."""

    iteration: int
    written_at: float
    n_particles: int
    directory: str
    seconds: float
    #: particles per class (engine class numbers, not the snapshot's size order)
    class_counts: list[int]


def prune_snapshots(snapshot_dir: Path, newest: int, keep: int) -> int:
    """Delete the files of snapshots ``run_itNNN_*`` with ``NNN <= newest - keep``; returns how many."""
    removed = 0
    for path in snapshot_dir.glob("run_it*_*"):
        digits = path.name.removeprefix("run_it").split("_", 1)[0]
        if digits.isdigit() and int(digits) <= newest - keep:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


class SnapshotWriter:
    """A thread writing :class:`SnapshotJob` s with ``write``.

    Parameters
    ----------
    write
        ``otf2d.monitoring.snapshots.write_snapshot`` or anything with its signature.
    metrics
        Updated after each snapshot.
    keep
        Snapshots kept per session (older ones are deleted); 0 keeps all.
    build_timeout_s
        Longest wait for the worker to build a snapshot (it may be in a long initialisation).
    """

    def __init__(
        self, write: SnapshotWrite, metrics: EngineMetrics, *, keep: int = 5, build_timeout_s: float = 900.0
    ) -> None:
        self.write = write
        self.metrics = metrics
        self.keep = int(keep)
        self.build_timeout_s = build_timeout_s
        self._pending: dict[str, SnapshotJob] = {}
        self._lock = threading.Lock()
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otf2d-snapshots", daemon=True)
        self.records: dict[str, SnapshotRecord] = {}
        self.errors: dict[str, str] = {}
        self._busy = False
        self._listeners: list[SnapshotListener] = []

    def add_listener(self, listener: SnapshotListener) -> None:
        """Call ``listener(session_name, snapshot)`` after each snapshot written (on this thread).

        The monitoring components (junk scores, verdict, per-class metrics) hook in here; a listener
        that raises is logged and does not stop the writer.
        """
        self._listeners.append(listener)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def submit(self, job: SnapshotJob) -> None:
        """Queue ``job``, replacing a job of the same session that has not started."""
        with self._lock:
            self._pending[job.session.name] = job
        self._wake.put(None)

    def idle(self) -> bool:
        """Nothing queued and nothing being written."""
        with self._lock:
            return not self._pending and not self._busy

    def stop(self, timeout_s: float = 60.0) -> None:
        """Finish the queued jobs (up to ``timeout_s``) and stop the thread."""
        self._stop.set()
        self._wake.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _next(self) -> SnapshotJob | None:
        with self._lock:
            if not self._pending:
                self._busy = False
                return None
            name = next(iter(self._pending))
            self._busy = True
            return self._pending.pop(name)

    def _run(self) -> None:
        while True:
            job = self._next()
            if job is None:
                if self._stop.is_set():
                    return
                self._wake.get()
                continue
            try:
                self._write(job)
            except Exception as exc:  # a sink failure is logged and counted, never fatal
                log.exception("session %s: snapshot %d failed", job.session.name, job.iteration)
                self.errors[job.session.name] = f"{type(exc).__name__}: {exc}"

    def _write(self, job: SnapshotJob) -> None:
        start = time.monotonic()
        session = job.session
        particles = session.journal.assignments()
        snapshot = job.build(particles).result(timeout=self.build_timeout_s)
        counts = np.bincount(particles.class_index, minlength=snapshot.n_classes).tolist()
        parameters = {**snapshot.parameters, "session": session.name, "particles_journaled": session.journal.count}
        snapshot = dataclasses.replace(snapshot, parameters=parameters)
        self.write(snapshot, session.snapshot_dir, project_dir=session.project_dir, session=session.name)
        if self.keep > 0:
            prune_snapshots(session.snapshot_dir, snapshot.iteration, self.keep)
        now = time.time()
        seconds = time.monotonic() - start
        self.records[session.name] = SnapshotRecord(
            iteration=snapshot.iteration,
            written_at=now,
            n_particles=len(particles),
            directory=str(session.snapshot_dir),
            seconds=seconds,
            class_counts=[int(c) for c in counts],
        )
        self.errors.pop(session.name, None)
        self.metrics.snapshot_written(now)
        log.info(
            "session %s: snapshot %d written (%d particles, %.2f s)",
            session.name,
            snapshot.iteration,
            len(particles),
            seconds,
        )
        for listener in self._listeners:
            try:
                listener(session.name, snapshot)
            except Exception:
                log.exception("session %s: a snapshot listener failed", session.name)
        del particles, snapshot
        # The tables of a big snapshot (10⁵ particles: hundreds of MB, allocated and freed here)
        # would otherwise stay in this thread's malloc arena, and the resident size would ratchet up.
        trim_heap(collect=True)


__all__ = [
    "SnapshotJob",
    "SnapshotListener",
    "SnapshotRecord",
    "SnapshotWrite",
    "SnapshotWriter",
    "prune_snapshots",
]
