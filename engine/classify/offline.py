"""Offline classification of a particle table: the engine side of ``otf2d classify`` (no output I/O).

:func:`classify_table` runs ``otf2d.engine.em.driver.classify_batches`` (cryoSPARC's schedule: random
initial classes, ``online_em_iterations`` online-EM iterations on random mini-batches of
``batch_size_per_class × K`` particles, ``final_full_iterations`` full passes) over a
:class:`otf2d.engine.classify.table_source.TableSource`, so the images are read in batches as they are needed,
and returns the final :class:`otf2d.core.snapshot.ClassSnapshot` with every particle of the table, in
table order, with its class, in-plane angle, shift and posterior. Writing it is the caller's
business (``otf2d.monitoring.snapshots.write_snapshot``, at the composition root).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from otf2d.core.config import Class2DParams
from otf2d.core.readers import ParticleTable
from otf2d.core.snapshot import ClassSnapshot, ParticleAssignments
from otf2d.engine.classify.table_source import TableSource
from otf2d.engine.em.distributed import Ranks, classify_sharded
from otf2d.engine.em.driver import ClassificationResult, Progress, classify_batches, planned_work


@dataclass(frozen=True)
class PhaseUpdate:
    """Where a run stands: ``phase`` ("init", "online", "full" or "assign") and its iteration."""

    phase: str
    iteration: int
    total_iterations: int


@dataclass(frozen=True)
class OfflineResult:
    """Outcome of :func:`classify_table`.

    Attributes
    ----------
    snapshot
        Final classes and every particle (table order), classes sorted by size when asked.
    result
        The driver's result (classifier state, engine-numbered assignments).
    classify_seconds
        Wall time of the classification, reading of images included.
    particles_read
        Images read from disk over the whole run (every pass counted).
    """

    snapshot: ClassSnapshot
    result: ClassificationResult
    classify_seconds: float
    particles_read: int


def planned_particles(n_particles: int, params: Class2DParams) -> int:
    """Particles the classification puts through its E-steps (``on_processed`` counts up to it):
    the initial batch, one batch per online-EM iteration, every particle once per full pass (or
    once for the final assignment when there is no full pass); see ``otf2d.engine.em.driver.planned_work``."""
    return planned_work(n_particles, params)


def _phase_after(progress: Progress, params: Class2DParams) -> PhaseUpdate:
    """The phase that starts after the driver reported ``progress``."""
    total = progress.total_iterations
    done = progress.iteration
    online = params.online_em_iterations
    if done < online:
        return PhaseUpdate("online", done + 1, total)
    if params.final_full_iterations == 0:
        return PhaseUpdate("assign", total, total)
    return PhaseUpdate("full", min(done + 1, total), total)


def _with_table_metadata(particles: ParticleAssignments, table: ParticleTable) -> ParticleAssignments:
    """Add the micrograph names and every input column of ``table`` when the particles are exactly
    its rows, in order."""
    if (table.micrograph_names is None and table.extra is None) or len(particles) != len(table):
        return particles
    same = np.array_equal(particles.indices, table.indices) and np.array_equal(
        np.asarray(particles.stack_paths, dtype=str), table.stack_paths
    )
    if not same:
        return particles
    return dataclasses.replace(particles, micrograph_names=table.micrograph_names, extra=table.extra)


def _phase_reporter(
    on_phase: Callable[[PhaseUpdate], None] | None, params: Class2DParams, *, announce: bool
) -> Callable[[Progress], None]:
    """The driver's progress callback, reporting phases to ``on_phase``; ``announce`` first reports
    the start (the "init" phase)."""
    if announce and on_phase is not None:
        on_phase(PhaseUpdate("init", 0, params.online_em_iterations + params.final_full_iterations))

    def progress(p: Progress) -> None:
        if on_phase is not None:
            on_phase(_phase_after(p, params))

    return progress


def classify_table(
    table: ParticleTable,
    params: Class2DParams,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_phase: Callable[[PhaseUpdate], None] | None = None,
    on_read: Callable[[int], None] | None = None,
    pass_chunk: int = 2048,
    on_processed: Callable[[int], None] | None = None,
) -> OfflineResult:
    """Classify every particle of ``table`` (see the module docstring).

    Parameters
    ----------
    table
        Particles of one pixel size and box (``otf2d.core.readers.read_particle_table``).
    params
        Classification parameters (``params.seed`` makes CPU runs reproducible).
    device, dtype
        Where and in which real dtype to compute.
    on_phase
        Called when a phase or iteration starts (first with ``"init"``).
    on_read
        Called with the number of particles of every read from disk.
    on_processed
        Called with the number of particles each E-step (or the initialisation) has just gone
        through; the counts add up to :func:`planned_particles` (what a progress bar shows).
    pass_chunk
        Particles read at a time during full passes.

    Returns
    -------
    OfflineResult

    Raises
    ------
    InputError
        Unreadable stacks, mixed pixel sizes or boxes, NaN pixels, fewer than 2 particles.
    """
    source = TableSource(table, on_read=on_read)
    start = time.perf_counter()
    progress = _phase_reporter(on_phase, params, announce=True)

    result = classify_batches(
        source,
        params,
        device=device,
        dtype=dtype,
        progress=progress,
        pass_chunk=pass_chunk,
        on_processed=on_processed,
    )
    return _offline_result(result, table, time.perf_counter() - start, source.particles_read)


def _offline_result(
    result: ClassificationResult, table: ParticleTable, seconds: float, particles_read: int
) -> OfflineResult:
    """The driver's result with the table's metadata and provenance in the snapshot."""
    particles = _with_table_metadata(result.particles, table)
    snapshot = result.classifier.snapshot(particles, optics=list(table.optics))
    snapshot = dataclasses.replace(
        snapshot,
        parameters={**snapshot.parameters, "input": str(table.source), "n_particles": len(table)},
    )
    return OfflineResult(snapshot=snapshot, result=result, classify_seconds=seconds, particles_read=particles_read)


def classify_table_on_ranks(
    table: ParticleTable,
    params: Class2DParams,
    ranks: Ranks,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_phase: Callable[[PhaseUpdate], None] | None = None,
    pass_chunk: int = 2048,
    on_processed: Callable[[int], None] | None = None,
) -> OfflineResult | None:
    """:func:`classify_table` on every rank of the default process group (``otf2d.engine.em.distributed``).

    Call it on every rank; each reads and classifies its share of the particles. Rank 0 gets the
    result (``particles_read`` counts every rank's reads), the others ``None``; the callbacks are
    called on rank 0 only.
    """
    source = TableSource(table)
    start = time.perf_counter()
    lead = ranks.rank == 0
    progress = _phase_reporter(on_phase, params, announce=lead)

    result = classify_sharded(
        source,
        params,
        ranks,
        device=device,
        dtype=dtype,
        progress=progress,
        pass_chunk=pass_chunk,
        on_processed=on_processed,
    )
    read = ranks.sum_count(source.particles_read)
    if result is None:
        return None
    return _offline_result(result, table, time.perf_counter() - start, read)


__all__ = ["OfflineResult", "PhaseUpdate", "classify_table", "classify_table_on_ranks", "planned_particles"]
