"""Particles as tensors: the form the classifier computes on (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from otf2d.core.particles import ParticleBatch
from otf2d.engine.em.ctf import CtfTensors


@dataclass(frozen=True)
class TensorBatch:
    """Particle images and CTFs as tensors: ``images`` ``(n, h, w)``, ``ctf`` of ``n`` particles."""

    images: torch.Tensor
    ctf: CtfTensors

    @classmethod
    def from_particles(cls, batch: ParticleBatch, device: torch.device | str = "cpu") -> TensorBatch:
        """Copy a ``ParticleBatch`` to ``device`` (images as float32)."""
        images = torch.as_tensor(np.asarray(batch.images, dtype=np.float32), device=device)
        return cls(images, CtfTensors.from_params(batch.ctf, device))

    def take(self, index: slice | torch.Tensor) -> TensorBatch:
        """The particles at ``index``."""
        return TensorBatch(self.images[index], self.ctf.take(index))

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class PreparedBatch:
    """Particles already prepared for one classifier (``otf2d.engine.em.prepare.ParticlePreparer.prepare``).

    ``samples`` ``(n, N + 1, Q)`` complex polar samples and ``ctf`` ``(n, N + 1, Q)`` real CTF at
    them: an offline classification prepares each particle once instead of once per iteration.
    """

    samples: torch.Tensor
    ctf: torch.Tensor

    def take(self, index: slice | torch.Tensor) -> PreparedBatch:
        """The particles at ``index``."""
        return PreparedBatch(self.samples[index], self.ctf[index])

    def __len__(self) -> int:
        return int(self.samples.shape[0])


#: What the classifier accepts as particles.
BatchLike = ParticleBatch | TensorBatch | PreparedBatch

__all__ = ["BatchLike", "PreparedBatch", "TensorBatch"]
