"""Offline 2D classification with cryoSPARC's schedule, on any indexable set of particles.

Schedule (cryoSPARC "2D Classification", ``algorithm.md`` §6):

1. initialise the classes from a random mini-batch (``otf2d.engine.em.classifier.Classifier.initialise``);
2. ``online_em_iterations`` online-EM iterations, each on a fresh random mini-batch of
   ``batch_size_per_class × n_classes`` particles (all particles if there are fewer), so the cost
   does not depend on the size of the data set; near-empty classes are reseeded; if filament
   alignment is on, classes are turned upright after the last one;
3. ``final_full_iterations`` full EM passes over every particle in order (step size 1); the last
   pass leaves the classes un-recentred and un-reseeded, so that every particle's class, psi,
   shift and posterior refer to the final class averages. With no full iteration, a final
   E-step over every particle gives the assignments.

Particles are prepared (normalised, cropped, polar samples and CTF) once and kept in memory when
they fit in ``PREPARED_BUDGET_BYTES`` (2 GiB, about 40,000 particles at a 64-px internal box);
otherwise each mini-batch is read and prepared again.

Deterministic on the CPU for a given ``params.seed`` (mini-batches come from
``numpy.random.default_rng(seed)``, class initialisation and reseeding from a seeded torch
generator).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch

from otf2d.core.config import Class2DParams
from otf2d.core.errors import InputError
from otf2d.core.particles import ParticleBatch
from otf2d.core.snapshot import ClassSnapshot, ParticleAssignments
from otf2d.engine.em.assignments import Assignments, concatenate_particle_assignments
from otf2d.engine.em.batch import BatchLike, PreparedBatch
from otf2d.engine.em.classifier import Classifier

#: Particles are prepared once and kept (CPU memory) when they take at most this much.
PREPARED_BUDGET_BYTES = 2 * 2**30


class ParticleSource(Protocol):
    """Random access to a set of particles (a ``ParticleBatch`` is one)."""

    def __len__(self) -> int: ...

    def take(self, index: npt.ArrayLike) -> ParticleBatch: ...


class BatchList:
    """Several ``ParticleBatch`` of one session seen as one indexable source."""

    def __init__(self, batches: Sequence[ParticleBatch]) -> None:
        if not batches:
            raise InputError(None, "no particles to classify")
        self.batches = list(batches)
        sizes = np.array([len(b) for b in self.batches], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def take(self, index: npt.ArrayLike) -> ParticleBatch:
        """The particles at global ``index`` (in that order)."""
        idx = np.asarray(index, dtype=np.int64)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        parts = []
        positions = []
        for b in np.unique(which):
            sel = np.flatnonzero(which == b)
            parts.append(self.batches[int(b)].take(idx[sel] - self.offsets[b]))
            positions.append(sel)
        joined = ParticleBatch.concatenate(parts)
        order = np.argsort(np.concatenate(positions), kind="stable")
        return joined.take(order)


@dataclass(frozen=True)
class Progress:
    """One progress report: ``phase`` is "init", "online" or "full"; counts so far."""

    phase: str
    iteration: int
    total_iterations: int
    particles_seen: int
    temperature: float


@dataclass(frozen=True)
class ClassificationResult:
    """Outcome of :func:`classify_batches`.

    Attributes
    ----------
    classifier
        The final classifier (classes, statistics, ``state_dict``).
    assignments
        Every particle's assignment (engine class numbers), in source order.
    particles
        The same as ``otf2d.core.snapshot.ParticleAssignments`` (engine class numbers).
    snapshot
        The final snapshot (classes sorted by size if requested; particles renumbered with them).
    online_particles_seen
        Particles processed by online-EM iterations (``iterations × batch``).
    """

    classifier: Classifier
    assignments: Assignments
    particles: ParticleAssignments
    snapshot: ClassSnapshot
    online_particles_seen: int


def as_source(particles: ParticleSource | Sequence[ParticleBatch]) -> ParticleSource:
    """A ``ParticleSource`` from a source, a ``ParticleBatch`` or a list of batches."""
    if isinstance(particles, ParticleBatch):
        return particles
    if isinstance(particles, Sequence):
        return BatchList(particles)
    return particles


def planned_work(n_particles: int, params: Class2DParams) -> int:
    """Particles :func:`classify_batches` puts through an E-step (or the initialisation) for
    ``n_particles``: the initial batch, one batch per online-EM iteration, then every particle once
    per full pass (once for the final assignment when there is no full pass)."""
    batch = min(n_particles, params.batch_size_per_class * params.n_classes)
    passes = max(params.final_full_iterations, 1)
    return batch * (1 + params.online_em_iterations) + passes * n_particles


def prepare_all(
    source: ParticleSource, classifier: Classifier, chunk: int, budget_bytes: int = PREPARED_BUDGET_BYTES
) -> PreparedBatch | None:
    """Every particle of ``source`` prepared once for ``classifier`` (on the CPU), or ``None`` when
    that would take more than ``budget_bytes``: online EM draws each particle many times, and
    preparing it (normalisation, crop, polar transform, CTF) is a fifth of an iteration's work."""
    g = classifier.geometry
    n = len(source)
    per_particle = (g.n_rings + 1) * g.n_angles * 3 * torch.finfo(classifier.dtype).bits // 8
    if n * per_particle > budget_bytes:
        return None
    samples, ctfs = [], []
    for start in range(0, n, chunk):
        batch = classifier.preparer.tensors(source.take(np.arange(start, min(n, start + chunk))))
        s, c = classifier.preparer.prepare(batch.images, batch.ctf)
        samples.append(s.cpu())
        ctfs.append(c.cpu())
    return PreparedBatch(torch.cat(samples), torch.cat(ctfs))


def classify_batches(
    particles: ParticleSource | Sequence[ParticleBatch],
    params: Class2DParams,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: Callable[[Progress], None] | None = None,
    pass_chunk: int = 2048,
    on_processed: Callable[[int], None] | None = None,
    start_from_subsets: bool = False,
) -> ClassificationResult:
    """Classify a finished set of particles with cryoSPARC's O-EM schedule (module docstring).

    Parameters
    ----------
    particles
        A ``ParticleBatch``, a list of batches, or any ``ParticleSource``.
    params
        Classification parameters.
    device, dtype
        Where and in which real dtype to compute.
    progress
        Called after initialisation and after every iteration.
    pass_chunk
        Particles read from the source at a time during full passes.
    on_processed
        Called with the number of particles each piece of work has just gone through (the
        initialisation batch, every online-EM batch, every chunk of a full pass or of the final
        assignment): the counts add up to :func:`planned_work`.
    start_from_subsets
        Start the classes from averages of random subsets instead of single particles
        (``Classifier.initialise``); the streaming engine does, see ``otf2d.engine.serving.em_adapter``.

    Returns
    -------
    ClassificationResult
    """
    source = as_source(particles)
    n = len(source)
    if n < 2:
        raise InputError(None, f"need at least 2 particles to classify, got {n}")
    rng = np.random.default_rng(params.seed)
    first = source.take(np.arange(1))
    box = first.box_size[0]
    clf = Classifier(params, box, first.pixel_size_angstrom, device=device, dtype=dtype)
    batch_size = min(n, params.batch_size_per_class * params.n_classes)
    total = params.online_em_iterations + params.final_full_iterations

    def report(phase: str, it: int, seen: int) -> None:
        if progress is not None:
            progress(Progress(phase, it, total, seen, clf.temperature()))

    def processed(count: int) -> None:
        if on_processed is not None:
            on_processed(count)

    prepared = prepare_all(source, clf, pass_chunk)

    def minibatch() -> BatchLike:
        index = np.sort(rng.choice(n, size=batch_size, replace=False))
        if prepared is not None:
            return prepared.take(torch.as_tensor(index))
        return source.take(index)

    clf.initialise(minibatch(), from_subsets=start_from_subsets)
    processed(batch_size)
    report("init", 0, 0)
    seen = 0
    for it in range(params.online_em_iterations):
        # the batch's poses are not kept (the final pass assigns every particle): skip refining them
        clf.step(minibatch(), refine_poses=False)
        seen += batch_size
        processed(batch_size)
        report("online", it + 1, seen)
    if params.align_filaments_vertically:
        clf.align_vertically()

    assignments: Assignments | None = None
    particle_parts: list[ParticleAssignments] = []
    for f in range(params.final_full_iterations):
        last = f == params.final_full_iterations - 1
        accumulator = clf.new_accumulator()
        parts = []
        particle_parts = []
        for start in range(0, n, pass_chunk):
            chunk = source.take(np.arange(start, min(n, start + pass_chunk)))
            ready = chunk if prepared is None else prepared.take(slice(start, start + len(chunk)))
            a = clf.accumulate(ready, accumulator)
            processed(len(chunk))
            parts.append(a)
            particle_parts.append(a.to_particle_assignments(chunk))
        assignments = Assignments.concatenate(parts)
        clf.update(clf.statistics(accumulator), step=1.0)
        clf.maximise(reseed=False, recenter=False if last else None)
        clf.iteration += 1
        report("full", params.online_em_iterations + f + 1, seen)
    if assignments is None:
        parts = []
        for start in range(0, n, pass_chunk):
            chunk = source.take(np.arange(start, min(n, start + pass_chunk)))
            a = clf.assign(chunk if prepared is None else prepared.take(slice(start, start + len(chunk))))
            processed(len(chunk))
            parts.append(a)
            particle_parts.append(a.to_particle_assignments(chunk))
        assignments = Assignments.concatenate(parts)
    particle_assignments = concatenate_particle_assignments(particle_parts)
    return ClassificationResult(
        classifier=clf,
        assignments=assignments,
        particles=particle_assignments,
        snapshot=clf.snapshot(particle_assignments),
        online_particles_seen=seen,
    )


__all__ = [
    "PREPARED_BUDGET_BYTES",
    "BatchList",
    "ClassificationResult",
    "ParticleSource",
    "Progress",
    "as_source",
    "classify_batches",
    "planned_work",
    "prepare_all",
]
