"""What the service needs from a classifier: the seam between the engine's plumbing and ``otf2d.engine.em``.

The worker drives one :class:`ClassifierPort` per session. Every judging call returns the
particles' new assignments as an :class:`otf2d.core.snapshot.AssignmentRecord` (each field an ``(n,)``
array), which the journal stores as each particle's latest assignment.
:mod:`otf2d.engine.serving.em_adapter` wraps the online-EM classifier of ``otf2d.engine.em`` in this
interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from otf2d.core.config import Class2DParams
from otf2d.core.particles import ParticleBatch
from otf2d.core.snapshot import AssignmentRecord, ClassSnapshot, OpticsGroup, ParticleAssignments
from otf2d.engine.em.driver import ParticleSource


class Reclassification(Protocol):
    """A classification of a session's folded particles from scratch, advanced a piece at a time."""

    @property
    def done(self) -> bool:
        """Whether the work is done (:meth:`finish` may be called)."""
        ...

    def advance(self) -> int:
        """Do the next piece of work (seconds at most); returns the particles it went through."""
        ...

    def finish(self, previous_class_index: np.ndarray | None = None) -> AssignmentRecord:
        """Make the new classes the classifier's own; the assignments of every particle it classified.

        ``previous_class_index``: those particles' classes before; the new classes keep the numbers of
        the old ones they share most particles with."""
        ...


class ClassifierPort(Protocol):
    """A stateful online-EM classifier of one session."""

    def initialise(self, batch: ParticleBatch, *, quick: bool = False) -> AssignmentRecord:
        """Build the first classes from ``batch`` (the initial ``K × batch_size_per_class``
        particles) with the classifier's initialisation schedule; assignments of ``batch``.

        ``quick``: a short schedule, for an engine whose idle-time reclassification follows."""
        ...

    def fold(self, batch: ParticleBatch) -> AssignmentRecord:
        """One streaming step: judge ``batch`` and fold it into the class statistics."""
        ...

    def judge(self, batch: ParticleBatch) -> AssignmentRecord:
        """E-step only: assignments of ``batch`` against the current classes (state unchanged)."""
        ...

    def reclassify(self, particles: ParticleSource) -> Reclassification:
        """Start classifying ``particles`` from scratch as ``otf2d classify`` does (same parameters,
        same schedule); the classes change only when the returned work is finished."""
        ...

    def state(self) -> dict[str, Any]:
        """Everything needed to continue later (tensors, scalars), for a checkpoint."""
        ...

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state` (tensors on the CPU; the classifier moves them to its device)."""
        ...

    def snapshot(self, particles: ParticleAssignments, *, iteration: int, optics: list[OpticsGroup]) -> ClassSnapshot:
        """The classes now with ``particles`` (their latest assignments, engine class numbers)."""
        ...


#: ``factory(params, box (h, w), pixel_size_angstrom, device) -> ClassifierPort``
ClassifierFactory = Callable[[Class2DParams, tuple[int, int], float, torch.device], ClassifierPort]

__all__ = ["ClassifierFactory", "ClassifierPort", "Reclassification"]
