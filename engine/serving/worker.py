"""The worker thread: folds every session's new journal particles into its classes.

One thread for the whole engine, so the classifier math never competes with itself for the
device. Each round it serves the sessions in turn:

1. a session collecting particles is initialised once ``K × batch_size_per_class`` are journaled;
2. a streaming session folds its next journal particles (everything pending, at most
   ``max_step_particles``, so a busy engine folds big batches and an idle one folds each batch as
   it arrives);
3. checkpoints and snapshots fall due every N particles or T seconds, or on request;
4. only when no session has anything to fold, one piece of a session's reclassification: every
   particle folded so far classified from scratch as ``otf2d classify`` does, whose classes replace
   the streaming ones when it is done (``otf2d.engine.serving.folding``);
5. after a checkpoint, and in a round with nothing to fold, freed heap memory is handed back to the
   OS (:class:`otf2d.engine.resources.heap.HeapTrimmer`, at most once per ``heap_trim_seconds``), so that the
   engine's resident size follows what it holds rather than the high-water mark of the last burst.

The server thread calls :meth:`Worker.notify` after each durable append; control requests
(snapshot, checkpoint) are queued and served between steps. :meth:`Worker.stop` folds what is
pending for at most ``drain_timeout_s`` (a step under way is finished first), checkpoints every
session and returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from otf2d.core.snapshot import ClassSnapshot, ParticleAssignments
from otf2d.engine.resources.heap import HeapTrimmer
from otf2d.engine.serving.classifier_port import ClassifierFactory
from otf2d.engine.serving.folding import Phase, SessionFolder
from otf2d.engine.serving.metrics import EngineMetrics
from otf2d.engine.serving.problem_log import ProblemLog
from otf2d.engine.serving.session import Session
from otf2d.engine.serving.snapshot_writer import SnapshotJob, SnapshotWriter
from otf2d.engine.storage.disk import DiskGuard, is_disk_full
from otf2d.engine.storage.journal import JournalSlice

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How many recent file → classified latencies are kept for the status reply.
RECENT_LATENCIES = 5000


@dataclass(frozen=True)
class WorkerConfig:
    """Step sizes and cadences.

    Attributes
    ----------
    max_step_particles
        Most particles folded in one step.
    checkpoint_every, checkpoint_seconds
        Checkpoint after this many newly folded particles, or this long after the last
        checkpoint if anything was folded since (0 disables the trigger).
    snapshot_every, snapshot_seconds
        The same for snapshots.
    snapshot_min_seconds
        The particle-count trigger of snapshots waits at least this long after the last one: a
        snapshot rewrites every particle's assignment (seconds for 10⁵ particles), and a busy
        engine folding 2,000 particles every few seconds would otherwise write them back to back.
    revisit
        Whether idle time is used to reclassify the folded particles from scratch (the classes then
        become those of ``otf2d classify`` on the same particles). With it, the first classes come
        from the classifier's quick start (seconds); without it, from the full initial schedule.
    heap_trim_seconds
        Shortest interval between two trims of the heap (:mod:`otf2d.engine.resources.heap`) after checkpoints
        and in rounds with nothing to fold; 0 disables them.
    retry_seconds
        Wait before a failed checkpoint is tried again, and before a failed snapshot is written again.
    """

    max_step_particles: int = 2048
    checkpoint_every: int = 2000
    checkpoint_seconds: float = 60.0
    snapshot_every: int = 2000
    snapshot_seconds: float = 30.0
    snapshot_min_seconds: float = 10.0
    revisit: bool = True
    heap_trim_seconds: float = 10.0
    retry_seconds: float = 30.0


def _due(done: int, every: int, elapsed_s: float, seconds: float) -> bool:
    if done <= 0:
        return False
    return (every > 0 and done >= every) or (seconds > 0 and elapsed_s >= seconds)


class Worker:
    """The folding thread (see the module docstring)."""

    def __init__(
        self,
        config: WorkerConfig,
        factory: ClassifierFactory,
        device: torch.device,
        metrics: EngineMetrics,
        snapshots: SnapshotWriter,
    ) -> None:
        self.config = config
        self.factory = factory
        self.device = device
        self.metrics = metrics
        self.snapshots = snapshots
        #: Shared with ingest: a full disk pauses folding, checkpoints and snapshots.
        self.disk = DiskGuard()
        self.problems = ProblemLog(log)
        self._folders: dict[str, SessionFolder] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(threading.Lock())
        self._signalled = False
        self._requests: list[tuple[str, str]] = []
        self._calls: list[tuple[Callable[[], Any], Future[Any]]] = []
        self._finished = False
        self._stopping = threading.Event()
        self._drain_deadline = 0.0
        self._thread = threading.Thread(target=self._run, name="otf2d-worker", daemon=True)
        self.busy_seconds = 0.0
        self._idle_turn = 0
        #: file → classified latencies (s) of the most recently folded particles
        self.recent_latencies: deque[float] = deque(maxlen=RECENT_LATENCIES)
        self.heap = HeapTrimmer(config.heap_trim_seconds)

    # ------------------------------------------------------------------ called from other threads

    def add_session(self, session: Session) -> SessionFolder:
        """Take ``session`` on, restoring its checkpoint if it has one."""
        folder = SessionFolder(session, self.factory, self.device)
        folder.restore()
        with self._lock:
            self._folders[session.name] = folder
        self.notify()
        return folder

    def folder(self, name: str) -> SessionFolder | None:
        """The folding state of session ``name``."""
        with self._lock:
            return self._folders.get(name)

    def folders(self) -> list[SessionFolder]:
        """Every session's folding state."""
        with self._lock:
            return list(self._folders.values())

    def notify(self) -> None:
        """New particles were journaled (or a flag changed): look again."""
        with self._wake:
            self._signalled = True
            self._wake.notify()

    def request(self, session: str, what: str) -> None:
        """Queue ``"snapshot"`` or ``"checkpoint"`` of ``session`` for the next pause between steps."""
        with self._lock:
            self._requests.append((session, what))
        self.notify()

    def queue_depth(self) -> int:
        """Particles journaled and not folded in, over every session."""
        return sum(f.session.journal.count - f.consumed for f in self.folders())

    def checkpoint_age(self) -> float:
        """Seconds since the least recent checkpoint of a session."""
        folders = self.folders()
        return time.time() - min(f.checkpoint_time for f in folders) if folders else 0.0

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, drain_timeout_s: float = 20.0, join_timeout_s: float = 600.0) -> bool:
        """Fold what is pending (at most ``drain_timeout_s``), checkpoint every session, end the thread.

        Returns
        -------
        bool
            The thread ended.
        """
        self._drain_deadline = time.monotonic() + drain_timeout_s
        self._stopping.set()
        self.notify()
        self._thread.join(join_timeout_s)
        if not self._thread.is_alive():
            self._finish()
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                worked = self._round()
                if not worked:
                    self._wait(0.5)
            self._drain()
        except Exception:  # pragma: no cover - a bug in the worker itself: log loudly, keep ingest alive
            log.exception("the worker thread died")
        finally:
            self._finish()

    def _wait(self, timeout_s: float) -> None:
        with self._wake:
            if not self._signalled:
                self._wake.wait(timeout_s)
            self._signalled = False

    def _round(self) -> bool:
        """One pass over the sessions; whether anything was done (nothing but calls while the disk is full)."""
        if self.disk.paused():
            return self._serve_calls()
        worked = self._serve_requests()
        folded = False
        for folder in self.folders():
            if self._stopping.is_set():
                break
            if folder.has_unstored and not self._flush(folder):
                continue
            if folder.has_work():
                self._step(folder)
                folded = True
            self._cadence(folder)
        if not folded and not self._stopping.is_set():
            self.heap.maybe_trim()  # nothing to fold: return what the last steps and writes freed
        worked = worked or folded
        if not worked and self.config.revisit and not self._stopping.is_set():
            idle = self._next_idle_folder()
            if idle is not None:
                self._idle_step(idle)
                worked = True
        return worked

    def _step(self, folder: SessionFolder) -> None:
        start = time.monotonic()
        high_water = folder.high_water
        try:
            part = (
                folder.initialise(quick=self.config.revisit)
                if folder.ready_to_initialise()
                else folder.fold(self.config.max_step_particles)
            )
        except Exception as exc:
            if is_disk_full(exc):
                self.disk.trip(exc, f"folding session {folder.name}")
            else:
                folder.fail(exc)
            return
        self.disk.clear()
        seconds = time.monotonic() - start
        self.busy_seconds += seconds
        self.heap.note_work()
        self._observe(part, seconds, high_water)

    def _flush(self, folder: SessionFolder) -> bool:
        """Store the judgements a full disk held back; whether the folder may go on."""
        try:
            folder.flush_judgements()
        except Exception as exc:
            if is_disk_full(exc):
                self.disk.trip(exc, f"storing the judgements of session {folder.name}")
            else:
                folder.fail(exc)
            return False
        self.disk.clear()
        return True

    def _observe(self, part: JournalSlice, seconds: float, high_water: int) -> None:
        """Step duration; count and latency of the particles folded for the first time (not those folded
        again into the classes of a reclassification: they were counted when first folded)."""
        self.metrics.step_duration.observe(seconds)
        fresh = part.seqs >= high_water
        self.metrics.particles_classified.inc(int(fresh.sum()))
        latencies = np.maximum(time.time() - part.file_ready_time[fresh], 0.0).tolist()
        for value in latencies:
            self.metrics.latency.observe(value)
        self.recent_latencies.extend(latencies)

    def _next_idle_folder(self) -> SessionFolder | None:
        """The session whose reclassification goes on, else the next one (in turn) that wants one.

        One reclassification at a time: each holds its session's prepared particles (up to 2 GiB), and
        finishing one before starting the next gives every session its turn."""
        folders = [f for f in self.folders() if f.wants_idle_work()]
        for folder in folders:
            if folder.reclassification is not None:
                return folder
        if not folders:
            return None
        self._idle_turn += 1
        return folders[self._idle_turn % len(folders)]

    def _idle_step(self, folder: SessionFolder) -> None:
        start = time.monotonic()
        try:
            n = folder.idle_step()
        except Exception as exc:
            if is_disk_full(exc):
                self.disk.trip(exc, f"reclassifying session {folder.name}")
            else:
                folder.fail(exc)
            return
        self.busy_seconds += time.monotonic() - start
        self.heap.note_work()
        self.metrics.particles_revisited.inc(n)

    def _cadence(self, folder: SessionFolder) -> None:
        if folder.phase is not Phase.STREAMING:
            return
        now = time.time()
        cfg = self.config
        if now >= folder.checkpoint_retry_at and _due(
            folder.consumed - folder.checkpoint_consumed,
            cfg.checkpoint_every,
            now - folder.checkpoint_time,
            cfg.checkpoint_seconds,
        ):
            self._checkpoint(folder)
        if folder.refolding:
            return  # the stored assignments mix the old classes and the reclassified ones until then
        if self.snapshots.errors.get(folder.name) and now - folder.snapshot_time >= cfg.retry_seconds:
            self._snapshot(folder)  # the last one failed (a full disk, ...): try again
        folded = folder.consumed - folder.snapshot_consumed
        elapsed = now - folder.snapshot_time
        by_count = _due(folded, cfg.snapshot_every, 0.0, 0.0) and elapsed >= cfg.snapshot_min_seconds
        if (
            by_count
            or _due(folded, 0, elapsed, cfg.snapshot_seconds)
            or (folded == 0 and _due(folder.judged_since_snapshot, 0, elapsed, cfg.snapshot_seconds))
        ):
            self._snapshot(folder)

    def _serve_requests(self) -> bool:
        called = self._serve_calls()
        with self._lock:
            requests, self._requests = self._requests, []
        for name, what in requests:
            folder = self.folder(name)
            if folder is None:
                continue
            if what == "checkpoint":
                self._checkpoint(folder)
            elif what == "snapshot":
                self._snapshot(folder)
        return bool(requests) or called

    def _checkpoint(self, folder: SessionFolder) -> None:
        start = time.monotonic()
        try:
            size = folder.checkpoint()
        except Exception as exc:
            folder.checkpoint_retry_at = time.time() + self.config.retry_seconds
            if is_disk_full(exc):
                self.disk.trip(exc, f"checkpoint of session {folder.name}")
            else:
                self.problems.report(
                    logging.ERROR,
                    f"checkpoint {type(exc).__name__}",
                    f"session {folder.name}: checkpoint failed (the previous one stays; retried in "
                    f"{self.config.retry_seconds:g} s): {exc}",
                    traceback=True,
                )
            return
        folder.checkpoint_retry_at = 0.0
        self.disk.clear()
        self.heap.note_work()
        self.heap.maybe_trim()
        if size:
            log.info(
                "session %s: checkpoint at %d particles (%.1f MB, %.2f s)",
                folder.name,
                folder.consumed,
                size / 1e6,
                time.monotonic() - start,
            )

    def _snapshot(self, folder: SessionFolder) -> None:
        if folder.classifier is None:
            return
        iteration = folder.begin_snapshot()

        def build(particles: ParticleAssignments) -> Future[ClassSnapshot]:
            return self.call(lambda: folder.snapshot(particles, iteration))

        self.snapshots.submit(SnapshotJob(folder.session, iteration, build, time.time()))

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the worker thread between two steps; its result comes in the future.

        After the worker has stopped the future fails at once with ``RuntimeError``.
        """
        future: Future[T] = Future()
        with self._lock:
            if not self._finished:
                self._calls.append((fn, future))
            else:
                future.set_exception(RuntimeError("the worker has stopped"))
                return future
        self.notify()
        return future

    def _serve_calls(self) -> bool:
        with self._lock:
            calls, self._calls = self._calls, []
        for fn, future in calls:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)
        return bool(calls)

    def _finish(self) -> None:
        with self._lock:
            self._finished = True
            calls, self._calls = self._calls, []
        for _, future in calls:
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError("the worker has stopped"))

    def _drain(self) -> None:
        """Fold pending particles until done or the deadline, then checkpoint everything.

        Initialisations are not started while draining (they can take minutes); a session still
        collecting initialises after the restart.
        """
        while time.monotonic() < self._drain_deadline:
            busy = [f for f in self.folders() if f.has_work() and f.phase is Phase.STREAMING]
            if not busy:
                break
            for folder in busy:
                self._step(folder)
        self._serve_requests()
        for folder in self.folders():
            self._checkpoint(folder)
        log.info("worker stopped; %d particle(s) left to fold after restart", self.queue_depth())

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per-session folding status."""
        return {f.name: f.describe() for f in self.folders()}

    def latency_quantiles(self) -> dict[str, float | None]:
        """p50 / p95 / max of the recent file → classified latencies, seconds (``None`` before any)."""
        values = np.array(list(self.recent_latencies), dtype=np.float64)  # list(): one C-level copy
        if len(values) == 0:
            return {"p50_s": None, "p95_s": None, "max_s": None, "n": 0}
        p50, p95 = np.quantile(values, [0.5, 0.95]).tolist()
        return {"p50_s": p50, "p95_s": p95, "max_s": float(values.max()), "n": len(values)}


__all__ = ["Worker", "WorkerConfig"]
