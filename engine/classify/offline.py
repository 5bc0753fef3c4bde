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
from otf2d.engine.em.driver import ClassificationResult, Progress, classify_batches


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
    """Particles the driver will read for ``n_particles``: init + online mini-batches + full passes.

    The driver reads one particle to learn the box, one mini-batch to initialise, one per online
    iteration, then every particle once per full pass (once more for the final assignment when
    there is no full pass).
    """
    batch = min(n_particles, params.batch_size_per_class * params.n_classes)
    passes = max(params.final_full_iterations, 1)
    return 1 + batch * (1 + params.online_em_iterations) + passes * n_particles


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
    """Add the micrograph names of ``table`` when the particles are exactly its rows, in order."""
    if table.micrograph_names is None or len(particles) != len(table):
        return particles
    same = np.array_equal(particles.indices, table.indices) and np.array_equal(
        np.asarray(particles.stack_paths, dtype=str), table.stack_paths
    )
    return dataclasses.replace(particles, micrograph_names=table.micrograph_names) if same else particles


def classify_table(
    table: ParticleTable,
    params: Class2DParams,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_phase: Callable[[PhaseUpdate], None] | None = None,
    on_read: Callable[[int], None] | None = None,
    pass_chunk: int = 2048,
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
    if on_phase is not None:
        on_phase(PhaseUpdate("init", 0, params.online_em_iterations + params.final_full_iterations))

    def progress(p: Progress) -> None:
        if on_phase is not None:
            on_phase(_phase_after(p, params))

    result = classify_batches(source, params, device=device, dtype=dtype, progress=progress, pass_chunk=pass_chunk)
    particles = _with_table_metadata(result.particles, table)
    snapshot = result.classifier.snapshot(particles, optics=list(table.optics))
    snapshot = dataclasses.replace(
        snapshot,
        parameters={**snapshot.parameters, "input": str(table.source), "n_particles": len(table)},
    )
    return OfflineResult(
        snapshot=snapshot,
        result=result,
        classify_seconds=time.perf_counter() - start,
        particles_read=source.particles_read,
    )


__all__ = ["OfflineResult", "PhaseUpdate", "classify_table", "planned_particles"]
