"""The online-EM classifier of ``otf2d.engine.em`` behind the engine's
:class:`~otf2d.engine.serving.classifier_port.ClassifierPort`.

- ``initialise``: the classifier's own schedule (``otf2d.engine.em.driver.classify_batches``) on the
  initial ``K × batch_size_per_class`` particles: random initial classes, ``online_em_iterations``
  online-EM iterations, ``final_full_iterations`` full passes; the assignments of those particles.
- ``fold``: ``Classifier.step`` (E-step, online update with the decaying step size, M-step).
- ``judge``: ``Classifier.assign`` (E-step only).
- ``state`` / ``restore``: ``Classifier.state_dict`` / ``load_state_dict``.
- ``snapshot``: ``Classifier.snapshot`` (classes sorted by size, averages at the particle box).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from otf2d.core.config import Class2DParams
from otf2d.core.particles import ParticleBatch
from otf2d.core.snapshot import (
    ASSIGNMENT_ARRAYS,
    OPTIONAL_PER_PARTICLE_ARRAYS,
    AssignmentRecord,
    ClassSnapshot,
    OpticsGroup,
    ParticleAssignments,
)
from otf2d.engine.em.assignments import Assignments
from otf2d.engine.em.classifier import Classifier
from otf2d.engine.em.driver import classify_batches


def judgements(assignments: Assignments) -> AssignmentRecord:
    """The E-step's assignments and statistics as an :class:`AssignmentRecord` of ``(n,)`` NumPy arrays."""
    names = (*ASSIGNMENT_ARRAYS, *OPTIONAL_PER_PARTICLE_ARRAYS)
    return AssignmentRecord(**{name: np.asarray(getattr(assignments, name).detach().cpu().numpy()) for name in names})


class EmClassifier:
    """A session's :class:`otf2d.engine.em.classifier.Classifier` (see the module docstring)."""

    def __init__(self, params: Class2DParams, box: tuple[int, int], pixel_size_angstrom: float, device: torch.device):
        self.params = params
        self.box = box
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.device = device
        self.classifier = Classifier(params, box[0], self.pixel_size_angstrom, device=device)

    def initialise(self, batch: ParticleBatch) -> AssignmentRecord:
        """Run the classifier's initial schedule on ``batch``; its particles' assignments."""
        # The engine keeps the start from subset averages: the verdict's view merging was calibrated on
        # it, and with single-particle starts a preferred-orientation grid was no longer flagged
        # (largest view 18 % of the good particles for a true 80 %): issue 12 item 5, issue 15 item 6.
        result = classify_batches(batch, self.params, device=self.device, start_from_subsets=True)
        self.classifier = result.classifier
        return judgements(result.assignments)

    def fold(self, batch: ParticleBatch) -> AssignmentRecord:
        """One online-EM step on ``batch``."""
        return judgements(self.classifier.step(batch))

    def judge(self, batch: ParticleBatch) -> AssignmentRecord:
        """E-step only."""
        return judgements(self.classifier.assign(batch))

    def state(self) -> dict[str, Any]:
        """``Classifier.state_dict()``."""
        return self.classifier.state_dict()

    def restore(self, state: dict[str, Any]) -> None:
        """``Classifier.load_state_dict()``."""
        self.classifier.load_state_dict(state)

    def snapshot(self, particles: ParticleAssignments, *, iteration: int, optics: list[OpticsGroup]) -> ClassSnapshot:
        """``Classifier.snapshot()`` of ``particles``."""
        return self.classifier.snapshot(particles, iteration=iteration, optics=optics or None)


def em_classifier_factory(
    params: Class2DParams, box: tuple[int, int], pixel_size_angstrom: float, device: torch.device
) -> EmClassifier:
    """The :data:`~otf2d.engine.serving.classifier_port.ClassifierFactory` of the engine."""
    return EmClassifier(params, box, pixel_size_angstrom, device)


__all__ = ["EmClassifier", "em_classifier_factory", "judgements"]
