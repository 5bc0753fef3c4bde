"""The engine as a service, without the transport: sessions, durable ingest, control requests.

:class:`EngineService` owns the sessions (each with its journal), the worker thread that folds
particles into classes and the snapshot writer. The ZeroMQ server (:mod:`otf2d.engine.serving.server`) decodes
messages and calls :meth:`EngineService.ingest` for data and :meth:`EngineService.control` for
control requests; both return what to answer.

Delivery answers (see ``otf2d.core.wire``):

- ACK: the batch is durably journaled (``n_accepted`` new particles, ``n_duplicates`` already
  known); a re-sent ``msg_id`` is ACKed again with ``n_accepted = 0``.
- REJECT: the batch can never be classified (:func:`otf2d.engine.serving.ingest_checks.batch_problem`: a box
  that is not square, even and 16-2048 px, a pixel size outside 0.05-50 Å, or a particle whose CTF
  is not physical: voltage 60-400 kV, Cs 0-10 mm, amplitude contrast 0-1, defocus -10..20 µm).
- NACK naming both geometries: the batch's box or pixel size differs from its session's, which its
  ``start_session`` fixes (``params`` ``box_size`` + ``pixel_size_angstrom``) or else its first
  accepted batch; a stray first batch thus never makes the good ones dead letters. Also NACKed: a
  batch for a session that belongs to another CURVE client key, or one that would create a session
  beyond ``max_sessions``.
- NACK with ``retry_after_s``: not now — the journal could not be written (disk full, I/O error),
  or the session's backlog of particles not yet folded exceeds ``max_backlog``, or the engine is
  shutting down. A paused session still journals and ACKs: pausing stops folding only.

Sessions are created by their first batch (with the engine's default parameters) or by a
``start_session`` request (parameters merged over the defaults; may change them only while the
session is still collecting its initial particles). A ``snapshot`` request also checkpoints; a
``pause`` request checkpoints the sessions it pauses. The composition root may serve more control
kinds (:meth:`EngineService.add_control_handler`, e.g. ``set_class_override`` from
``otf2d.engine.serving.monitoring_hooks``) and add fields to each session's status
(:meth:`EngineService.add_status_fields`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from otf2d import core
from otf2d.core.config import Class2DParams
from otf2d.core.errors import ConfigError, InputError
from otf2d.core.particles import ParticleBatch
from otf2d.core.wire import (
    KIND_ACK,
    KIND_NACK,
    KIND_PAUSE,
    KIND_REJECT,
    KIND_RESUME,
    KIND_SNAPSHOT,
    KIND_START_SESSION,
    KIND_STATUS,
)
from otf2d.engine.resources.memory import device_memory_bytes, memory_status
from otf2d.engine.serving.classifier_port import ClassifierFactory
from otf2d.engine.serving.folding import Phase
from otf2d.engine.serving.ingest_checks import BOX_RANGE, PIXEL_SIZE_RANGE_ANGSTROM, batch_problem
from otf2d.engine.serving.metrics import EngineMetrics
from otf2d.engine.serving.session import SESSION_OPTIONS, Session, find_sessions, merge_params, params_to_dict
from otf2d.engine.serving.snapshot_writer import SnapshotWrite, SnapshotWriter
from otf2d.engine.serving.worker import Worker, WorkerConfig
from otf2d.engine.storage.disk import is_disk_full
from otf2d.engine.storage.journal import AppendOutcome

log = logging.getLogger(__name__)

#: ``handler(request) -> result``: serves one control kind; raises ``InputError`` to refuse.
ControlHandler = Callable[[dict[str, Any]], dict[str, Any]]
#: ``fields(session_name) -> dict``: extra fields of a session's status.
StatusFields = Callable[[str], dict[str, Any]]


@dataclass(frozen=True)
class EngineConfig:
    """Settings of the service.

    Attributes
    ----------
    data_dir
        Root of the engine's state (``<data_dir>/sessions/<name>/``).
    defaults
        Classification parameters of sessions created without their own.
    worker
        Step sizes and checkpoint / snapshot cadences.
    cache_dtype
        ``"float16"`` or ``"float32"``: how journaled images are cached on disk.
    max_backlog
        NACK a session's batches while more than this many of its particles wait to be folded
        (0: never; the journal on disk is the backlog).
    retry_after_s
        ``retry_after_s`` of NACKs.
    keep_snapshots
        Snapshots kept per session (0: all).
    max_sessions
        Most sessions the engine holds; a batch or ``start_session`` that would create one more is
        refused (NACK / ``ok = false``) with the reason.
    """

    data_dir: Path
    defaults: Class2DParams = field(default_factory=Class2DParams)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    cache_dtype: str = "float16"
    max_backlog: int = 0
    retry_after_s: float = 2.0
    keep_snapshots: int = 5
    max_sessions: int = 64


def _geometry_option(options: dict[str, Any]) -> tuple[int, float] | None:
    """``(box, pixel size)`` from ``start_session``'s ``box_size`` and ``pixel_size_angstrom`` (both or neither)."""
    box, pixel = options.get("box_size"), options.get("pixel_size_angstrom")
    if box is None and pixel is None:
        return None
    if type(box) is not int or not isinstance(pixel, int | float) or isinstance(pixel, bool):
        raise InputError(None, "box_size (an integer) and pixel_size_angstrom (a number) go together")
    if box % 2 or not BOX_RANGE[0] <= box <= BOX_RANGE[1]:
        raise InputError(None, f"box_size must be even and {BOX_RANGE[0]}-{BOX_RANGE[1]} pixels, got {box}")
    if not PIXEL_SIZE_RANGE_ANGSTROM[0] <= pixel <= PIXEL_SIZE_RANGE_ANGSTROM[1]:
        raise InputError(
            None,
            f"pixel_size_angstrom must be {PIXEL_SIZE_RANGE_ANGSTROM[0]}-{PIXEL_SIZE_RANGE_ANGSTROM[1]} Å, got {pixel}",
        )
    return box, float(pixel)


@dataclass(frozen=True)
class Answer:
    """One reply to send: a ``otf2d.core.wire`` kind and its fields."""

    kind: str
    fields: dict[str, Any]


class EngineService:
    """Sessions, ingest and control (see the module docstring).

    Parameters
    ----------
    config
        Service settings.
    factory
        Makes a session's classifier.
    device
        Where the classifiers compute.
    snapshot_write
        ``otf2d.monitoring.snapshots.write_snapshot`` (injected by the composition root).
    metrics
        The engine's metrics (a private registry by default).
    """

    def __init__(
        self,
        config: EngineConfig,
        factory: ClassifierFactory,
        device: torch.device,
        snapshot_write: SnapshotWrite,
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.config = config
        self.device = device
        self.metrics = metrics if metrics is not None else EngineMetrics()
        self.sessions_dir = Path(config.data_dir) / "sessions"
        self.snapshots = SnapshotWriter(snapshot_write, self.metrics, keep=config.keep_snapshots)
        self.worker = Worker(config.worker, factory, device, self.metrics, self.snapshots)
        self.metrics.bind(self.worker.queue_depth, self.worker.checkpoint_age)
        self.metrics.bind_device_memory(lambda: device_memory_bytes(device))
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._closing = False
        self.started = time.time()
        self.endpoint = ""
        self.broken_sessions: dict[str, str] = {}
        self._lock_file: BinaryIO | None = None
        self._control_handlers: dict[str, ControlHandler] = {}
        self._status_fields: list[StatusFields] = []

    def add_control_handler(self, kind: str, handler: ControlHandler) -> None:
        """Serve control requests of ``kind`` (a ``otf2d.core.wire`` control kind) with ``handler``."""
        self._control_handlers[kind] = handler

    def add_status_fields(self, fields: StatusFields) -> None:
        """Merge ``fields(session_name)`` into every session's status (a failing callable is logged)."""
        self._status_fields.append(fields)

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Lock the data directory, load every session on disk (restoring checkpoints), start the threads.

        A session that cannot be loaded is logged and left alone on disk (listed in ``status``
        under ``broken_sessions``); the others run.

        Raises
        ------
        ConfigError
            Another engine holds the data directory.
        """
        self.sessions_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(Path(self.config.data_dir) / "engine.lock", "a+b")  # noqa: SIM115 - held until close
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_file.close()
            self._lock_file = None
            raise ConfigError(self.config.data_dir, "another engine is using this data directory") from exc
        for root in find_sessions(self.sessions_dir):
            try:
                session = Session.open(root, cache_dtype=self.config.cache_dtype)
            except (InputError, OSError, sqlite3.Error) as exc:
                log.error("session in %s cannot be loaded and is left alone: %s", root, exc)
                self.broken_sessions[str(root)] = str(exc)
                continue
            try:
                folder = self.worker.add_session(session)
            except (InputError, OSError, sqlite3.Error) as exc:
                session.journal.close()
                log.error("session %s cannot be restored and is left alone: %s", session.name, exc)
                self.broken_sessions[str(root)] = str(exc)
                continue
            self._sessions[session.name] = session
            log.info(
                "session %s: %d journaled, %d classified, phase %s",
                session.name,
                session.journal.count,
                folder.consumed,
                folder.phase.value,
            )
        self.snapshots.start()
        self.worker.start()

    def close(self, drain_timeout_s: float = 20.0) -> None:
        """Stop folding (after draining for at most ``drain_timeout_s``), checkpoint, finish snapshots."""
        self._closing = True
        self.worker.stop(drain_timeout_s)
        self.snapshots.stop()
        with self._lock:
            for session in self._sessions.values():
                session.journal.close()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    # ------------------------------------------------------------------ sessions

    def session(self, name: str) -> Session | None:
        """The session called ``name``, if any."""
        with self._lock:
            return self._sessions.get(name)

    def _create(self, name: str, params: Class2DParams, project_dir: str | None, owner: str | None) -> Session:
        with self._lock:
            if len(self._sessions) >= self.config.max_sessions:
                raise InputError(
                    None,
                    f"the engine holds {len(self._sessions)} sessions, its limit (max_sessions = "
                    f"{self.config.max_sessions}): session {name!r} is not created",
                )
        session = Session.create(
            self.sessions_dir,
            name,
            params,
            project_dir=project_dir,
            cache_dtype=self.config.cache_dtype,
            owner=owner,
        )
        with self._lock:
            self._sessions[name] = session
        self.worker.add_session(session)
        log.info("session %s created (%d classes)", name, params.n_classes)
        return session

    def _session_for_batch(self, name: str, client: str | None) -> Session:
        session = self.session(name)
        return session if session is not None else self._create(name, self.config.defaults, None, client)

    # ------------------------------------------------------------------ ingest

    def ingest(
        self, entries: Sequence[tuple[dict[str, Any], ParticleBatch]], clients: Sequence[str | None] | None = None
    ) -> list[Answer]:
        """Journal decoded batches (grouped per session, one durable write each) and say what to answer.

        Parameters
        ----------
        entries
            ``(header, batch)`` pairs from :func:`otf2d.core.wire.decode_batch`.
        clients
            The authenticated CURVE public key of each entry's sender (``None`` entries or no list:
            no CURVE). A batch for a session that belongs to another key is NACKed with the reason.

        Returns
        -------
        list of Answer
            One per entry, in order: ACK, NACK or REJECT with their fields.
        """
        answers: list[Answer | None] = [None] * len(entries)
        senders = list(clients) if clients is not None else [None] * len(entries)
        by_session: dict[tuple[str, str | None], list[int]] = {}
        for i, (header, _) in enumerate(entries):
            by_session.setdefault((str(header["session"]), senders[i]), []).append(i)
        for (name, client), idxs in by_session.items():
            group = [entries[i] for i in idxs]
            for i, answer in zip(idxs, self._ingest_session(name, group, client), strict=True):
                answers[i] = answer
        self.worker.notify()
        result = [a for a in answers if a is not None]
        for answer in result:
            self.metrics.messages.labels(answer.kind).inc()
        return result

    def _nack(self, msg_id: str, reason: str) -> Answer:
        return Answer(KIND_NACK, {"msg_id": msg_id, "reason": reason, "retry_after_s": self.config.retry_after_s})

    def _ingest_session(
        self, name: str, entries: list[tuple[dict[str, Any], ParticleBatch]], client: str | None = None
    ) -> list[Answer]:
        msg_ids = [str(h["msg_id"]) for h, _ in entries]
        if self._closing:
            return [self._nack(m, "engine shutting down") for m in msg_ids]
        try:
            session = self._session_for_batch(name, client)
        except (OSError, sqlite3.Error, InputError) as exc:
            log.error("session %s: cannot open: %s", name, exc)
            return [self._nack(m, f"session cannot be opened: {exc}") for m in msg_ids]
        refusal = session.writable_by(client)
        if refusal:
            return [self._nack(m, refusal) for m in msg_ids]
        backlog = self.config.max_backlog
        if backlog > 0:
            folder = self.worker.folder(name)
            if folder is not None and folder.pending > backlog:
                return [self._nack(m, f"backlog of {folder.pending} particles to fold") for m in msg_ids]
        problems = [batch_problem(batch) for _, batch in entries]
        unusable = {i: p for i, p in enumerate(problems) if p}
        mismatched = self._geometry_mismatches(session, entries, unusable)
        usable = [e for i, e in enumerate(entries) if i not in unusable and i not in mismatched]
        paused = self.worker.disk.paused()
        if paused:
            return [self._nack(m, paused) for m in msg_ids]
        try:
            appended = iter(session.journal.append_many(usable) if usable else [])
        except (OSError, sqlite3.Error) as exc:
            if is_disk_full(exc):
                self.worker.disk.trip(exc, f"journal of session {name}")
                return [self._nack(m, self.worker.disk.paused() or f"disk full: {exc}") for m in msg_ids]
            self.worker.problems.report(logging.ERROR, "journal write", f"session {name}: journal write failed: {exc}")
            return [self._nack(m, f"journal write failed: {exc}") for m in msg_ids]
        if usable:
            self.worker.disk.clear()
        outcomes = [
            AppendOutcome(msg_ids[i], False, reason=unusable.get(i) or mismatched[i])
            if i in unusable or i in mismatched
            else next(appended)
            for i in range(len(entries))
        ]
        answers = []
        for i, ((_, batch), outcome) in enumerate(zip(entries, outcomes, strict=True)):
            if i in mismatched:
                log.info("session %s: NACK %s: %s", name, outcome.msg_id, outcome.reason)
                answers.append(self._nack(outcome.msg_id, outcome.reason))
            elif outcome.accepted:
                if not outcome.resent:
                    self.metrics.particles_received.inc(outcome.n_accepted)
                    self.metrics.particles_rejected.labels("duplicate").inc(outcome.n_duplicates)
                answers.append(
                    Answer(
                        KIND_ACK,
                        {
                            "msg_id": outcome.msg_id,
                            "n_accepted": outcome.n_accepted,
                            "n_duplicates": outcome.n_duplicates,
                        },
                    )
                )
            else:
                log.warning("session %s: rejected %s: %s", name, outcome.msg_id, outcome.reason)
                self.metrics.particles_rejected.labels("inconsistent").inc(len(batch))
                answers.append(Answer(KIND_REJECT, {"msg_id": outcome.msg_id, "reason": outcome.reason}))
        return answers

    @staticmethod
    def _geometry_mismatches(
        session: Session, entries: list[tuple[dict[str, Any], ParticleBatch]], unusable: dict[int, str]
    ) -> dict[int, str]:
        """Batches whose box or pixel size differs from the session's (fixed by ``start_session`` or its
        first accepted batch): NACKed with the reason, so that a wrong first batch never dead-letters
        the good ones."""
        box, pixel = session.journal.box, session.journal.pixel_size_angstrom
        mismatched: dict[int, str] = {}
        for i, (header, batch) in enumerate(entries):
            if i in unusable or session.journal.message(str(header["msg_id"])) is not None:
                continue
            if box is None or pixel is None:
                box, pixel = batch.box_size, batch.pixel_size_angstrom
                continue
            if batch.box_size != box or abs(batch.pixel_size_angstrom - pixel) > 1e-4 * pixel:
                mismatched[i] = (
                    f"box {batch.box_size[0]} at {batch.pixel_size_angstrom:g} Å/px differs from session "
                    f"{session.name!r}'s box {box[0]} at {pixel:g} Å/px (set by its start_session or first batch)"
                )
        return mismatched

    def invalid(self, msg_id: str, reason: str, n_particles: int = 0) -> Answer:
        """The REJECT of a message that failed decoding (counted as ``invalid``)."""
        self.metrics.particles_rejected.labels("invalid").inc(max(0, n_particles))
        self.metrics.messages.labels(KIND_REJECT).inc()
        return Answer(KIND_REJECT, {"msg_id": msg_id, "reason": reason})

    # ------------------------------------------------------------------ control

    def control(self, message: dict[str, Any], client: str | None = None) -> dict[str, Any]:
        """Serve a control request; returns the ``reply`` fields (``ok`` and ``result`` or ``error``).

        ``client`` is the sender's CURVE public key (``None`` without CURVE): every request but
        ``status`` that names a session is refused unless the session is :meth:`Session.writable_by` it.
        """
        kind = message["kind"]
        try:
            target = self.session(str(message["session"])) if isinstance(message.get("session"), str) else None
            refusal = target.writable_by(client) if target is not None and kind != KIND_STATUS else ""
            if refusal:
                raise InputError(None, refusal)
            if kind == KIND_STATUS:
                result = self.status(message.get("session"))
            elif kind == KIND_SNAPSHOT:
                result = self._request_snapshot(message["session"])
            elif kind in (KIND_PAUSE, KIND_RESUME):
                result = self._pause(message.get("session"), kind == KIND_PAUSE, client)
            elif kind == KIND_START_SESSION:
                result = self.start_session(message["session"], message["params"], client)
            elif kind in self._control_handlers:
                result = self._control_handlers[kind](message)
            else:
                return {"ok": False, "error": f"the engine does not serve {kind!r} requests"}
        except InputError as exc:
            return {"ok": False, "error": str(exc)}
        except (OSError, sqlite3.Error) as exc:
            log.exception("control request %s failed", kind)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": True, "result": result}

    def _require(self, name: str) -> Session:
        session = self.session(name)
        if session is None:
            raise InputError(None, f"no session named {name!r}")
        return session

    def _request_snapshot(self, name: str) -> dict[str, Any]:
        session = self._require(name)
        folder = self.worker.folder(name)
        if folder is None or folder.phase is not Phase.STREAMING:
            have = session.journal.count
            need = folder.n_init if folder is not None else 0
            raise InputError(None, f"session {name!r} has no classes yet ({have} of {need} initial particles)")
        self.worker.request(name, "snapshot")
        self.worker.request(name, "checkpoint")
        return {
            "session": name,
            "scheduled": True,
            "iteration": folder.snapshot_iteration + 1,
            "directory": str(session.snapshot_dir),
        }

    def _pause(self, name: str | None, paused: bool, client: str | None = None) -> dict[str, Any]:
        if name is not None:
            sessions = [self._require(name)]
        else:
            sessions = [s for s in self._all_sessions() if not s.writable_by(client)]
        for session in sessions:
            session.paused = paused
            if paused:
                self.worker.request(session.name, "checkpoint")
        self.worker.notify()
        return {"paused" if paused else "resumed": [s.name for s in sessions]}

    def _all_sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def start_session(self, name: str, params: dict[str, Any], client: str | None = None) -> dict[str, Any]:
        """Create session ``name`` with ``params`` (merged over the defaults), or check / update it.

        Raises
        ------
        InputError
            Invalid parameters, or the session is already classifying with different ones.
        """
        if not name or len(name) > 256:
            raise InputError(None, "a session name must be 1 to 256 characters")
        options = {k: params[k] for k in SESSION_OPTIONS if k in params}
        project_dir = options.get("project_dir")
        if project_dir is not None and not isinstance(project_dir, str):
            raise InputError(None, "project_dir must be a string")
        geometry = _geometry_option(options)
        classification = {k: v for k, v in params.items() if k not in SESSION_OPTIONS}
        try:
            wanted = merge_params(self.config.defaults, classification, f"start_session {name!r} params")
        except ConfigError as exc:
            raise InputError(None, exc.what) from exc
        session = self.session(name)
        if session is None:
            session = self._create(name, wanted, project_dir, client)
            if geometry is not None:
                session.journal.fix_geometry(*geometry)
            return {"session": name, "created": True, "params": params_to_dict(wanted)}
        if geometry is not None:
            session.journal.fix_geometry(*geometry)
        folder = self.worker.folder(name)
        changed = wanted != session.params or (project_dir is not None and project_dir != session.project_dir)
        if changed:
            with session.lock:
                if folder is not None and (folder.phase is not Phase.COLLECTING or folder.initialising):
                    current = params_to_dict(session.params)
                    diff = {k: v for k, v in params_to_dict(wanted).items() if current.get(k) != v}
                    raise InputError(None, f"session {name!r} is already classifying; cannot change {diff}")
                session.params = wanted
                if project_dir is not None:
                    session.project_dir = project_dir
                session.save()
            log.info("session %s: parameters updated before initialisation", name)
        return {"session": name, "created": False, "updated": changed, "params": params_to_dict(session.params)}

    def status(self, name: str | None = None) -> dict[str, Any]:
        """The engine's and the sessions' status as a JSON-able dict."""
        sessions = [self._require(name)] if name is not None else self._all_sessions()
        return {
            "engine": {
                "version": core.__version__,
                "device": str(self.device),
                "endpoint": self.endpoint,
                "uptime_s": time.time() - self.started,
                "queue_depth": self.worker.queue_depth(),
                "latency": self.worker.latency_quantiles(),
                "worker_busy_s": self.worker.busy_seconds,
                "heap_trims": self.worker.heap.trims,
                "heap_trim_s": self.worker.heap.seconds,
                "memory": memory_status(self.device),
                "sessions": len(self._all_sessions()),
                "broken_sessions": dict(self.broken_sessions),
            },
            "sessions": {s.name: self._session_status(s) for s in sessions},
        }

    def _session_status(self, session: Session) -> dict[str, Any]:
        folder = self.worker.folder(session.name)
        status: dict[str, Any] = {
            "paused": session.paused,
            "particles_journaled": session.journal.count,
            "messages": session.journal.n_messages(),
            "duplicates": session.journal.n_duplicates(),
            "n_classes": session.params.n_classes,
            "params": params_to_dict(session.params),
            "project_dir": session.project_dir,
            "owner": session.owner,
            "directory": str(session.root),
            "snapshot_directory": str(session.snapshot_dir),
        }
        if folder is not None:
            status.update(folder.describe())
        record = self.snapshots.records.get(session.name)
        status["last_snapshot"] = None if record is None else dataclasses.asdict(record)
        # from the newest snapshot: counting every particle's class here would stall ingest
        status["class_counts"] = None if record is None else record.class_counts
        status["snapshot_error"] = self.snapshots.errors.get(session.name)
        for fields in self._status_fields:
            try:
                status.update(fields(session.name))
            except Exception:  # extra fields must never break a status reply
                log.exception("session %s: extra status fields failed", session.name)
        return status


__all__ = ["Answer", "ControlHandler", "EngineConfig", "EngineService", "StatusFields"]
