"""The readiness gate: decide when a watched file can be read, read it, and plan its batches.

Rules (formats.md §2):

- RELION ``*_extract.star`` and ``particles.star`` are written to ``.tmp`` and renamed, so their
  appearance means the metadata is complete, and (for ``_extract.star``) that RELION finished
  the stack. The stacks are still checked: present, as long as their header claims, holding
  every index (``otf2d.core.readers``). A stack that is missing, short or still growing makes the file
  *wait* (retry with back-off, never quarantined for that until ``incomplete_timeout_s``).
- Files of other producers (cryoSPARC ``.cs``) pass a settle timer: size and mtime unchanged and
  the mtime at least ``settle_s`` old.
- An ``_extract.star`` waits for its optics: ``--optics-from``, explicit values, or the job's
  ``particles.star`` (:mod:`otf2d.streamer.optics_source`).
- A file whose content is bad (unparsable, NaN pixels, wrong box, ...) is retried
  ``max_bad_attempts`` times with back-off (it may have been caught mid-write by a producer that
  does not rename), then quarantined with the reason. A quarantined file is retried when it
  changes on disk.
- The particles of a ready file that the ledger does not know yet are split into batches of at
  most ``batch_size`` (never mixing pixel sizes) and recorded in the ledger in one transaction.
- A job-level ``particles.star`` (rewritten on every RELION pass) is re-read at most every
  ``particles_star_interval_s``; only particles not sent before are planned.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from otf2d.core.errors import IncompleteStackError, IndexOutOfRangeError, InputError, MissingStackError
from otf2d.core.readers import StackPool, load_batch, read_particle_table
from otf2d.core.readers.table import ParticleTable
from otf2d.core.wire import CTF_FIELDS
from otf2d.streamer.ledger import FileRecord, Ledger, PlannedBatch, particle_key
from otf2d.streamer.optics_source import OpticsCache, find_job_particles_star

log = logging.getLogger(__name__)

#: Errors meaning "not complete yet": wait, do not count as bad content.
NOT_YET = (IncompleteStackError, MissingStackError, IndexOutOfRangeError)


def file_kind(path: str | os.PathLike[str]) -> str | None:
    """``"extract"``, ``"particles"`` or ``"cs"`` for the files the streamer reads, else ``None``.

    Equivalent to the watchdog patterns ``**/*_extract.star``, ``**/particles.star``, ``**/*.cs``.
    """
    name = os.path.basename(os.fspath(path))
    if name.endswith("_extract.star"):
        return "extract"
    if name == "particles.star":
        return "particles"
    if name.endswith(".cs"):
        return "cs"
    return None


@dataclass(frozen=True)
class GateConfig:
    """How the gate judges and splits files.

    Attributes
    ----------
    session
        Session name put into every particle key.
    roots
        The watched directories (the search for a job's ``particles.star`` stops there).
    batch_size
        Most particles per batch (message).
    settle_s
        For non-RELION files: seconds the file must stay unchanged.
    retry_base_s, retry_max_s
        Back-off between readings: starts at ``retry_base_s``, doubles, capped at ``retry_max_s``.
    max_bad_attempts
        Readings with bad content before the file is quarantined.
    incomplete_timeout_s
        Seconds a file may wait for its stacks before it is quarantined.
    particles_star_interval_s
        Least seconds between two readings of one ``particles.star``.
    verify_pixels
        Read every new image once while planning, so a file with NaN/Inf pixels is quarantined
        before any of its batches is sent.
    optics_from
        ``particles.star`` whose optics apply to every ``_extract.star`` (else the job's own).
    pixel_size_angstrom, voltage_kv, spherical_aberration_mm, amplitude_contrast
        Explicit optics that win over the files.
    """

    session: str
    roots: tuple[Path, ...] = ()
    batch_size: int = 256
    settle_s: float = 2.0
    retry_base_s: float = 0.5
    retry_max_s: float = 10.0
    max_bad_attempts: int = 3
    incomplete_timeout_s: float = 600.0
    particles_star_interval_s: float = 5.0
    verify_pixels: bool = True
    optics_from: Path | None = None
    pixel_size_angstrom: float | None = None
    voltage_kv: float | None = None
    spherical_aberration_mm: float | None = None
    amplitude_contrast: float | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(None, f"batch size must be >= 1, got {self.batch_size}")
        if self.max_bad_attempts < 1:
            raise InputError(None, f"max_bad_attempts must be >= 1, got {self.max_bad_attempts}")

    @property
    def has_explicit_optics(self) -> bool:
        """kV, Cs and Q0 are all given explicitly (an ``_extract.star`` then needs no optics file)."""
        return None not in (self.voltage_kv, self.spherical_aberration_mm, self.amplitude_contrast)


@dataclass(frozen=True)
class Outcome:
    """What happened to a file on one pass through the gate."""

    path: str
    action: str  #: ``planned``, ``waiting``, ``retry`` or ``quarantined``
    reason: str = ""
    n_particles: int = 0
    n_new: int = 0
    msg_ids: list[str] = field(default_factory=list)


class _Wait(Exception):
    """Not ready yet (incomplete, settling, waiting for optics): retry later, no penalty."""

    def __init__(self, reason: str, retry_at: float | None = None, *, incomplete: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_at = retry_at
        self.incomplete = incomplete


class _Bad(Exception):
    """Bad content: retried ``max_bad_attempts`` times, then quarantined."""

    def __init__(self, reason: str, *, final: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final = final


class Gate:
    """Judge due files and plan their batches into the ledger.

    Parameters
    ----------
    config
        The rules.
    ledger
        Where files and batches are recorded.
    optics_cache
        Holds ``data_optics`` copies of job ``particles.star`` files.
    """

    def __init__(self, config: GateConfig, ledger: Ledger, optics_cache: OpticsCache) -> None:
        self.config = config
        self.ledger = ledger
        self.optics_cache = optics_cache
        self._warned_optics: set[Path] = set()

    def process(self, record: FileRecord, now: float) -> Outcome:
        """Examine one due file and record the result in the ledger (plan, defer or quarantine)."""
        try:
            st = os.stat(record.path)
        except FileNotFoundError:
            self.ledger.quarantine(record.path, "the file disappeared before it could be read")
            return Outcome(record.path, "quarantined", "the file disappeared before it could be read")
        size, mtime_ns = st.st_size, st.st_mtime_ns
        try:
            planned, n_total = self._examine(record, size, mtime_ns, now)
        except _Wait as wait:
            return self._wait(record, wait, now, size, mtime_ns)
        except _Bad as bad:
            return self._bad(record, bad, now, size, mtime_ns)
        msg_ids = self.ledger.plan_file(
            record.path, planned, size=size, mtime_ns=mtime_ns, n_particles=n_total, now=now
        )
        n_new = sum(len(b) for b in planned)
        return Outcome(record.path, "planned", "", n_total, n_new, msg_ids)

    def _wait(self, record: FileRecord, wait: _Wait, now: float, size: int, mtime_ns: int) -> Outcome:
        cfg = self.config
        since = record.waiting_since if record.waiting_since is not None else now
        if wait.incomplete and now - since > cfg.incomplete_timeout_s:
            reason = f"still not complete after {now - since:.0f} s: {wait.reason}"
            self.ledger.quarantine(record.path, reason)
            return Outcome(record.path, "quarantined", reason)
        retry_at = wait.retry_at
        if retry_at is None:
            retry_at = now + min(cfg.retry_max_s, max(cfg.retry_base_s, 0.5 * (now - since)))
        self.ledger.defer(
            record.path,
            next_try=retry_at,
            reason=wait.reason,
            waiting_since=now if wait.incomplete else None,
            size=size,
            mtime_ns=mtime_ns,
        )
        return Outcome(record.path, "waiting", wait.reason)

    def _bad(self, record: FileRecord, bad: _Bad, now: float, size: int, mtime_ns: int) -> Outcome:
        cfg = self.config
        if bad.final or record.attempts + 1 >= cfg.max_bad_attempts:
            tries = record.attempts + 1
            reason = bad.reason if bad.final else f"{bad.reason} (after {tries} reading(s))"
            self.ledger.quarantine(record.path, reason)
            return Outcome(record.path, "quarantined", reason)
        delay = min(cfg.retry_max_s, cfg.retry_base_s * 2.0**record.attempts)
        self.ledger.defer(
            record.path, next_try=now + delay, reason=bad.reason, failed=True, size=size, mtime_ns=mtime_ns
        )
        return Outcome(record.path, "retry", bad.reason)

    # ------------------------------------------------------------------ steps

    def _examine(self, record: FileRecord, size: int, mtime_ns: int, now: float) -> tuple[list[PlannedBatch], int]:
        cfg = self.config
        mtime = mtime_ns / 1e9
        if record.kind == "cs":
            if (size, mtime_ns) != (record.size, record.mtime_ns):
                raise _Wait("still changing (settling)", now + cfg.settle_s)
            if now - mtime < cfg.settle_s:
                raise _Wait("settling", mtime + cfg.settle_s)
        if record.kind == "particles" and record.planned_at is not None:
            earliest = record.planned_at + cfg.particles_star_interval_s
            if now < earliest:
                raise _Wait("re-read at most every particles_star_interval_s", earliest)
        table = self._read_table(record)
        keys = [particle_key(s, i) for s, i in zip(table.stack_paths.tolist(), table.indices.tolist(), strict=True)]
        if len(set(keys)) != len(keys):
            raise _Bad("the file lists the same particle (stack, index) more than once", final=True)
        known = self.ledger.known_keys(keys)
        rows = np.array([k not in known for k in keys], dtype=bool)
        new = np.flatnonzero(rows)
        if len(new) == 0:
            return [], len(table)
        sub = table.take(new)
        stack_files = self._check_stacks(sub)
        if cfg.verify_pixels:
            self._verify_pixels(sub)
        return self._split(sub, stack_files, record.path, mtime), len(table)

    def _optics_for(self, record: FileRecord) -> Path | None:
        cfg = self.config
        if record.kind != "extract" or cfg.has_explicit_optics:
            return cfg.optics_from if record.kind == "extract" else None
        if cfg.optics_from is not None:
            return cfg.optics_from
        job_star = find_job_particles_star(Path(record.path), list(cfg.roots))
        optics = self.optics_cache.optics_file(job_star) if job_star is not None else None
        if optics is None:
            where = Path(record.path).parent
            if where not in self._warned_optics:
                self._warned_optics.add(where)
                log.warning(
                    "%s: waiting for the Extract job's particles.star for optics (kV, Cs, Q0, pixel size); "
                    "pass --optics-from or --voltage/--cs/--amplitude-contrast to go on without it",
                    record.path,
                )
            raise _Wait("waiting for the job's particles.star (optics)")
        return optics

    def _read_table(self, record: FileRecord) -> ParticleTable:
        cfg = self.config
        optics_from = self._optics_for(record)
        try:
            return read_particle_table(
                record.path,
                session=cfg.session,
                optics_from=optics_from,
                pixel_size_angstrom=cfg.pixel_size_angstrom,
                voltage_kv=cfg.voltage_kv,
                spherical_aberration_mm=cfg.spherical_aberration_mm,
                amplitude_contrast=cfg.amplitude_contrast,
            )
        except NOT_YET as exc:
            raise _Wait(str(exc), incomplete=True) from exc
        except InputError as exc:
            raise _Bad(str(exc)) from exc

    def _check_stacks(self, table: ParticleTable) -> dict[str, str]:
        """Stack (as written) → absolute file, after checking size, indices and box of each."""
        pool = StackPool(table)
        stacks, inverse = np.unique(table.stack_paths, return_inverse=True)
        max_index = np.zeros(len(stacks), dtype=np.int64)
        np.maximum.at(max_index, inverse, table.indices)
        files: dict[str, str] = {}
        for k, stack in enumerate(stacks.tolist()):
            try:
                header = pool.header(stack)
            except NOT_YET as exc:
                raise _Wait(str(exc), incomplete=True) from exc
            except InputError as exc:
                raise _Bad(str(exc)) from exc
            if max_index[k] > header.n_images:
                raise _Wait(
                    f"{header.path}: holds {header.n_images} image(s), {table.source} needs index {max_index[k]}",
                    incomplete=True,
                )
            files[stack] = str(header.path.resolve())
        return files

    def _verify_pixels(self, table: ParticleTable) -> None:
        pool = StackPool(table)
        for start in range(0, len(table), self.config.batch_size):
            try:
                load_batch(table, slice(start, start + self.config.batch_size), check_finite=True, pool=pool)
            except NOT_YET as exc:
                raise _Wait(str(exc), incomplete=True) from exc
            except InputError as exc:
                raise _Bad(str(exc)) from exc

    def _split(self, table: ParticleTable, stack_files: dict[str, str], path: str, mtime: float) -> list[PlannedBatch]:
        try:
            source = os.path.relpath(path, table.project_dir)
        except ValueError:
            source = path
        if source.startswith(".."):
            source = path
        pixel_sizes = table.pixel_sizes_angstrom
        ctf = np.stack([getattr(table.ctf, name) for name in CTF_FIELDS], axis=1)
        batches: list[PlannedBatch] = []
        for px in np.unique(pixel_sizes):
            members = np.flatnonzero(pixel_sizes == px)
            for start in range(0, len(members), self.config.batch_size):
                rows = members[start : start + self.config.batch_size]
                stacks = table.stack_paths[rows].tolist()
                batches.append(
                    PlannedBatch(
                        stack_paths=stacks,
                        indices=table.indices[rows].tolist(),
                        optics_groups=table.optics_groups[rows].tolist(),
                        ctf=np.ascontiguousarray(ctf[rows]),
                        stack_files={s: stack_files[s] for s in dict.fromkeys(stacks)},
                        pixel_size_angstrom=float(px),
                        source=source,
                        file_ready_time=mtime,
                    )
                )
        return batches


__all__ = ["NOT_YET", "Gate", "GateConfig", "Outcome", "file_kind"]
