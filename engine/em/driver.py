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
from dataclasses import dataclass, replace
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
from otf2d.engine.em.mstep import OrderAccumulator

#: Particles are prepared once and kept (CPU memory) when they take at most this much.
PREPARED_BUDGET_BYTES = 2 * 2**30
#: The engine's quick start (:func:`quick_start_params`): online-EM iterations and batch per class.
QUICK_START_ITERATIONS = 3
QUICK_START_BATCH_PER_CLASS = 20


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


def quick_start_params(params: Class2DParams) -> Class2DParams:
    """The short schedule of the engine's first classes (issue 12 item 4: first classes within 30 s).

    ``QUICK_START_ITERATIONS`` online-EM iterations of ``QUICK_START_BATCH_PER_CLASS × K`` particles,
    the ICUF temperature at its start value for all but the last and 1 for the last, then one full
    pass over the initial particles (none if ``params`` has none). On the realistic
    ribosome session (K = 20, 2 cores) that is 20 s for 800 particles and 27 s for 2,000, against
    116 s for 800 with the full schedule. The engine's idle-time reclassification then runs the full
    schedule on everything folded (``otf2d.engine.serving.folding``), so the quick classes only have
    to be good enough to fold the next micrographs into.
    """
    return replace(
        params,
        online_em_iterations=min(params.online_em_iterations, QUICK_START_ITERATIONS),
        batch_size_per_class=min(params.batch_size_per_class, QUICK_START_BATCH_PER_CLASS),
        noise_anneal_start_iteration=min(params.noise_anneal_start_iteration, 1),
        noise_anneal_iterations=min(params.noise_anneal_iterations, QUICK_START_ITERATIONS - 2),
        final_full_iterations=min(params.final_full_iterations, 1),
    )


def prepared_bytes(n_particles: int, classifier: Classifier) -> int:
    """Bytes that ``n_particles`` prepared for ``classifier`` take (polar samples and CTF)."""
    g = classifier.geometry
    return n_particles * (g.n_rings + 1) * g.n_angles * 3 * torch.finfo(classifier.dtype).bits // 8


def prepare_range(source: ParticleSource, classifier: Classifier, start: int, stop: int) -> PreparedBatch:
    """Particles ``start .. stop − 1`` of ``source`` prepared for ``classifier`` (on the CPU)."""
    batch = classifier.preparer.tensors(source.take(np.arange(start, stop)))
    samples, ctf = classifier.preparer.prepare(batch.images, batch.ctf)
    return PreparedBatch(samples.cpu(), ctf.cpu())


def concatenate_prepared(parts: Sequence[PreparedBatch]) -> PreparedBatch:
    """Prepared batches one after the other."""
    return PreparedBatch(torch.cat([p.samples for p in parts]), torch.cat([p.ctf for p in parts]))


def prepare_all(
    source: ParticleSource, classifier: Classifier, chunk: int, budget_bytes: int = PREPARED_BUDGET_BYTES
) -> PreparedBatch | None:
    """Every particle of ``source`` prepared once for ``classifier`` (on the CPU), or ``None`` when
    that would take more than ``budget_bytes``: online EM draws each particle many times, and
    preparing it (normalisation, crop, polar transform, CTF) is a fifth of an iteration's work."""
    n = len(source)
    if prepared_bytes(n, classifier) > budget_bytes:
        return None
    return concatenate_prepared(
        [prepare_range(source, classifier, start, min(n, start + chunk)) for start in range(0, n, chunk)]
    )


class BatchRun:
    """:func:`classify_batches` as a run that advances one piece of work at a time.

    Each :meth:`advance` does one piece: preparing one chunk (``pass_chunk`` particles) of the
    particles, initialising the classes, one online-EM iteration, or one chunk of a full pass or of
    the final assignment. The streaming engine advances a run of the particles it has folded between
    its other work (``otf2d.engine.serving.folding``); :func:`classify_batches` advances one to the
    end. Both do the same work in the same order: the same ``params`` and particles give the same
    result.

    Parameters as in :func:`classify_batches`.
    """

    def __init__(
        self,
        particles: ParticleSource | Sequence[ParticleBatch],
        params: Class2DParams,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        progress: Callable[[Progress], None] | None = None,
        pass_chunk: int = 2048,
        on_processed: Callable[[int], None] | None = None,
        start_from_subsets: bool = False,
    ) -> None:
        self.source = as_source(particles)
        self.n = len(self.source)
        if self.n < 2:
            raise InputError(None, f"need at least 2 particles to classify, got {self.n}")
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        first = self.source.take(np.arange(1))
        self.clf = Classifier(params, first.box_size[0], first.pixel_size_angstrom, device=device, dtype=dtype)
        self.batch_size = min(self.n, params.batch_size_per_class * params.n_classes)
        self.pass_chunk = pass_chunk
        self.progress = progress
        self.on_processed = on_processed
        self.start_from_subsets = start_from_subsets
        self.prepared: PreparedBatch | None = None
        self._prepared_parts: list[PreparedBatch] = []
        self.prepare_start = 0
        self.seen = 0
        self.stage = "prepare"  # prepare, init, online, full, assign, done
        self.online_done = 0
        self.full_done = 0
        self.chunk_start = 0
        self._accumulator: OrderAccumulator | None = None
        self._parts: list[Assignments] = []
        self._particle_parts: list[ParticleAssignments] = []
        self._assignments: Assignments | None = None

    @property
    def done(self) -> bool:
        """Whether every piece of work is done (:meth:`result` is ready)."""
        return self.stage == "done"

    def _report(self, phase: str, it: int) -> None:
        if self.progress is not None:
            total = self.params.online_em_iterations + self.params.final_full_iterations
            self.progress(Progress(phase, it, total, self.seen, self.clf.temperature()))

    def _processed(self, count: int) -> None:
        if self.on_processed is not None:
            self.on_processed(count)

    def _minibatch(self) -> BatchLike:
        index = np.sort(self.rng.choice(self.n, size=self.batch_size, replace=False))
        if self.prepared is not None:
            return self.prepared.take(torch.as_tensor(index))
        return self.source.take(index)

    def _chunk(self) -> tuple[ParticleBatch, BatchLike]:
        """The next chunk of a pass in source order: the particles and what the classifier takes."""
        start = self.chunk_start
        chunk = self.source.take(np.arange(start, min(self.n, start + self.pass_chunk)))
        ready = chunk if self.prepared is None else self.prepared.take(slice(start, start + len(chunk)))
        self.chunk_start += len(chunk)
        return chunk, ready

    def advance(self) -> int:
        """Do the next piece of work; returns the particles it went through (0 for preparing)."""
        if self.stage == "prepare":
            self._prepare_chunk()
            return 0
        if self.stage == "init":
            return self._initialise()
        if self.stage == "online":
            return self._online_iteration()
        if self.stage == "full":
            return self._full_pass_chunk()
        if self.stage == "assign":
            return self._assign_chunk()
        raise RuntimeError("the run is done: nothing left to advance")

    def _prepare_chunk(self) -> None:
        """One chunk (``pass_chunk`` particles) of preparing every particle once, kept when they fit in
        ``PREPARED_BUDGET_BYTES`` (else nothing is prepared ahead); a run advanced between other work
        is then never held up by preparing a large set in one piece."""
        if self.prepare_start == 0 and prepared_bytes(self.n, self.clf) > PREPARED_BUDGET_BYTES:
            self.stage = "init"
            return
        stop = min(self.n, self.prepare_start + self.pass_chunk)
        self._prepared_parts.append(prepare_range(self.source, self.clf, self.prepare_start, stop))
        self.prepare_start = stop
        if stop == self.n:
            parts, self._prepared_parts = self._prepared_parts, []
            self.prepared = concatenate_prepared(parts)
            self.stage = "init"

    def _initialise(self) -> int:
        self.clf.initialise(self._minibatch(), from_subsets=self.start_from_subsets)
        self._processed(self.batch_size)
        self._report("init", 0)
        self.stage = "online"
        self._after_online()
        return self.batch_size

    def _online_iteration(self) -> int:
        # the batch's poses are not kept (the final pass assigns every particle): skip refining them
        self.clf.step(self._minibatch(), refine_poses=False)
        self.seen += self.batch_size
        self.online_done += 1
        self._processed(self.batch_size)
        self._report("online", self.online_done)
        self._after_online()
        return self.batch_size

    def _after_online(self) -> None:
        """Leave the online stage once its iterations are done."""
        if self.online_done < self.params.online_em_iterations:
            return
        if self.params.align_filaments_vertically:
            self.clf.align_vertically()
        self.stage = "full" if self.params.final_full_iterations > 0 else "assign"
        self.chunk_start = 0

    def _full_pass_chunk(self) -> int:
        if self.chunk_start == 0:
            self._accumulator = self.clf.new_accumulator()
            self._parts, self._particle_parts = [], []
        if self._accumulator is None:
            raise RuntimeError("a full pass lost its accumulator")
        chunk, ready = self._chunk()
        a = self.clf.accumulate(ready, self._accumulator)
        self._processed(len(chunk))
        self._parts.append(a)
        self._particle_parts.append(a.to_particle_assignments(chunk))
        if self.chunk_start >= self.n:
            self._end_full_pass()
        return len(chunk)

    def _end_full_pass(self) -> None:
        if self._accumulator is None:
            raise RuntimeError("a full pass lost its accumulator")
        self._assignments = Assignments.concatenate(self._parts)
        last = self.full_done == self.params.final_full_iterations - 1
        self.clf.update(self.clf.statistics(self._accumulator), step=1.0)
        self.clf.maximise(reseed=False, recenter=False if last else None)
        self.clf.iteration += 1
        self.full_done += 1
        self._accumulator = None
        self.chunk_start = 0
        self._report("full", self.params.online_em_iterations + self.full_done)
        if last:
            self.stage = "done"

    def _assign_chunk(self) -> int:
        chunk, ready = self._chunk()
        a = self.clf.assign(ready)
        self._processed(len(chunk))
        self._parts.append(a)
        self._particle_parts.append(a.to_particle_assignments(chunk))
        if self.chunk_start >= self.n:
            self._assignments = Assignments.concatenate(self._parts)
            self.stage = "done"
        return len(chunk)

    def result(self) -> ClassificationResult:
        """The outcome, once :attr:`done`."""
        if not self.done or self._assignments is None:
            raise RuntimeError(f"the run is not done (stage {self.stage})")
        particles = concatenate_particle_assignments(self._particle_parts)
        return ClassificationResult(
            classifier=self.clf,
            assignments=self._assignments,
            particles=particles,
            snapshot=self.clf.snapshot(particles),
            online_particles_seen=self.seen,
        )


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
        (``Classifier.initialise``); the streaming engine's first classes do, see
        ``otf2d.engine.serving.em_adapter``.

    Returns
    -------
    ClassificationResult
    """
    run = BatchRun(
        particles,
        params,
        device=device,
        dtype=dtype,
        progress=progress,
        pass_chunk=pass_chunk,
        on_processed=on_processed,
        start_from_subsets=start_from_subsets,
    )
    while not run.done:
        run.advance()
    return run.result()


__all__ = [
    "PREPARED_BUDGET_BYTES",
    "BatchList",
    "BatchRun",
    "ClassificationResult",
    "ParticleSource",
    "Progress",
    "as_source",
    "classify_batches",
    "planned_work",
    "prepare_all",
    "quick_start_params",
]
