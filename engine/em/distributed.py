"""Data-parallel offline classification over ``torch.distributed`` ranks (gloo on CPUs, NCCL on GPUs).

:func:`classify_sharded` runs the schedule of ``otf2d.engine.em.driver.classify_batches`` on
``world_size`` processes. Rank ``r`` owns the contiguous block of rows
``[n·r/W, n·(r+1)/W)`` (:meth:`Ranks.block`) and prepares only those. Every rank:

1. draws the same mini-batch indices (``numpy.random.default_rng(params.seed)``) and initialises
   the classes from the *whole* initial mini-batch, with the same seeded generator, so every rank
   starts from the same classes and noise;
2. for each online-EM iteration runs the E-step on the rows of the mini-batch it owns, turns its
   sums into class-frame statistics, ``all_reduce``\\ s them (sum) and runs the same online update
   and M-step (reseeding included: the summed class sizes and the generator are the same on every
   rank, so are the decisions);
3. for each full pass (or the final assignment) does the same over its own block, then the
   per-particle assignments are gathered on rank 0, in row order.

The statistics are linear in the particles, so the result equals the one-process result up to the
order in which floating-point sums are taken. Rank 0 alone gets a result; the others get ``None``.
The caller creates and destroys the default process group (``otf2d.engine.resources.ranks``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist

from otf2d.core.config import Class2DParams
from otf2d.core.errors import InputError
from otf2d.core.particles import ParticleBatch
from otf2d.core.snapshot import ParticleAssignments
from otf2d.engine.em.assignments import Assignments, ParticleLabels, concatenate_particle_assignments
from otf2d.engine.em.batch import BatchLike, PreparedBatch
from otf2d.engine.em.classifier import Classifier
from otf2d.engine.em.driver import (
    ClassificationResult,
    ParticleSource,
    Progress,
    as_source,
    prepare_all,
)
from otf2d.engine.em.mstep import SufficientStats

#: The per-particle fields of ``Assignments`` that are integers (sent as float64, exact below 2⁵³).
_INTEGER_FIELDS = ("class_index", "n_significant")


@runtime_checkable
class LabelledSource(Protocol):
    """A ``ParticleSource`` that can name particles without reading their images (rank 0 labels the
    gathered assignments with it; ``otf2d.engine.classify.table_source.TableSource`` is one)."""

    def __len__(self) -> int: ...

    def take(self, index: npt.ArrayLike) -> ParticleBatch: ...

    def labels(self, index: npt.ArrayLike) -> ParticleLabels: ...


@dataclass
class Ranks:
    """This process's place in the default process group, and the time spent in collectives.

    Attributes
    ----------
    rank, world_size
        As ``torch.distributed.get_rank()`` and ``get_world_size()``.
    device
        Where collective tensors live: the CPU for gloo, this rank's GPU for NCCL.
    comm_seconds
        Wall time spent in ``all_reduce`` and ``gather`` so far.
    """

    rank: int
    world_size: int
    device: torch.device
    comm_seconds: float = 0.0

    def bounds(self, n: int) -> npt.NDArray[np.int64]:
        """``(W + 1,)`` first row of each rank's block, then ``n``."""
        return (np.arange(self.world_size + 1, dtype=np.int64) * n) // self.world_size

    def block(self, n: int) -> tuple[int, int]:
        """The rows ``[lo, hi)`` this rank owns."""
        b = self.bounds(n)
        return int(b[self.rank]), int(b[self.rank + 1])

    def all_reduce_stats(self, stats: SufficientStats) -> SufficientStats:
        """The sum of every rank's statistics (one ``all_reduce`` of one packed real tensor)."""
        parts = [_real(getattr(stats, f.name)) for f in fields(stats)]
        flat = torch.cat([p.reshape(-1) for p in parts]).to(self.device)
        start = time.perf_counter()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        self.comm_seconds += time.perf_counter() - start
        values = {}
        offset = 0
        for f, p in zip(fields(stats), parts, strict=True):
            piece = flat[offset : offset + p.numel()].reshape(p.shape).to(p.device)
            offset += p.numel()
            original = getattr(stats, f.name)
            values[f.name] = torch.view_as_complex(piece.contiguous()) if original.is_complex() else piece
        return SufficientStats(**values)

    def sum_count(self, count: int) -> int:
        """``count`` summed over the ranks."""
        total = torch.tensor([count], dtype=torch.int64, device=self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return int(total.item())

    def gather_assignments(self, local: Assignments, n: int) -> Assignments | None:
        """Every rank's assignments of its block, joined in row order on rank 0 (``None`` elsewhere)."""
        names = [f.name for f in fields(Assignments)]
        packed = torch.stack([getattr(local, name).to(torch.float64) for name in names], dim=1)
        sizes = np.diff(self.bounds(n))
        padded = torch.zeros(int(sizes.max()), len(names), dtype=torch.float64, device=self.device)
        padded[: len(packed)] = packed.to(self.device)
        pieces = [torch.empty_like(padded) for _ in range(self.world_size)] if self.rank == 0 else None
        start = time.perf_counter()
        dist.gather(padded, pieces, dst=0)
        self.comm_seconds += time.perf_counter() - start
        if pieces is None:
            return None
        rows = torch.cat([p[: int(s)] for p, s in zip(pieces, sizes, strict=True)]).cpu()
        values = {
            name: rows[:, i].to(torch.int64) if name in _INTEGER_FIELDS else rows[:, i] for i, name in enumerate(names)
        }
        return Assignments(**values)


def _real(t: torch.Tensor) -> torch.Tensor:
    """A real view of a complex tensor (gloo and NCCL reduce real numbers), else ``t``."""
    return torch.view_as_real(t) if t.is_complex() else t


class RowRange:
    """Rows ``[lo, hi)`` of a source, renumbered from 0 (a ``ParticleSource``)."""

    def __init__(self, source: ParticleSource, lo: int, hi: int) -> None:
        self.source, self.lo, self.hi = source, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def take(self, index: npt.ArrayLike) -> ParticleBatch:
        """The particles at local rows ``index``."""
        return self.source.take(np.asarray(index, dtype=np.int64) + self.lo)


def labels_of(source: ParticleSource, index: npt.ArrayLike) -> ParticleLabels:
    """Who the particles at ``index`` are: without reading images when the source can say."""
    if isinstance(source, LabelledSource):
        return source.labels(index)
    return source.take(index)


@dataclass
class _Shard:
    """One rank's rows and their prepared particles (``None``: read and prepared on demand)."""

    own: RowRange
    prepared: PreparedBatch | None

    def of_minibatch(self, index: npt.NDArray[np.int64]) -> BatchLike | None:
        """The rows of a (sorted) mini-batch this rank owns, or ``None`` when it owns none."""
        mine = index[(index >= self.own.lo) & (index < self.own.hi)] - self.own.lo
        if not len(mine):
            return None
        return self.prepared.take(torch.as_tensor(mine)) if self.prepared is not None else self.own.take(mine)

    def rows(self, start: int, stop: int) -> BatchLike:
        """Local rows ``[start, stop)``."""
        if self.prepared is not None:
            return self.prepared.take(slice(start, stop))
        return self.own.take(np.arange(start, stop))


def _check_sizes(n: int, ranks: Ranks) -> None:
    if n < 2:
        raise InputError(None, f"need at least 2 particles to classify, got {n}")
    if ranks.world_size > n:
        raise InputError(None, f"{ranks.world_size} processes for {n} particles: use at most one process per particle")


def classify_sharded(
    particles: ParticleSource | Sequence[ParticleBatch],
    params: Class2DParams,
    ranks: Ranks,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: Callable[[Progress], None] | None = None,
    pass_chunk: int = 2048,
    on_processed: Callable[[int], None] | None = None,
) -> ClassificationResult | None:
    """``classify_batches`` on every rank of the default process group (module docstring).

    Call it on every rank with the same arguments (``progress`` and ``on_processed`` are called
    on rank 0 only, with counts for the whole job). Returns the result on rank 0, ``None`` elsewhere.

    Raises
    ------
    InputError
        Fewer than 2 particles, or more ranks than particles.
    """
    source = as_source(particles)
    n = len(source)
    _check_sizes(n, ranks)
    lead = ranks.rank == 0
    rng = np.random.default_rng(params.seed)
    first = source.take(np.arange(1))
    clf = Classifier(params, first.box_size[0], first.pixel_size_angstrom, device=device, dtype=dtype)
    batch_size = min(n, params.batch_size_per_class * params.n_classes)
    total = params.online_em_iterations + params.final_full_iterations

    def report(phase: str, it: int, seen: int) -> None:
        if lead and progress is not None:
            progress(Progress(phase, it, total, seen, clf.temperature()))

    def processed(count: int) -> None:
        if lead and on_processed is not None:
            on_processed(count)

    lo, hi = ranks.block(n)
    own = RowRange(source, lo, hi)
    shard = _Shard(own, prepare_all(own, clf, pass_chunk))

    def draw() -> npt.NDArray[np.int64]:
        return np.sort(rng.choice(n, size=batch_size, replace=False))

    clf.initialise(source.take(draw()))  # every rank: the whole first mini-batch, the same classes
    processed(batch_size)
    report("init", 0, 0)
    seen = 0
    for it in range(params.online_em_iterations):
        accumulator = clf.new_accumulator()
        mine = shard.of_minibatch(draw())
        if mine is not None:
            clf.accumulate(mine, accumulator, refine_poses=False)
        clf.update(ranks.all_reduce_stats(clf.statistics(accumulator)))
        clf.maximise(reseed=clf.iteration < params.online_em_iterations)
        clf.iteration += 1
        seen += batch_size
        processed(batch_size)
        report("online", it + 1, seen)
    if params.align_filaments_vertically:
        clf.align_vertically()

    def after_pass(f: int) -> None:
        report("full", params.online_em_iterations + f + 1, seen)

    local = _final_passes(clf, shard, ranks, pass_chunk, n, after_pass, processed)
    assignments = ranks.gather_assignments(local, n)
    if assignments is None:
        return None
    particle_assignments = _label(assignments, source, pass_chunk)
    return ClassificationResult(
        classifier=clf,
        assignments=assignments,
        particles=particle_assignments,
        snapshot=clf.snapshot(particle_assignments),
        online_particles_seen=seen,
    )


def _final_passes(
    clf: Classifier,
    shard: _Shard,
    ranks: Ranks,
    pass_chunk: int,
    n: int,
    after_pass: Callable[[int], None],
    processed: Callable[[int], None],
) -> Assignments:
    """The full EM passes over this rank's block (or the final assignment); its assignments."""
    params = clf.params
    own = len(shard.own)
    passes = max(params.final_full_iterations, 1)
    local: Assignments | None = None
    for f in range(passes):
        full = f < params.final_full_iterations
        accumulator = clf.new_accumulator() if full else None
        parts = []
        counted = 0
        for start in range(0, own, pass_chunk):
            stop = min(own, start + pass_chunk)
            parts.append(clf.accumulate(shard.rows(start, stop), accumulator))
            share = stop * n // own  # rank 0 reports the whole job's progress in proportion to its own
            processed(share - counted)
            counted = share
        local = Assignments.concatenate(parts)
        if accumulator is None:
            break
        clf.update(ranks.all_reduce_stats(clf.statistics(accumulator)), step=1.0)
        last = f == params.final_full_iterations - 1
        clf.maximise(reseed=False, recenter=False if last else None)
        clf.iteration += 1
        after_pass(f)
    if local is None:  # pragma: no cover - passes >= 1 and every rank owns a row
        raise RuntimeError("no final pass ran")
    return local


def _label(assignments: Assignments, source: ParticleSource, chunk: int) -> ParticleAssignments:
    """Rank 0: the gathered assignments with every particle's identity, in row order."""
    n = len(assignments)
    parts = []
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        parts.append(assignments.take(torch.as_tensor(rows)).to_particle_assignments(labels_of(source, rows)))
    return concatenate_particle_assignments(parts)


__all__ = ["LabelledSource", "Ranks", "RowRange", "classify_sharded", "labels_of"]
