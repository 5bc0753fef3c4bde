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

import torch

from otf2d.core.config import Class2DParams
from otf2d.core.particles import ParticleBatch
from otf2d.core.snapshot import AssignmentRecord, ClassSnapshot, OpticsGroup, ParticleAssignments


class ClassifierPort(Protocol):
    """A stateful online-EM classifier of one session."""

    def initialise(self, batch: ParticleBatch) -> AssignmentRecord:
        """Build the first classes from ``batch`` (the initial ``K × batch_size_per_class``
        particles) with the classifier's initialisation schedule; assignments of ``batch``."""
        ...

    def fold(self, batch: ParticleBatch) -> AssignmentRecord:
        """One streaming step: judge ``batch`` and fold it into the class statistics."""
        ...

    def judge(self, batch: ParticleBatch) -> AssignmentRecord:
        """E-step only: assignments of ``batch`` against the current classes (state unchanged)."""
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

__all__ = ["ClassifierFactory", "ClassifierPort"]
