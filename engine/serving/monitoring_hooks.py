"""Monitoring composed into the engine: junk scores and the verdict on every snapshot, rates, overrides.

The engine's composition root (:mod:`otf2d.engine.serving.cli`) builds one :class:`EngineMonitoring` and plugs it
into the service at three seams:

- **the snapshot write** (``EngineService(..., snapshot_write=monitoring.write_snapshot)``): each
  snapshot built by the worker first goes through :meth:`otf2d.monitoring.state.SessionMonitor.publish`
  (class quality, distinct views, rates, verdict), gets its effective junk scores
  (``ClassSnapshot.junk_score``, user overrides applied) and only then reaches
  ``otf2d.monitoring.snapshots.write_snapshot`` — so the RELION ``_model.star`` (``rlnPredictedClassScore``
  = 1 − junk score), the class-average ``.cs`` (``otf2d/junk_score``, ``otf2d/is_junk``,
  ``otf2d/override``) and the PNG gallery all carry the junk flags of the state the status page shows;
- **the counts over time**: a sampler thread records every session's classified count each
  ``sample_seconds`` (:meth:`SessionMonitor.record_classified`), from which the particle rates,
  the forecast and the verdict's rate criterion are computed;
- **a control kind** (``otf2d.core.wire.KIND_SET_CLASS_OVERRIDE``, :meth:`handle_override`): a user marks
  a class good or junk;
- **the lifecycle** (:mod:`otf2d.monitoring.lifecycle`): the sampler also feeds every session's
  received/classified counts to a :class:`SessionLifecycle` (open → idle → closed), exported as
  per-session counters and ``otf2d_session_state``; ``close_session`` (``otf2d close``) closes a
  session, which is checkpointed and snapshotted once more; the lifecycle is kept in
  ``<session>/lifecycle.json`` across restarts.

User overrides
--------------
A request names a class as the newest snapshot and its gallery number it (1-based, largest class
first). Classes are re-sorted by size at every snapshot, so the override is stored against the
engine's own class number (``ClassSnapshot.engine_class_of_snapshot_class`` maps
one to the other) in ``<session>/class_overrides.json`` (``otf2d.monitoring.quality.save_overrides``,
keys = engine class number + 1). Every later snapshot translates them back to its own numbering;
the file is read at each snapshot, so overrides survive restarts. After a change the state is
re-published at once (status page, ``/metrics``) and a snapshot is requested so that the files
on disk follow.

Memory: the state keeps each session's newest snapshot without its per-particle table
(:func:`without_particle_table`), so what the engine holds does not grow with the particles seen.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry

from otf2d import core
from otf2d.core.config import LifecycleConfig, VerdictConfig
from otf2d.core.errors import InputError
from otf2d.core.particles import CtfParams
from otf2d.core.snapshot import ClassSnapshot, ParticleAssignments
from otf2d.monitoring.acquisition import summarize_acquisition
from otf2d.monitoring.lifecycle import Activity, SessionLifecycle, lifecycle_path, load_activity, save_activity
from otf2d.monitoring.metrics import register_monitoring
from otf2d.monitoring.quality import (
    OVERRIDE_VALUES,
    SESSION_OVERRIDES_FILE,
    load_overrides,
    overrides_for_snapshot,
    save_overrides,
    with_junk_scores,
)
from otf2d.monitoring.snapshots import write_snapshot
from otf2d.monitoring.state import TIMELINE_FILE, MonitoringState, SessionMonitor, append_timeline, load_timeline

if TYPE_CHECKING:
    from otf2d.engine.serving.service import EngineService

log = logging.getLogger(__name__)

#: File of a session's class overrides, in its folder (``<data>/sessions/<name>/``).
OVERRIDES_FILE = SESSION_OVERRIDES_FILE
#: ``override`` value of a ``set_class_override`` request that removes the user's override.
CLEAR_OVERRIDE = "auto"


def _placeholder(n: int, dtype: Any) -> np.ndarray:
    """``(n,)`` zeros of ``dtype`` as a read-only zero-stride view: n entries in O(1) memory."""
    return np.broadcast_to(np.zeros(1, dtype=dtype), (n,))


def without_particle_table(snapshot: ClassSnapshot) -> ClassSnapshot:
    """``snapshot`` with its per-particle table replaced by placeholders of the same length.

    The monitoring state keeps the newest snapshot of every session for the status page and the
    collectors, which use the classes (averages, counts, resolutions) and only the *number* of
    particles. The real table (~200 bytes per particle, 40 MB at 200,000) stays on disk in the
    snapshot files; the placeholders (zeros, class 1, zero-stride views) cost nothing whatever the
    session's size.
    """
    n = len(snapshot.particles)
    ctf = object.__new__(CtfParams)  # placeholder values: skip the validation (and its copies)
    for f in dataclasses.fields(CtfParams):
        object.__setattr__(ctf, f.name, _placeholder(n, np.float64))
    particles = ParticleAssignments(
        stack_paths=_placeholder(n, object),
        indices=_placeholder(n, np.int64),
        optics_groups=_placeholder(n, np.int64),
        ctf=ctf,
        class_index=_placeholder(n, np.int64),
        psi_degrees=_placeholder(n, np.float64),
        origin_x_angstrom=_placeholder(n, np.float64),
        origin_y_angstrom=_placeholder(n, np.float64),
        pmax=_placeholder(n, np.float64),
        class_posterior=_placeholder(n, np.float64),
        class_ess=_placeholder(n, np.float64),
        n_significant=_placeholder(n, np.int64),
        log_likelihood=_placeholder(n, np.float64),
    )
    return dataclasses.replace(snapshot, particles=particles)


@dataclasses.dataclass(frozen=True)
class _Published:
    """The newest snapshot of a session (without junk scores) and where its session lives."""

    snapshot: ClassSnapshot
    session_root: Path
    snapshot_time: float


class EngineMonitoring:
    """The engine's monitoring: a :class:`SessionMonitor` fed by snapshots and counts, plus overrides.

    Parameters
    ----------
    verdict
        Verdict thresholds (the config's ``[verdict]`` table).
    write
        The snapshot writer called after scoring (``otf2d.monitoring.snapshots.write_snapshot``).
    sample_seconds
        Period of the classified-count sampler.
    clock
        Source of unix time.
    lifecycle
        When sessions turn idle and closed (the config's ``[sessions]`` table).
    """

    def __init__(
        self,
        verdict: VerdictConfig | None = None,
        *,
        write: Callable[..., Any] = write_snapshot,
        sample_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
        lifecycle: LifecycleConfig | None = None,
    ) -> None:
        self.monitor = SessionMonitor(verdict, clock=clock)
        self.lifecycle = SessionLifecycle(lifecycle, clock=clock, on_change=self._lifecycle_changed)
        self._write = write
        self._clock = clock
        self.sample_seconds = float(sample_seconds)
        self._service: EngineService | None = None
        self._published: dict[str, _Published] = {}
        self._lock = threading.Lock()
        self._override_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ composition

    def attach(self, service: EngineService, registry: CollectorRegistry | None = None) -> None:
        """Plug into ``service``: the override control kind, status fields, collectors in ``registry``.

        ``registry`` defaults to the service's metrics registry, so ``/metrics`` shows the engine's
        counters and the per-session class metrics together.
        """
        import torch

        from otf2d.core.wire import KIND_CLOSE_SESSION, KIND_SET_CLASS_OVERRIDE

        self._service = service
        service.add_control_handler(KIND_SET_CLASS_OVERRIDE, self.handle_override)
        service.add_control_handler(KIND_CLOSE_SESSION, self.handle_close)
        service.add_status_fields(self.status_fields)
        service.metrics.set_build_info(core.__version__, torch.__version__, service.device.type)
        register_monitoring(
            self.monitor.states,
            registry if registry is not None else service.metrics.registry,
            lifecycle=self.lifecycle,
        )

    def start(self) -> None:
        """Start the count sampler and ask for a snapshot of every classifying session (fresh state after a restart)."""
        service = self._service
        if service is not None:
            from otf2d.engine.serving.folding import Phase

            for folder in service.worker.folders():
                self._restore_lifecycle(folder.name, folder.session.root)
                if folder.phase is Phase.STREAMING:
                    service.worker.request(folder.name, "snapshot")
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample_loop, name="otf2d-monitoring", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the sampler."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def states(self) -> dict[str, MonitoringState]:
        """The latest state of every session (the provider of the status server and the collectors)."""
        return self.monitor.states()

    # ------------------------------------------------------------------ counts

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.sample_seconds):
            try:
                self.sample()
            except Exception:  # never let monitoring take the engine down
                log.exception("sampling the classified counts failed")

    def sample(self) -> None:
        """Record every session's classified count now."""
        service = self._service
        if service is None:
            return
        now = self._clock()
        for folder in service.worker.folders():
            self.monitor.record_classified(folder.name, folder.consumed, now)
            self.lifecycle.observe(folder.name, folder.session.journal.count, folder.consumed, now)
        self._forget_expired(now)

    def _forget_expired(self, now: float) -> None:
        """Drop the monitoring state of sessions closed longer than ``retain_closed_minutes``.

        They leave the status page and ``/status.json`` as they left ``/metrics``; their files stay
        (the timeline is read back from disk if particles reopen them).
        """
        states = self.monitor.states()
        for name, activity in self.lifecycle.activities().items():
            if name in states and not activity.exported(now, self.lifecycle.config):
                self.monitor.remove(name)
                log.info("session %s: closed for retain_closed_minutes, removed from the status page", name)

    # ------------------------------------------------------------------ lifecycle

    def _restore_lifecycle(self, session: str, root: Path) -> None:
        try:
            activity = load_activity(lifecycle_path(root))
        except InputError as exc:
            log.error("session %s: lifecycle record ignored (the session counts as open): %s", session, exc)
            activity = None
        if activity is not None:
            self.lifecycle.restore(session, activity)

    def _restore_timeline(self, session: str, root: Path) -> None:
        points, problems = load_timeline(root / TIMELINE_FILE)
        for problem in problems[:5]:
            log.warning("session %s: timeline point skipped: %s", session, problem)
        if points:
            self.monitor.restore_timeline(session, points)

    def _lifecycle_changed(self, session: str, activity: Activity) -> None:
        """Keep the lifecycle on disk; a closed session gets its last checkpoint and snapshot."""
        service = self._service
        held = service.session(session) if service is not None else None
        if service is None or held is None:
            return
        save_activity(lifecycle_path(held.root), activity)
        if activity.closed_at is not None:
            service.worker.request(session, "checkpoint")
            folder = service.worker.folder(session)
            if folder is not None and folder.phase.value == "streaming":
                service.worker.request(session, "snapshot")

    def lifecycle_states(self) -> dict[str, str]:
        """Each session's lifecycle state now (``open``, ``idle``, ``closed``): the status page's chips."""
        now = self._clock()
        return {name: a.state(now, self.lifecycle.config) for name, a in self.lifecycle.activities().items()}

    def handle_close(self, request: dict[str, Any]) -> dict[str, Any]:
        """Serve a ``close_session`` request: the collection of the session has ended.

        Raises
        ------
        InputError
            No such session.
        """
        session = str(request["session"])
        service = self._service
        folder = service.worker.folder(session) if service is not None else None
        if folder is None:
            raise InputError(None, f"no session named {session!r}")
        self.lifecycle.observe(session, folder.session.journal.count, folder.consumed)
        activity = self.lifecycle.close(session, "user")
        return {
            "session": session,
            "closed_at": activity.closed_at,
            "closed_by": activity.closed_by,
            "received": activity.received,
            "classified": activity.classified,
        }

    def _record(self, session: str) -> None:
        service = self._service
        folder = service.worker.folder(session) if service is not None else None
        if folder is not None:
            self.monitor.record_classified(session, folder.consumed, self._clock())

    # ------------------------------------------------------------------ snapshots

    def publish(self, session: str, snapshot: ClassSnapshot, session_root: Path) -> ClassSnapshot:
        """Compute the session's state from ``snapshot``; returns the snapshot with its junk scores.

        Parameters
        ----------
        session
            Session name.
        snapshot
            As built by the worker (``junk_score`` unset).
        session_root
            The session's folder (holds :data:`OVERRIDES_FILE`).

        Returns
        -------
        ClassSnapshot
            ``snapshot`` with ``junk_score`` = the effective ``(K,)`` scores, overrides applied, and
            the overrides (snapshot class numbers) and junk threshold in its parameters
            (``otf2d.monitoring.quality.with_junk_scores``): what the ``_model.star`` and ``.cs`` carry.
        """
        if session not in self.monitor.states():
            self._restore_timeline(session, session_root)  # first state since a start or a reopen
        order = snapshot.engine_class_order()
        try:
            stored = load_overrides(session_root / OVERRIDES_FILE)
        except InputError as exc:
            log.error("session %s: class overrides ignored: %s", session, exc)
            stored = {}
        self._record(session)
        now = self._clock()
        light = without_particle_table(snapshot)
        state = self.monitor.publish(
            session,
            light,
            overrides=overrides_for_snapshot(stored, order),
            snapshot_time=now,
            acquisition=summarize_acquisition(snapshot.particles),
        )
        with self._lock:
            self._published[session] = _Published(light, session_root, now)
        try:
            append_timeline(session_root / TIMELINE_FILE, state.timeline[-1])
        except OSError as exc:
            log.error("session %s: timeline not kept on disk: %s", session, exc)
        return with_junk_scores(snapshot, state.quality)

    def write_snapshot(self, snapshot: ClassSnapshot, out_dir: str | Path, *, session: str = "", **kwargs: Any) -> Any:
        """The service's snapshot sink: :meth:`publish`, then write the scored snapshot.

        ``out_dir`` is the session's ``snapshots/`` folder (its parent is the session folder). A
        failure of the monitoring part is logged and the snapshot is written without scores.
        """
        try:
            snapshot = self.publish(session, snapshot, Path(out_dir).parent)
        except Exception:
            log.exception("session %s: monitoring state of snapshot %d failed", session, snapshot.iteration)
        return self._write(snapshot, out_dir, session=session, **kwargs)

    # ------------------------------------------------------------------ overrides

    def handle_override(self, request: dict[str, Any]) -> dict[str, Any]:
        """Serve a ``set_class_override`` request (see the module docstring).

        Returns
        -------
        dict
            ``session``, ``class`` (snapshot number), ``engine_class`` (engine number, 1-based),
            ``override`` (the value, ``None`` when removed), ``overrides`` (every override of the
            session, keyed by the newest snapshot's numbers), ``iteration`` of that snapshot.

        Raises
        ------
        InputError
            An unknown value, no snapshot yet, or a class number outside ``1..K``.
        """
        session = str(request["session"])
        number = int(request["class_number"])
        value = str(request["override"])
        if value not in (*OVERRIDE_VALUES, CLEAR_OVERRIDE):
            raise InputError(None, f"override must be one of {[*OVERRIDE_VALUES, CLEAR_OVERRIDE]}, not {value!r}")
        with self._lock:
            published = self._published.get(session)
        if published is None:
            raise InputError(None, f"session {session!r} has no snapshot yet: overrides name the classes of a snapshot")
        snapshot = published.snapshot
        k = snapshot.n_classes
        if not 1 <= number <= k:
            raise InputError(None, f"session {session!r} has classes 1..{k}, not {number}")
        order = snapshot.engine_class_order()
        engine_number = order[number - 1] + 1
        path = published.session_root / OVERRIDES_FILE
        with self._override_lock:
            stored = load_overrides(path)
            if value == CLEAR_OVERRIDE:
                stored.pop(engine_number, None)
            else:
                stored[engine_number] = value
            save_overrides(path, stored)
        current = overrides_for_snapshot(stored, order)
        with self._lock:
            newest = self._published.get(session, published)
        self.monitor.publish(
            session,
            newest.snapshot,
            overrides=overrides_for_snapshot(stored, newest.snapshot.engine_class_order()),
            snapshot_time=newest.snapshot_time,
        )
        if self._service is not None:
            self._service.worker.request(session, "snapshot")
        log.info(
            "session %s: class %d (engine class %d) %s by a user",
            session,
            number,
            engine_number,
            "override removed" if value == CLEAR_OVERRIDE else f"marked {value}",
        )
        return {
            "session": session,
            "class": number,
            "engine_class": engine_number,
            "override": None if value == CLEAR_OVERRIDE else value,
            "overrides": {str(n): v for n, v in sorted(current.items())},
            "iteration": int(snapshot.iteration),
            "file": str(path),
        }

    # ------------------------------------------------------------------ status

    def status_fields(self, session: str) -> dict[str, Any]:
        """The monitoring summary of ``session`` for the engine's status reply (``{}`` before a state)."""
        activity = self.lifecycle.activities().get(session)
        lifecycle = {} if activity is None else {"lifecycle": activity.to_json(self._clock(), self.lifecycle.config)}
        state = self.monitor.states().get(session)
        if state is None:
            return lifecycle
        counts = state.class_counts
        return {
            **lifecycle,
            "monitoring": {
                "iteration": int(state.snapshot.iteration),
                "verdict": state.verdict.state,
                "confidence": round(state.verdict.confidence, 4),
                "reasons": list(state.verdict.reasons),
                "junk_fraction": state.junk_fraction,
                "junk_classes": int(state.quality.junk.sum()),
                "classes_populated": int((counts > 0).sum()),
                "distinct_views": int(state.views.n_views),
                "good_particles": int(state.good_particles),
                "timeline_points": len(state.timeline),
                "overrides": {str(n): v for n, v in sorted(state.quality.overrides.items())},
            },
        }


__all__ = [
    "CLEAR_OVERRIDE",
    "OVERRIDES_FILE",
    "EngineMonitoring",
    "overrides_for_snapshot",
    "without_particle_table",
]
