"""A session's durable journal: every accepted particle once, in arrival order, with its latest assignment.

Layout under the journal directory::

    index.sqlite      SQLite (WAL, synchronous=FULL): meta, stacks, messages, chunks, particles
    segments/NNNNNN.seg   raw little-endian images, one block ("chunk") per accepted message

Each accepted particle gets a dense journal position ``seq`` (0, 1, 2, ...). A particle is identified
by ``ParticleKey(session, stack_path, image_index)``; the index refuses a second copy of a key
(``UNIQUE(stack_id, image_index)``), and a ``msg_id`` seen before is recognised so that a re-sent
message is acknowledged again without storing anything. The ``particles`` table also holds every
particle's CTF, optics group, ``file_ready_time`` and its **latest assignment** (class, psi, origin,
posteriors), which the worker overwrites each time it judges the particle. The ``metadata`` table
holds, per accepted message, its new particles' input columns (the wire's metadata frame, issue 14),
so that snapshots write them back.

Durability (:meth:`Journal.append_many`): the images of a group of messages are written to the
current segment and ``fsync``-ed, then the index rows are committed in one transaction (the WAL is
``fsync``-ed on commit). Only then may the caller ACK. Bytes written but not committed (a crash in
between) are cut off when the journal reopens. Images are cached as float16 where every value fits
(``|x| ≤ 65504``), else float32 (``cache_dtype="float32"`` always keeps float32).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import DecodeError, InputError
from otf2d.core.extra_columns import ExtraColumns
from otf2d.core.particles import CtfParams, ParticleBatch
from otf2d.core.snapshot import (
    ASSIGNMENT_ARRAYS,
    OPTIONAL_PER_PARTICLE_ARRAYS,
    AssignmentRecord,
    OpticsGroup,
    ParticleAssignments,
)
from otf2d.core.wire import decode_metadata_frame, encode_metadata_frame
from otf2d.engine.storage.segments import BlockLocation, SegmentStore, segment_path

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Version of the on-disk journal layout (``meta.format``).
JOURNAL_FORMAT = 1
#: The CTF columns of the ``particles`` table, in :class:`CtfParams` order.
CTF_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(CtfParams))
#: The assignment columns of the ``particles`` table (names of :class:`ParticleAssignments` fields).
ASSIGNMENT_COLUMNS: tuple[str, ...] = ASSIGNMENT_ARRAYS
#: Optional assignment columns (the E-step's statistics, ``OPTIONAL_PER_PARTICLE_ARRAYS`` of
#: :class:`ParticleAssignments`): NULL when the classifier did not give them, and in journals
#: written before they existed.
STATISTIC_COLUMNS: tuple[str, ...] = OPTIONAL_PER_PARTICLE_ARRAYS
#: Their SQL names (``scale`` is taken by the CTF's scale).
_STATISTIC_SQL: dict[str, str] = {c: "particle_scale" if c == "scale" else c for c in STATISTIC_COLUMNS}
_INT_ASSIGNMENT_COLUMNS = frozenset({"class_index", "n_significant"})
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_CACHE_DTYPES: dict[str, np.dtype[Any]] = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stacks (stack_id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS messages (
    msg_id TEXT PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    n_particles INTEGER NOT NULL,
    n_accepted INTEGER NOT NULL,
    n_duplicates INTEGER NOT NULL,
    source TEXT NOT NULL,
    file_ready_time REAL NOT NULL,
    received_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    first_seq INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    crc32 INTEGER
);
CREATE TABLE IF NOT EXISTS particles (
    seq INTEGER PRIMARY KEY,
    stack_id INTEGER NOT NULL,
    image_index INTEGER NOT NULL,
    optics_group INTEGER NOT NULL,
    file_ready_time REAL NOT NULL,
    {", ".join(f"{c} REAL NOT NULL" for c in CTF_COLUMNS)},
    class_index INTEGER,
    psi_degrees REAL,
    origin_x_angstrom REAL,
    origin_y_angstrom REAL,
    pmax REAL,
    class_posterior REAL,
    class_ess REAL,
    n_significant INTEGER,
    log_likelihood REAL,
    {", ".join(f"{c} REAL" for c in _STATISTIC_SQL.values())},
    n_judgements INTEGER NOT NULL DEFAULT 0,
    judged_time REAL,
    UNIQUE (stack_id, image_index)
);
CREATE TABLE IF NOT EXISTS metadata (first_seq INTEGER PRIMARY KEY, n INTEGER NOT NULL, frame BLOB NOT NULL);
"""


@dataclass(frozen=True)
class AppendOutcome:
    """What happened to one message offered to :meth:`Journal.append_many`.

    ``accepted`` is False only for a message that can never be accepted (``reason`` says why);
    an accepted message is durable and may be ACKed with ``n_accepted`` / ``n_duplicates``.
    ``resent`` marks a ``msg_id`` journaled before (ACK again, nothing stored).
    """

    msg_id: str
    accepted: bool
    n_accepted: int = 0
    n_duplicates: int = 0
    resent: bool = False
    reason: str = ""


@dataclass
class _Group:
    """One :meth:`Journal.append_many` call being planned: the next positions and the rows to store."""

    seq: int  #: journal position of the next new particle
    next_stack_id: int
    box: tuple[int, int] | None
    pixel: float | None
    new_stacks: dict[str, int] = field(default_factory=dict)
    keys: dict[int, set[int]] = field(default_factory=dict)  #: stack id -> image indices planned in this group
    msgs: set[str] = field(default_factory=set)
    blocks: list[bytes] = field(default_factory=list)
    block_offset: int = 0
    #: first_seq, n, offset in the group's block, dtype, height, width, crc32
    chunk_rows: list[tuple[int, int, int, str, int, int, int]] = field(default_factory=list)
    particle_rows: list[tuple[Any, ...]] = field(default_factory=list)
    message_rows: list[tuple[Any, ...]] = field(default_factory=list)
    metadata_rows: list[tuple[int, int, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class JournalSlice:
    """Consecutive journal positions ``seqs`` with their particles (images as float32)."""

    seqs: IntArray
    batch: ParticleBatch
    file_ready_time: FloatArray

    def __len__(self) -> int:
        return len(self.seqs)


class JournalParticles:
    """The first ``stop`` particles of a journal as a random-access source (``len``, ``take``).

    ``take`` reads each run of consecutive positions with one :meth:`Journal.read`; use it on the
    thread that owns the journal's connection (the worker's).
    """

    def __init__(self, journal: Journal, stop: int) -> None:
        self.journal = journal
        self.stop = min(int(stop), journal.count)

    def __len__(self) -> int:
        return self.stop

    def take(self, index: npt.ArrayLike) -> ParticleBatch:
        """The particles at positions ``index`` (in that order)."""
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        if idx.size == 0 or int(idx.min()) < 0 or int(idx.max()) >= self.stop:
            raise IndexError(f"positions must lie in [0, {self.stop}), got {idx.size} positions")
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        runs = np.split(ordered, np.flatnonzero(np.diff(ordered) > 1) + 1)
        parts = []
        for run in runs:
            part = self.journal.read(int(run[0]), int(run[-1]) + 1).batch
            parts.append(part.take(run - run[0]))
        joined = parts[0] if len(parts) == 1 else ParticleBatch.concatenate(parts)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return joined if np.array_equal(order, np.arange(len(order))) else joined.take(back)


#: Most SQLite connections one thread keeps open over every journal (each holds about 3 file
#: descriptors: the index, its WAL and its shared memory); the least recently used is closed beyond.
MAX_CONNECTIONS_PER_THREAD = 16
_thread_state = threading.local()


def _thread_connections() -> OrderedDict[Journal, sqlite3.Connection]:
    """This thread's open connections, least recently used first."""
    lru: OrderedDict[Journal, sqlite3.Connection] | None = getattr(_thread_state, "lru", None)
    if lru is None:
        lru = _thread_state.lru = OrderedDict()
    return lru


def _add_chunk_checksums(conn: sqlite3.Connection) -> None:
    """Give a journal written before chunk checksums its ``crc32`` column (NULL: not checked)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(chunks)")}
    if "crc32" not in columns:
        conn.execute("ALTER TABLE chunks ADD COLUMN crc32 INTEGER")


def _add_statistic_columns(conn: sqlite3.Connection) -> None:
    """Give a journal written before the E-step statistics their columns (NULL: unknown)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(particles)")}
    for name in _STATISTIC_SQL.values():
        if name not in columns:
            conn.execute(f"ALTER TABLE particles ADD COLUMN {name} REAL")


def _known(values: FloatArray) -> FloatArray | None:
    """``values``, or ``None`` when none of them is known (all NaN: NULL in the journal)."""
    return None if bool(np.isnan(values).all()) else values


def _block_crc(path: Path, offset: int, nbytes: int) -> int | None:
    """``zlib.crc32`` of ``nbytes`` at ``offset`` of ``path`` (None when they cannot be read)."""
    crc = 0
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            remaining = nbytes
            while remaining > 0:
                block = handle.read(min(remaining, 1 << 22))
                if not block:
                    return None
                crc = zlib.crc32(block, crc)
                remaining -= len(block)
    except OSError:
        return None
    return crc


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Journal:
    """The journal of one session (see the module docstring).

    One thread appends (:meth:`append_many`); other threads may read and store assignments
    concurrently: each thread gets its own SQLite connection.

    Parameters
    ----------
    directory
        The journal directory (created if missing).
    session
        The session name (recorded; every particle belongs to it).
    cache_dtype
        ``"float16"`` (default: float32 only where a value does not fit) or ``"float32"``.
    segment_bytes
        Size at which a segment file rolls over.
    """

    def __init__(
        self,
        directory: str | Path,
        session: str,
        *,
        cache_dtype: str = "float16",
        segment_bytes: int | None = None,
    ) -> None:
        if cache_dtype not in _CACHE_DTYPES:
            raise InputError(None, f"cache_dtype must be one of {sorted(_CACHE_DTYPES)}, got {cache_dtype!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.session = session
        self.cache_dtype = _CACHE_DTYPES[cache_dtype]
        self._db_path = self.directory / "index.sqlite"
        self._closed = False
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._append_lock = threading.Lock()
        conn = self._conn()
        conn.executescript(_SCHEMA)
        self._meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        stored = self._meta.get("session")
        if stored is not None and stored != session:
            raise InputError(self._db_path, f"journal belongs to session {stored!r}, not {session!r}")
        if "format" in self._meta and int(self._meta["format"]) != JOURNAL_FORMAT:
            raise InputError(self._db_path, f"journal format {self._meta['format']} is not {JOURNAL_FORMAT}")
        _add_chunk_checksums(conn)
        _add_statistic_columns(conn)
        self._cut_damaged_tail(conn)
        row = conn.execute("SELECT COALESCE(MAX(seq) + 1, 0) FROM particles").fetchone()
        self._count = int(row[0])
        row = conn.execute("SELECT COALESCE(MAX(stack_id), 0) FROM stacks").fetchone()
        self._next_stack_id = int(row[0]) + 1
        self._stack_ids: dict[str, int] = {}
        last = conn.execute(
            "SELECT segment, byte_offset + n * height * width * "
            "(CASE dtype WHEN 'float16' THEN 2 ELSE 4 END) FROM chunks ORDER BY first_seq DESC LIMIT 1"
        ).fetchone()
        committed = (int(last[0]), int(last[1])) if last is not None else None
        kwargs = {} if segment_bytes is None else {"segment_bytes": segment_bytes}
        self._segments = SegmentStore(self.directory / "segments", committed, **kwargs)

    # ------------------------------------------------------------------ damaged tail

    def _cut_damaged_tail(self, conn: sqlite3.Connection) -> None:
        """Cut the journal back to its last intact chunk (bytes all there, checksum right).

        Chunks are checked from the newest back to the first intact one (a damaged disk or a
        truncated segment loses the tail): the particles, chunks and messages from the first damaged
        chunk on are deleted from the index, so they are never read as zero-filled images. The
        streamer's ACKed batches among them are lost and logged as such.
        """
        cut: int | None = None
        sizes: dict[int, int] = {}
        rows = conn.execute(
            "SELECT first_seq, n, segment, byte_offset, dtype, height, width, crc32 FROM chunks ORDER BY first_seq DESC"
        )
        for first_seq, n, segment, offset, dtype_name, h, w, crc in rows:
            path = segment_path(self.directory / "segments", int(segment))
            if segment not in sizes:
                sizes[segment] = path.stat().st_size if path.exists() else -1
            nbytes = int(n) * int(h) * int(w) * _CACHE_DTYPES[dtype_name].itemsize
            if offset + nbytes <= sizes[segment] and (crc is None or _block_crc(path, offset, nbytes) == crc):
                break
            cut = int(first_seq)
        rows.close()
        if cut is None:
            return
        lost = int(conn.execute("SELECT COUNT(*) FROM particles WHERE seq >= ?", (cut,)).fetchone()[0])
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM particles WHERE seq >= ?", (cut,))
            conn.execute("DELETE FROM chunks WHERE first_seq >= ?", (cut,))
            conn.execute("DELETE FROM messages WHERE first_seq >= ?", (cut,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        log.error(
            "journal %s: damaged tail (missing or corrupt image bytes): cut back to %d particles; %d particle(s) "
            "from journal position %d on are lost",
            self.directory,
            cut,
            lost,
            cut,
        )

    # ------------------------------------------------------------------ connections

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection to the index (opened on demand; a thread keeps at most
        :data:`MAX_CONNECTIONS_PER_THREAD` over every journal, closing the least recently used)."""
        lru = _thread_connections()
        conn = lru.get(self)
        if conn is not None:
            lru.move_to_end(self)
            return conn
        if self._closed:
            raise sqlite3.ProgrammingError(f"journal {self.directory} is closed")
        conn = _connect(self._db_path)
        lru[self] = conn
        with self._connections_lock:
            self._connections.append(conn)
        while len(lru) > MAX_CONNECTIONS_PER_THREAD:
            journal, old = lru.popitem(last=False)
            journal._forget(old)
        return conn

    def _forget(self, conn: sqlite3.Connection) -> None:
        """Close one of this journal's connections (called by the thread that owns it)."""
        with self._connections_lock:
            if conn in self._connections:
                self._connections.remove(conn)
        conn.close()

    def close(self) -> None:
        """Close the segment file and every thread's connection (call once no thread uses the journal)."""
        with self._append_lock:
            self._closed = True
            self._segments.close()
            with self._connections_lock:
                for conn in self._connections:
                    conn.close()
                self._connections.clear()
            _thread_connections().pop(self, None)

    # ------------------------------------------------------------------ properties

    @property
    def count(self) -> int:
        """Particles journaled so far (the next journal position)."""
        return self._count

    @property
    def box(self) -> tuple[int, int] | None:
        """``(h, w)`` of the session's images, or ``None`` before the first particle."""
        if "height" not in self._meta:
            return None
        return int(self._meta["height"]), int(self._meta["width"])

    @property
    def pixel_size_angstrom(self) -> float | None:
        """Å per pixel of the session's images, or ``None`` before the first particle."""
        value = self._meta.get("pixel_size_angstrom")
        return None if value is None else float(value)

    def fix_geometry(self, box: int, pixel_size_angstrom: float) -> None:
        """Fix the session's box and pixel size before its first particle (``start_session``).

        Raises
        ------
        InputError
            The journal already has another geometry.
        """
        with self._append_lock:
            current = (self.box, self.pixel_size_angstrom)
            if current[0] is not None:
                if current[0] != (box, box) or not np.isclose(current[1] or 0.0, pixel_size_angstrom, rtol=1e-4):
                    raise InputError(
                        self._db_path,
                        f"the session's geometry is box {current[0][0]} at {current[1]} Å/px already, "
                        f"not {box} at {pixel_size_angstrom} Å/px",
                    )
                return
            meta = self._geometry_meta((box, box), pixel_size_angstrom)
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta.items())
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._meta.update(meta)

    def _geometry_meta(self, box: tuple[int, int], pixel: float) -> dict[str, str]:
        return {
            "format": str(JOURNAL_FORMAT),
            "session": self.session,
            "height": str(box[0]),
            "width": str(box[1]),
            "pixel_size_angstrom": repr(float(pixel)),
        }

    def n_messages(self) -> int:
        """Distinct messages journaled."""
        return int(self._conn().execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def n_duplicates(self) -> int:
        """Particles dropped as already known (over every first delivery of a message)."""
        return int(self._conn().execute("SELECT COALESCE(SUM(n_duplicates), 0) FROM messages").fetchone()[0])

    # ------------------------------------------------------------------ append

    def _inconsistency(self, batch: ParticleBatch, box: tuple[int, int] | None, pixel: float | None) -> str:
        if batch.session != self.session:
            return f"batch of session {batch.session!r} offered to the journal of {self.session!r}"
        if box is not None and batch.box_size != box:
            return f"box {batch.box_size[0]}x{batch.box_size[1]} differs from the session's {box[0]}x{box[1]}"
        if pixel is not None and not np.isclose(batch.pixel_size_angstrom, pixel, rtol=1e-4, atol=0.0):
            return f"pixel size {batch.pixel_size_angstrom} Å differs from the session's {pixel} Å"
        return ""

    def _stack_id(self, conn: sqlite3.Connection, path: str) -> int | None:
        cached = self._stack_ids.get(path)
        if cached is not None:
            return cached
        row = conn.execute("SELECT stack_id FROM stacks WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None
        self._stack_ids[path] = int(row[0])
        return int(row[0])

    def append_many(self, entries: Sequence[tuple[Mapping[str, Any], ParticleBatch]]) -> list[AppendOutcome]:
        """Journal a group of decoded messages durably (one ``fsync`` of images, one commit).

        Parameters
        ----------
        entries
            ``(header, batch)`` pairs as returned by :func:`otf2d.core.wire.decode_batch`.

        Returns
        -------
        list of AppendOutcome
            One per entry, in order. Accepted ones are durable when this returns.

        Raises
        ------
        OSError, sqlite3.Error
            Nothing of the group was stored (the caller answers NACK: try again later).
        """
        with self._append_lock:
            return self._append_locked(entries)

    def _append_locked(self, entries: Sequence[tuple[Mapping[str, Any], ParticleBatch]]) -> list[AppendOutcome]:
        conn = self._conn()
        group = _Group(seq=self._count, next_stack_id=self._next_stack_id, box=self.box, pixel=self.pixel_size_angstrom)
        now = time.time()
        outcomes = [self._plan_message(conn, group, header, batch, now) for header, batch in entries]
        if not group.message_rows:
            return outcomes
        meta: dict[str, str] = {}
        if group.box is not None and group.pixel is not None and "height" not in self._meta:
            meta = self._geometry_meta(group.box, group.pixel)
        self._commit_group(conn, group, meta)
        self._meta.update(meta)
        self._stack_ids.update(group.new_stacks)
        self._next_stack_id = group.next_stack_id
        self._count = group.seq
        return outcomes

    def _plan_message(
        self, conn: sqlite3.Connection, group: _Group, header: Mapping[str, Any], batch: ParticleBatch, now: float
    ) -> AppendOutcome:
        """Step 1 of an append, per message: resent, refused, or planned into ``group``'s rows."""
        msg_id = str(header["msg_id"])
        known = msg_id in group.msgs or (
            conn.execute("SELECT 1 FROM messages WHERE msg_id = ?", (msg_id,)).fetchone() is not None
        )
        if known:
            return AppendOutcome(msg_id, True, 0, len(batch), resent=True)
        reason = self._inconsistency(batch, group.box, group.pixel)
        if reason:
            return AppendOutcome(msg_id, False, reason=reason)
        if group.box is None:
            group.box, group.pixel = batch.box_size, batch.pixel_size_angstrom
        stack_ids, new = self._new_particles(conn, group, batch)
        n_new = int(new.sum())
        group.msgs.add(msg_id)
        file_ready = float(header["file_ready_time"])
        group.message_rows.append(
            (msg_id, group.seq, len(batch), n_new, len(batch) - n_new, str(header.get("source", "")), file_ready, now)
        )
        if n_new:
            self._plan_particles(group, batch, stack_ids, np.flatnonzero(new), file_ready)
        return AppendOutcome(msg_id, True, n_new, len(batch) - n_new)

    def _new_particles(
        self, conn: sqlite3.Connection, group: _Group, batch: ParticleBatch
    ) -> tuple[IntArray, npt.NDArray[np.bool_]]:
        """Step 2: each particle's stack id (new stacks numbered in ``group``) and whether it is new.

        A particle is a duplicate when its ``(stack, index)`` is journaled already or earlier in the group.
        """
        stack_ids = np.empty(len(batch), dtype=np.int64)
        new = np.ones(len(batch), dtype=bool)
        existing: dict[int, set[int]] = {}
        for i, (path, index) in enumerate(zip(batch.stack_paths.tolist(), batch.indices.tolist(), strict=True)):
            sid = group.new_stacks.get(path)
            if sid is None:
                sid = self._stack_id(conn, path)
                if sid is None:
                    sid = group.new_stacks[path] = group.next_stack_id
                    group.next_stack_id += 1
                elif sid not in existing:
                    existing[sid] = {
                        int(r[0]) for r in conn.execute("SELECT image_index FROM particles WHERE stack_id = ?", (sid,))
                    }
            stack_ids[i] = sid
            seen = group.keys.setdefault(sid, set())
            if index in seen or index in existing.get(sid, ()):
                new[i] = False
            else:
                seen.add(index)
        return stack_ids, new

    def _plan_particles(
        self, group: _Group, batch: ParticleBatch, stack_ids: IntArray, take: IntArray, file_ready: float
    ) -> None:
        """Step 3: the new particles' image block, chunk row, metadata and particle rows, at ``group.seq`` on."""
        images = np.asarray(batch.images[take])
        dtype = self.cache_dtype
        if dtype == _CACHE_DTYPES["float16"] and float(np.abs(images).max()) > _FLOAT16_MAX:
            dtype = _CACHE_DTYPES["float32"]
        data = np.ascontiguousarray(images, dtype=dtype).tobytes()
        group.blocks.append(data)
        n_new = len(take)
        group.chunk_rows.append((group.seq, n_new, group.block_offset, dtype.name, *batch.box_size, zlib.crc32(data)))
        group.block_offset += len(data)
        if batch.extra is not None:
            group.metadata_rows.append((group.seq, n_new, encode_metadata_frame(batch.extra.take(take))))
        ctf = batch.ctf
        for j in take.tolist():
            group.particle_rows.append(
                (
                    group.seq,
                    int(stack_ids[j]),
                    int(batch.indices[j]),
                    int(batch.optics_groups[j]),
                    file_ready,
                    *(float(getattr(ctf, c)[j]) for c in CTF_COLUMNS),
                )
            )
            group.seq += 1

    def _commit_group(self, conn: sqlite3.Connection, group: _Group, meta: dict[str, str]) -> None:
        """Step 4: the images to a segment (``fsync``-ed), then every row in one transaction; all or nothing."""
        location: BlockLocation | None = self._segments.append(b"".join(group.blocks)) if group.blocks else None
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta.items())
            conn.executemany(
                "INSERT INTO stacks (stack_id, path) VALUES (?, ?)", [(v, k) for k, v in group.new_stacks.items()]
            )
            conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)", group.message_rows)
            if location is not None:
                conn.executemany(
                    "INSERT INTO chunks (first_seq, n, segment, byte_offset, dtype, height, width, crc32) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (fs, n, location.segment, location.offset + rel, dt, h, w, crc)
                        for fs, n, rel, dt, h, w, crc in group.chunk_rows
                    ],
                )
            placeholders = ", ".join("?" * (5 + len(CTF_COLUMNS)))
            columns = ", ".join(("seq", "stack_id", "image_index", "optics_group", "file_ready_time", *CTF_COLUMNS))
            conn.executemany(f"INSERT INTO particles ({columns}) VALUES ({placeholders})", group.particle_rows)
            conn.executemany("INSERT INTO metadata (first_seq, n, frame) VALUES (?, ?, ?)", group.metadata_rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if location is not None:
                self._segments.rollback(location)
            raise

    # ------------------------------------------------------------------ read

    def read(self, start: int, stop: int) -> JournalSlice:
        """The particles at journal positions ``start ≤ seq < stop`` (clipped to :attr:`count`).

        Returns
        -------
        JournalSlice
            Images ``(n, h, w)`` float32, CTF, keys, optics groups and ``file_ready_time``.

        Raises
        ------
        InputError
            An empty range.
        """
        stop = min(int(stop), self._count)
        start = max(int(start), 0)
        if stop <= start:
            raise InputError(self._db_path, f"nothing to read in [{start}, {stop})")
        conn = self._conn()
        columns = ", ".join(("p.seq", "s.path", "p.image_index", "p.optics_group", "p.file_ready_time", *CTF_COLUMNS))
        rows = conn.execute(
            f"SELECT {columns} FROM particles p JOIN stacks s ON s.stack_id = p.stack_id "
            "WHERE p.seq >= ? AND p.seq < ? ORDER BY p.seq",
            (start, stop),
        ).fetchall()
        images = self._read_images(conn, start, stop)
        seqs = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if len(seqs) != stop - start or not np.array_equal(seqs, np.arange(start, stop)):
            raise OSError(f"journal index {self._db_path} has a gap in [{start}, {stop})")
        numbers = np.array([r[3:] for r in rows], dtype=np.float64)
        ctf = CtfParams(**{c: numbers[:, 2 + k] for k, c in enumerate(CTF_COLUMNS)})
        batch = ParticleBatch(
            images=images,
            pixel_size_angstrom=float(self._meta["pixel_size_angstrom"]),
            ctf=ctf,
            session=self.session,
            stack_paths=np.array([r[1] for r in rows], dtype=str),
            indices=np.array([r[2] for r in rows], dtype=np.int64),
            optics_groups=numbers[:, 0].astype(np.int64),
        )
        return JournalSlice(seqs=seqs, batch=batch, file_ready_time=numbers[:, 1].copy())

    def _read_images(self, conn: sqlite3.Connection, start: int, stop: int) -> np.ndarray:
        first = conn.execute("SELECT MAX(first_seq) FROM chunks WHERE first_seq <= ?", (start,)).fetchone()[0]
        chunks = conn.execute(
            "SELECT first_seq, n, segment, byte_offset, dtype, height, width FROM chunks "
            "WHERE first_seq >= ? AND first_seq < ? ORDER BY first_seq",
            (first, stop),
        ).fetchall()
        parts: list[np.ndarray] = []
        for first_seq, n, segment, offset, dtype_name, h, w in chunks:
            lo, hi = max(start, first_seq), min(stop, first_seq + n)
            if hi <= lo:
                continue
            dtype = _CACHE_DTYPES[dtype_name]
            per_image = h * w * dtype.itemsize
            location = BlockLocation(segment, offset + (lo - first_seq) * per_image, (hi - lo) * per_image)
            parts.append(self._segments.read(location, dtype, (hi - lo, h, w)).astype(np.float32, copy=False))
        images = np.concatenate(parts) if len(parts) != 1 else parts[0]
        if images.shape[0] != stop - start:
            raise OSError(f"journal {self._db_path}: images for [{start}, {stop}) are missing")
        return images

    # ------------------------------------------------------------------ assignments

    def store_assignments(self, seqs: npt.ArrayLike, values: AssignmentRecord) -> None:
        """Overwrite the latest assignment of the particles at ``seqs``.

        Parameters
        ----------
        seqs
            ``(n,)`` journal positions.
        values
            Their assignments (``class_index`` 0-based, psi in degrees, origins in Å); statistics that are
            ``None``, and NaN entries, are stored as unknown.
        """
        seq_list = np.asarray(seqs, dtype=np.int64).tolist()
        if len(values) != len(seq_list):
            raise ValueError(f"{len(values)} assignments for {len(seq_list)} journal positions")
        cols = [
            np.asarray(getattr(values, c), dtype=np.int64 if c in _INT_ASSIGNMENT_COLUMNS else np.float64).tolist()
            for c in ASSIGNMENT_COLUMNS
        ]
        unknown = [None] * len(seq_list)
        cols += [
            unknown if (v := getattr(values, c)) is None else np.asarray(v, dtype=np.float64).tolist()
            for c in STATISTIC_COLUMNS
        ]
        now = time.time()
        rows = [(*vals, now, s) for s, *vals in zip(seq_list, *cols, strict=True)]
        assignments = ", ".join(f"{c} = ?" for c in (*ASSIGNMENT_COLUMNS, *_STATISTIC_SQL.values()))
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                f"UPDATE particles SET {assignments}, n_judgements = n_judgements + 1, judged_time = ? WHERE seq = ?",
                rows,
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back itself ("database or disk is full")
                conn.execute("ROLLBACK")
            raise

    def n_assigned(self) -> int:
        """Particles with an assignment."""
        return int(self._conn().execute("SELECT COUNT(*) FROM particles WHERE class_index IS NOT NULL").fetchone()[0])

    def class_counts(self, n_classes: int) -> IntArray:
        """``(n_classes,)`` particles whose latest assignment is each class."""
        counts = np.zeros(n_classes, dtype=np.int64)
        for k, n in self._conn().execute(
            "SELECT class_index, COUNT(*) FROM particles WHERE class_index IS NOT NULL GROUP BY class_index"
        ):
            if 0 <= k < n_classes:
                counts[k] = n
        return counts

    def assignments(self, stop: int | None = None) -> ParticleAssignments:
        """Every particle with an assignment (journal positions below ``stop``), in journal order.

        Streams the rows into NumPy arrays (``stack_paths`` is an object array sharing one ``str``
        per stack), so memory stays near 150 bytes per particle however many there are.
        """
        stop = self._count if stop is None else int(stop)
        conn = self._conn()
        n = int(
            conn.execute(
                "SELECT COUNT(*) FROM particles WHERE class_index IS NOT NULL AND seq < ?", (stop,)
            ).fetchone()[0]
        )
        columns = (
            "seq",
            "stack_id",
            "image_index",
            "optics_group",
            *CTF_COLUMNS,
            *ASSIGNMENT_COLUMNS,
            *_STATISTIC_SQL.values(),
        )
        table = np.empty((n, len(columns)), dtype=np.float64)
        cursor = conn.execute(
            f"SELECT {', '.join(columns)} FROM particles WHERE class_index IS NOT NULL AND seq < ? ORDER BY seq",
            (stop,),
        )
        filled = 0
        while filled < n:
            rows = cursor.fetchmany(8192)
            if not rows:
                break
            table[filled : filled + len(rows)] = rows
            filled += len(rows)
        table = table[:filled]
        stack_ids = table[:, 1].astype(np.int64)
        paths_by_id = np.empty(int(stack_ids.max(initial=0)) + 1, dtype=object)
        for sid, path in conn.execute("SELECT stack_id, path FROM stacks WHERE stack_id < ?", (len(paths_by_id),)):
            paths_by_id[sid] = path
        col = {name: table[:, k] for k, name in enumerate(columns)}
        ctf = CtfParams(**{c: col[c] for c in CTF_COLUMNS})
        assigned: dict[str, Any] = {
            c: col[c].astype(np.int64) if c in _INT_ASSIGNMENT_COLUMNS else col[c] for c in ASSIGNMENT_COLUMNS
        }
        statistics: dict[str, Any] = {c: _known(col[sql]) for c, sql in _STATISTIC_SQL.items()}
        return ParticleAssignments(
            stack_paths=paths_by_id[stack_ids],
            indices=col["image_index"].astype(np.int64),
            optics_groups=col["optics_group"].astype(np.int64),
            ctf=ctf,
            extra=self._extra_columns(col["seq"].astype(np.int64), stop),
            **assigned,
            **statistics,
        )

    def _extra_columns(self, seqs: IntArray, stop: int) -> ExtraColumns | None:
        """The input columns of the particles at journal positions ``seqs`` (ascending), or ``None``
        when some of them arrived without any (or their columns differ in kind from message to message)."""
        if len(seqs) == 0:
            return None
        parts: list[ExtraColumns | None] = []
        position = np.full(stop, -1, dtype=np.int64)
        offset = 0
        query = "SELECT first_seq, n, frame FROM metadata WHERE first_seq < ? ORDER BY first_seq"
        rows = self._conn().execute(query, (stop,))
        for first, n, frame in rows:
            try:
                parts.append(decode_metadata_frame(frame, int(n)))
            except DecodeError:
                log.warning("journal %s: unreadable metadata of particles %d..%d", self.directory, first, first + n - 1)
                return None
            end = min(int(first) + int(n), stop)
            position[int(first) : end] = np.arange(offset, offset + end - int(first))
            offset += int(n)
        where = position[seqs]
        if not parts or (where < 0).any():
            return None
        joined = ExtraColumns.concatenate(parts)
        return None if joined is None else joined.take(where)

    def optics_groups(self) -> list[OpticsGroup]:
        """One :class:`OpticsGroup` per optics group number seen, from its first particle."""
        box = self.box
        pixel = self.pixel_size_angstrom
        if box is None or pixel is None:
            return []
        rows = (
            self._conn()
            .execute(
                "SELECT optics_group, voltage_kv, spherical_aberration_mm, amplitude_contrast FROM particles "
                "WHERE seq IN (SELECT MIN(seq) FROM particles GROUP BY optics_group) ORDER BY optics_group"
            )
            .fetchall()
        )
        return [
            OpticsGroup(
                number=int(g),
                name=f"opticsGroup{int(g)}",
                voltage_kv=float(kv),
                spherical_aberration_mm=float(cs),
                amplitude_contrast=float(q0),
                image_pixel_size_angstrom=pixel,
                image_size=box[0],
            )
            for g, kv, cs, q0 in rows
        ]

    def message(self, msg_id: str) -> dict[str, Any] | None:
        """The stored record of one message, or ``None``."""
        row = (
            self._conn()
            .execute(
                "SELECT msg_id, first_seq, n_particles, n_accepted, n_duplicates, source, file_ready_time, "
                "received_time FROM messages WHERE msg_id = ?",
                (msg_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        keys = ("msg_id", "first_seq", "n_particles", "n_accepted", "n_duplicates", "source", "file_ready_time")
        return dict(zip((*keys, "received_time"), row, strict=True))

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for status replies and logs)."""
        return {
            "particles": self._count,
            "box": list(self.box) if self.box else None,
            "pixel_size_angstrom": self.pixel_size_angstrom,
            "directory": str(self.directory),
        }


__all__ = [
    "ASSIGNMENT_COLUMNS",
    "CTF_COLUMNS",
    "JOURNAL_FORMAT",
    "STATISTIC_COLUMNS",
    "AppendOutcome",
    "Journal",
    "JournalParticles",
    "JournalSlice",
]
