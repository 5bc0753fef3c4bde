"""The streamer's ledger: every file and batch it has seen, in SQLite (WAL), surviving restarts.

Tables (one ledger per session):

``meta``
    ``ledger_id`` (random, the scope of every ``msg_id``), ``session``, ``schema``.
``files``
    One row per watched particle file: ``path`` (absolute, primary key), ``kind``
    (``extract`` / ``particles`` / ``cs``), ``size``, ``mtime_ns`` (of the version last observed),
    ``state`` (:class:`FileState`), ``reason`` (why quarantined, or what it waits for),
    ``attempts`` (failed readings of the current version), ``next_try`` (unix s), ``first_seen``,
    ``planned_at``, ``n_particles`` / ``n_new`` (of the last planning).
``batches``
    One row per message: ``seq`` (primary key; ``msg_id = "<ledger_id>:<seq>"``), ``file``,
    ``source``, ``state`` (:class:`BatchState`), ``n_particles``, ``pixel_size_angstrom``,
    ``file_ready_time``, the particles' metadata (stack paths, 1-based indices, optics groups,
    the resolved stack files, and the ``(n, 9)`` float64 CTF in :data:`otf2d.core.wire.CTF_FIELDS`
    order), ``created_at``, ``sent_at``, ``acked_at``, ``attempts``, ``reason``.
    Images are *not* stored: they are read from the stacks when the batch is sent, so the backlog
    costs ~100 bytes per particle on disk and nothing in memory.
``particles``
    ``key`` (``"NNNNNN@stack/path.mrcs"``, primary key) → ``seq``: every particle ever planned,
    so that a rewritten ``particles.star`` (or an ``_extract.star`` and the job's
    ``particles.star`` holding the same particle) sends each particle once.

Every state change is one transaction; planning a file (its batches and their particle keys) is
one transaction, so a crash leaves either all of a file's batches or none.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import ConfigError
from otf2d.core.wire import CTF_FIELDS, make_msg_id, parse_msg_id

LEDGER_SCHEMA = 1


class FileState(StrEnum):
    """Life of a watched file."""

    SEEN = "seen"  #: discovered (or changed); to be read when ready
    QUEUED = "queued"  #: its batches are in the ledger, not all sent yet
    SENT = "sent"  #: every batch sent, not all acknowledged
    ACKED = "acked"  #: every batch acknowledged (or nothing new in it)
    QUARANTINED = "quarantined"  #: unreadable / corrupt: ``reason`` says why
    REJECTED = "rejected"  #: the engine rejected one of its batches (dead letter)


class BatchState(StrEnum):
    """Life of a batch (one wire message)."""

    PENDING = "pending"  #: planned, never sent
    SENT = "sent"  #: sent at least once, not acknowledged
    ACKED = "acked"  #: the engine acknowledged it: never sent again
    REJECTED = "rejected"  #: the engine rejected it as poison (dead letter)
    FAILED = "failed"  #: could not be read back from disk at send time (dead letter)


#: Kinds are processed in this order when several files are due (cheap, fresh files first).
KIND_PRIORITY = {"extract": 0, "cs": 1, "particles": 2}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    first_seen REAL NOT NULL,
    waiting_since REAL,
    planned_at REAL,
    n_particles INTEGER,
    n_new INTEGER
);
CREATE INDEX IF NOT EXISTS files_due ON files (state, next_try);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT UNIQUE,
    file TEXT NOT NULL,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    n_particles INTEGER NOT NULL,
    pixel_size_angstrom REAL NOT NULL,
    file_ready_time REAL NOT NULL,
    particles_json TEXT NOT NULL,
    ctf BLOB NOT NULL,
    created_at REAL NOT NULL,
    sent_at REAL,
    acked_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS batches_state ON batches (state, seq);
CREATE INDEX IF NOT EXISTS batches_file ON batches (file);
CREATE TABLE IF NOT EXISTS particles (key TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class FileRecord:
    """One row of ``files``."""

    path: str
    kind: str
    size: int
    mtime_ns: int
    state: FileState
    reason: str | None
    attempts: int
    next_try: float
    first_seen: float
    waiting_since: float | None
    planned_at: float | None


@dataclass(frozen=True)
class PlannedBatch:
    """A batch to record: everything but the images (read from ``stack_files`` when sent).

    Attributes
    ----------
    stack_paths
        ``(n,)`` stack of each particle, as written in the metadata (relative to the project).
    indices, optics_groups
        ``(n,)`` 1-based.
    ctf
        ``(n, 9)`` float64, columns in :data:`otf2d.core.wire.CTF_FIELDS` order.
    stack_files
        Stack path (as written) → absolute file holding it.
    pixel_size_angstrom
        Å per pixel.
    source
        Metadata file, relative to the project directory (provenance).
    file_ready_time
        Unix seconds when the metadata file became ready.
    """

    stack_paths: list[str]
    indices: list[int]
    optics_groups: list[int]
    ctf: npt.NDArray[np.float64]
    stack_files: dict[str, str]
    pixel_size_angstrom: float
    source: str
    file_ready_time: float

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class BatchRecord:
    """One row of ``batches``, with its particle metadata decoded."""

    seq: int
    msg_id: str
    file: str
    state: BatchState
    attempts: int
    batch: PlannedBatch


def particle_key(stack_path: str, index: int) -> str:
    """Ledger key of a particle: RELION's ``rlnImageName`` form ``NNNNNN@stack``."""
    return f"{int(index):06d}@{stack_path}"


class Ledger:
    """The streamer's durable record of files, batches and particles.

    Parameters
    ----------
    path
        SQLite file; created (with its directory) if absent.
    session
        Session this ledger belongs to; opening a ledger of another session raises.

    Raises
    ------
    ConfigError
        The ledger belongs to another session or has an unknown schema.
    """

    def __init__(self, path: str | Path, *, session: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._create_schema()
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            with self._transaction():
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("ledger_id", secrets.token_hex(6)), ("session", session), ("schema", str(LEDGER_SCHEMA))],
                )
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("schema") != str(LEDGER_SCHEMA):
            raise ConfigError(self.path, f"ledger schema {meta.get('schema')} is not {LEDGER_SCHEMA}")
        if meta.get("session") != session:
            raise ConfigError(
                self.path,
                f"this ledger belongs to session {meta.get('session')!r}, not {session!r}: use another --ledger",
            )
        self.session = session
        self.ledger_id: str = meta["ledger_id"]

    def _create_schema(self) -> None:
        for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
            self._db.execute(statement)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database (every change is already committed)."""
        self._db.close()

    # ------------------------------------------------------------------ files

    def observe(self, path: str, kind: str, size: int, mtime_ns: int, *, now: float, delay_s: float = 0.0) -> bool:
        """Record that ``path`` exists with this size and mtime.

        A new file, or a known one whose size or mtime changed (a rewritten ``particles.star``, a
        fixed quarantined file), becomes :attr:`FileState.SEEN`, due at ``now + delay_s``.

        Returns
        -------
        bool
            Whether the file is new or changed.
        """
        row = self._db.execute("SELECT size, mtime_ns, state FROM files WHERE path = ?", (path,)).fetchone()
        if row is not None and (row[0], row[1]) == (size, mtime_ns):
            return False
        with self._transaction() as db:
            if row is None:
                db.execute(
                    "INSERT INTO files (path, kind, size, mtime_ns, state, attempts, next_try, first_seen) "
                    "VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                    (path, kind, size, mtime_ns, FileState.SEEN.value, now + delay_s, now),
                )
            else:
                db.execute(
                    "UPDATE files SET size = ?, mtime_ns = ?, state = ?, attempts = 0, reason = NULL, "
                    "next_try = ?, waiting_since = NULL WHERE path = ?",
                    (size, mtime_ns, FileState.SEEN.value, now + delay_s, path),
                )
        return True

    def file(self, path: str) -> FileRecord | None:
        """The record of ``path``, or ``None``."""
        row = self._db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE path = ?", (path,)).fetchone()
        return None if row is None else _file_record(row)

    def due_files(self, now: float, limit: int = 16) -> list[FileRecord]:
        """Files in state ``seen`` whose ``next_try`` has come, extract stars first, oldest first."""
        rows = self._db.execute(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE state = ? AND next_try <= ? "
            "ORDER BY CASE kind WHEN 'extract' THEN 0 WHEN 'cs' THEN 1 ELSE 2 END, first_seen, path LIMIT ?",
            (FileState.SEEN.value, now, limit),
        ).fetchall()
        return [_file_record(r) for r in rows]

    def next_due_time(self) -> float | None:
        """Earliest ``next_try`` of a file in state ``seen``."""
        row = self._db.execute("SELECT MIN(next_try) FROM files WHERE state = ?", (FileState.SEEN.value,)).fetchone()
        return None if row[0] is None else float(row[0])

    def defer(
        self,
        path: str,
        *,
        next_try: float,
        reason: str,
        failed: bool = False,
        waiting_since: float | None = None,
        size: int | None = None,
        mtime_ns: int | None = None,
    ) -> int:
        """Leave ``path`` in ``seen`` and try again at ``next_try``.

        Parameters
        ----------
        reason
            What it waits for (recorded).
        failed
            Count this as a failed reading (``attempts`` + 1).
        waiting_since
            When the current wait began (kept if already set).
        size, mtime_ns
            A newer stat of the file, if it changed.

        Returns
        -------
        int
            ``attempts`` after the update.
        """
        with self._transaction() as db:
            db.execute(
                "UPDATE files SET next_try = ?, reason = ?, attempts = attempts + ?, "
                "waiting_since = COALESCE(waiting_since, ?), size = COALESCE(?, size), "
                "mtime_ns = COALESCE(?, mtime_ns) WHERE path = ?",
                (next_try, reason, int(failed), waiting_since, size, mtime_ns, path),
            )
            row = db.execute("SELECT attempts FROM files WHERE path = ?", (path,)).fetchone()
        return int(row[0]) if row else 0

    def quarantine(self, path: str, reason: str) -> None:
        """Give up on ``path`` (until it changes on disk); ``reason`` says why."""
        with self._transaction() as db:
            db.execute(
                "UPDATE files SET state = ?, reason = ? WHERE path = ?", (FileState.QUARANTINED.value, reason, path)
            )

    def known_keys(self, keys: Sequence[str]) -> set[str]:
        """The subset of particle ``keys`` already planned (sent or to be sent)."""
        found: set[str] = set()
        for start in range(0, len(keys), 900):
            chunk = list(keys[start : start + 900])
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self._db.execute(f"SELECT key FROM particles WHERE key IN ({marks})", chunk))
        return found

    def plan_file(
        self,
        path: str,
        batches: Sequence[PlannedBatch],
        *,
        size: int,
        mtime_ns: int,
        n_particles: int,
        now: float,
    ) -> list[str]:
        """Record the batches of ``path`` and their particle keys, in one transaction.

        The file becomes ``queued`` (or ``acked`` when there is nothing new to send).
        Particles whose key is already known are skipped silently (never planned twice).

        Returns
        -------
        list of str
            The new batches' ``msg_id``, in order.
        """
        msg_ids: list[str] = []
        with self._transaction() as db:
            for planned in batches:
                cursor = db.execute(
                    "INSERT INTO batches (file, source, state, n_particles, pixel_size_angstrom, file_ready_time, "
                    "particles_json, ctf, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        path,
                        planned.source,
                        BatchState.PENDING.value,
                        len(planned),
                        planned.pixel_size_angstrom,
                        planned.file_ready_time,
                        json.dumps(
                            {
                                "stack_paths": planned.stack_paths,
                                "indices": planned.indices,
                                "optics_groups": planned.optics_groups,
                                "stack_files": planned.stack_files,
                            }
                        ),
                        np.ascontiguousarray(planned.ctf, dtype="<f8").tobytes(),
                        now,
                    ),
                )
                seq = int(cursor.lastrowid or 0)
                msg_id = make_msg_id(self.ledger_id, seq)
                db.execute("UPDATE batches SET msg_id = ? WHERE seq = ?", (msg_id, seq))
                db.executemany(
                    "INSERT OR IGNORE INTO particles (key, seq) VALUES (?, ?)",
                    [(particle_key(s, i), seq) for s, i in zip(planned.stack_paths, planned.indices, strict=True)],
                )
                msg_ids.append(msg_id)
            db.execute(
                "UPDATE files SET state = ?, reason = NULL, attempts = 0, size = ?, mtime_ns = ?, planned_at = ?, "
                "waiting_since = NULL, n_particles = ?, n_new = ? WHERE path = ?",
                (_file_state(db, path).value, size, mtime_ns, now, n_particles, sum(len(b) for b in batches), path),
            )
        return msg_ids

    def last_planned(self, path: str) -> float | None:
        """When ``path`` was last planned (unix s), or ``None``."""
        row = self._db.execute("SELECT planned_at FROM files WHERE path = ?", (path,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # ---------------------------------------------------------------- batches

    def seq_of(self, msg_id: str) -> int | None:
        """The ``seq`` of one of this ledger's ``msg_id``, or ``None`` if it is not ours."""
        try:
            scope, seq = parse_msg_id(msg_id)
        except ValueError:
            return None
        return seq if scope == self.ledger_id else None

    def to_send(self, exclude: set[int], limit: int) -> list[BatchRecord]:
        """Up to ``limit`` batches to send now: pending or sent-but-unacknowledged, lowest ``seq`` first.

        ``exclude`` holds the ``seq`` of batches already in flight.
        """
        if limit <= 0:
            return []
        rows = self._db.execute(
            f"SELECT {_BATCH_COLUMNS} FROM batches WHERE state IN (?, ?) ORDER BY seq LIMIT ?",
            (BatchState.PENDING.value, BatchState.SENT.value, limit + len(exclude)),
        ).fetchall()
        return [_batch_record(r) for r in rows if int(r[0]) not in exclude][:limit]

    def batch(self, seq: int) -> BatchRecord | None:
        """The batch numbered ``seq``, or ``None``."""
        row = self._db.execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else _batch_record(row)

    def mark_sent(self, seq: int, *, now: float) -> None:
        """Record one more sending of batch ``seq``."""
        with self._transaction() as db:
            db.execute(
                "UPDATE batches SET state = CASE WHEN state = ? THEN ? ELSE state END, sent_at = ?, "
                "attempts = attempts + 1 WHERE seq = ?",
                (BatchState.PENDING.value, BatchState.SENT.value, now, seq),
            )
            self._refresh_file(db, seq)

    def mark_acked(self, seq: int, *, now: float) -> bool:
        """Record the engine's ACK of batch ``seq``; ``False`` if it was already final or unknown."""
        return self._finish(seq, BatchState.ACKED, None, now)

    def mark_rejected(self, seq: int, reason: str, *, now: float, state: BatchState = BatchState.REJECTED) -> bool:
        """Record batch ``seq`` as a dead letter (``rejected`` by the engine, or ``failed`` locally)."""
        return self._finish(seq, state, reason, now)

    def _finish(self, seq: int, state: BatchState, reason: str | None, now: float) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE batches SET state = ?, reason = ?, acked_at = ? WHERE seq = ? AND state IN (?, ?)",
                (state.value, reason, now, seq, BatchState.PENDING.value, BatchState.SENT.value),
            )
            if cursor.rowcount:
                self._refresh_file(db, seq)
        return bool(cursor.rowcount)

    def _refresh_file(self, db: sqlite3.Connection, seq: int) -> None:
        """Derive the state of the file of batch ``seq`` from its batches (unless it is being re-read)."""
        row = db.execute("SELECT file FROM batches WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            return
        db.execute(
            "UPDATE files SET state = ? WHERE path = ? AND state IN (?, ?, ?, ?)",
            (
                _file_state(db, row[0]).value,
                row[0],
                FileState.QUEUED.value,
                FileState.SENT.value,
                FileState.ACKED.value,
                FileState.REJECTED.value,
            ),
        )

    # ----------------------------------------------------------------- counts

    def counts(self) -> dict[str, Any]:
        """Files per state, batches per state, particles per batch state, particle keys recorded."""
        files = {s.value: 0 for s in FileState}
        files.update(dict(self._db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall()))
        batches = {s.value: 0 for s in BatchState}
        particles = {s.value: 0 for s in BatchState}
        for state, n, total in self._db.execute(
            "SELECT state, COUNT(*), COALESCE(SUM(n_particles), 0) FROM batches GROUP BY state"
        ):
            batches[state] = int(n)
            particles[state] = int(total)
        n_keys = int(self._db.execute("SELECT COUNT(*) FROM particles").fetchone()[0])
        return {"files": files, "batches": batches, "particles": particles, "particle_keys": n_keys}

    def backlog(self) -> tuple[int, int]:
        """``(batches, particles)`` not yet acknowledged (pending or sent)."""
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(n_particles), 0) FROM batches WHERE state IN (?, ?)",
            (BatchState.PENDING.value, BatchState.SENT.value),
        ).fetchone()
        return int(row[0]), int(row[1])

    def files_waiting(self) -> int:
        """Files still in state ``seen`` (not yet readable, or not yet read)."""
        row = self._db.execute("SELECT COUNT(*) FROM files WHERE state = ?", (FileState.SEEN.value,)).fetchone()
        return int(row[0])

    def dead_letters(self) -> list[tuple[str, str, str]]:
        """``(msg_id, file, reason)`` of every rejected or failed batch."""
        return [
            (str(m), str(f), str(r))
            for m, f, r in self._db.execute(
                "SELECT msg_id, file, COALESCE(reason, '') FROM batches WHERE state IN (?, ?) ORDER BY seq",
                (BatchState.REJECTED.value, BatchState.FAILED.value),
            )
        ]

    def quarantined(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of every quarantined file."""
        return [
            (str(p), str(r))
            for p, r in self._db.execute(
                "SELECT path, COALESCE(reason, '') FROM files WHERE state = ? ORDER BY path",
                (FileState.QUARANTINED.value,),
            )
        ]


_FILE_COLUMNS = "path, kind, size, mtime_ns, state, reason, attempts, next_try, first_seen, waiting_since, planned_at"
_BATCH_COLUMNS = (
    "seq, msg_id, file, state, attempts, source, pixel_size_angstrom, file_ready_time, particles_json, ctf, n_particles"
)


def _file_state(db: sqlite3.Connection, path: str) -> FileState:
    """State of a read file, from its batches: any dead letter, else the least advanced batch."""
    counts = dict(db.execute("SELECT state, COUNT(*) FROM batches WHERE file = ? GROUP BY state", (path,)).fetchall())
    if counts.get(BatchState.REJECTED.value) or counts.get(BatchState.FAILED.value):
        return FileState.REJECTED
    if counts.get(BatchState.PENDING.value):
        return FileState.QUEUED
    if counts.get(BatchState.SENT.value):
        return FileState.SENT
    return FileState.ACKED


def _file_record(row: Sequence[Any]) -> FileRecord:
    return FileRecord(
        path=row[0],
        kind=row[1],
        size=int(row[2]),
        mtime_ns=int(row[3]),
        state=FileState(row[4]),
        reason=row[5],
        attempts=int(row[6]),
        next_try=float(row[7]),
        first_seen=float(row[8]),
        waiting_since=None if row[9] is None else float(row[9]),
        planned_at=None if row[10] is None else float(row[10]),
    )


def _batch_record(row: Sequence[Any]) -> BatchRecord:
    meta = json.loads(row[8])
    n = int(row[10])
    ctf = np.frombuffer(row[9], dtype="<f8").reshape(n, len(CTF_FIELDS))
    return BatchRecord(
        seq=int(row[0]),
        msg_id=str(row[1]),
        file=str(row[2]),
        state=BatchState(row[3]),
        attempts=int(row[4]),
        batch=PlannedBatch(
            stack_paths=list(meta["stack_paths"]),
            indices=[int(i) for i in meta["indices"]],
            optics_groups=[int(g) for g in meta["optics_groups"]],
            ctf=ctf,
            stack_files=dict(meta["stack_files"]),
            pixel_size_angstrom=float(row[6]),
            source=str(row[5]),
            file_ready_time=float(row[7]),
        ),
    )


__all__ = [
    "KIND_PRIORITY",
    "BatchRecord",
    "BatchState",
    "FileRecord",
    "FileState",
    "Ledger",
    "PlannedBatch",
    "particle_key",
]
