"""Particles → what the E-step consumes: polar samples of the preprocessed image and the CTF there.

Per particle: background normalisation (mean 0, std 1 outside the inner mask), Fourier crop to
the internal box, the soft circular window (zeros outside, like RELION's ``--zero_mask``), polar
samples of the transform (``otf2d.engine.em.polar``), and RELION's CTF at the same frequencies
(``otf2d.engine.em.ctf``, evaluated on half the circle: ``C(θ + π) = C(θ)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from otf2d.core.errors import InputError
from otf2d.core.particles import ParticleBatch
from otf2d.engine.em.batch import BatchLike, PreparedBatch, TensorBatch
from otf2d.engine.em.ctf import CtfTensors, ctf_basis, relion_ctf
from otf2d.engine.em.geometry import Geometry
from otf2d.engine.em.polar import PolarGrid, image_to_polar
from otf2d.engine.em.preprocess import fourier_crop, normalise_background


class ParticlePreparer:
    """Preprocessing of one geometry (holds the masks and frequency tables).

    Parameters
    ----------
    geometry, grid
        The sampling.
    window
        ``(D, D)`` soft circular mask applied to the internal-box images.
    device, dtype
        Where and in which real dtype to compute.
    """

    def __init__(
        self, geometry: Geometry, grid: PolarGrid, window: torch.Tensor, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.geometry = geometry
        self.grid = grid
        self.window = window
        self.device = device
        self.dtype = dtype
        self.complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        fx, fy = grid.frequencies_per_angstrom(geometry.internal_pixel_angstrom)
        self._fx = fx[:, : geometry.n_angles // 2].to(dtype).contiguous()
        self._fy = fy[:, : geometry.n_angles // 2].to(dtype).contiguous()
        self._basis = ctf_basis(self._fx, self._fy)

    def tensors(self, batch: ParticleBatch | TensorBatch) -> TensorBatch:
        """``batch`` as tensors on the device, after checking its box and pixel size.

        Raises
        ------
        InputError
            If a ``ParticleBatch`` has another box or pixel size than the geometry.
        """
        if isinstance(batch, TensorBatch):
            return TensorBatch(batch.images.to(self.device), batch.ctf)
        g = self.geometry
        if batch.box_size != (g.box, g.box):
            raise InputError(None, f"particles of box {batch.box_size} given to a classifier of box {g.box}")
        if not math.isclose(batch.pixel_size_angstrom, g.pixel_size_angstrom, rel_tol=1e-4):
            raise InputError(
                None,
                f"particles at {batch.pixel_size_angstrom} Å/px given to a classifier at {g.pixel_size_angstrom} Å/px",
            )
        return TensorBatch.from_particles(batch, self.device)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised, Fourier-cropped, masked particle images ``(n, D, D)`` (internal pixels)."""
        g = self.geometry
        x = images.to(device=self.device, dtype=self.dtype)
        x = normalise_background(x, g.mask_inner_radius * g.box / g.internal_box)
        return fourier_crop(x, g.internal_box) * self.window

    def ctf(self, ctf: CtfTensors) -> torch.Tensor:
        """The CTF of each particle at the polar samples, ``(n, N + 1, Q)`` real."""
        half = relion_ctf(ctf, self._fx, self._fy, self._basis)
        return torch.cat([half, half], dim=-1)  # C(θ + π) = C(θ)

    def prepare(self, images: torch.Tensor, ctf: CtfTensors) -> tuple[torch.Tensor, torch.Tensor]:
        """Polar samples ``(n, N + 1, Q)`` complex and CTF ``(n, N + 1, Q)`` real of particles."""
        samples = image_to_polar(self.images(images), self.grid).to(self.complex_dtype)
        return samples, self.ctf(ctf)

    def chunks(self, batch: BatchLike, size: int) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """``(slice, samples, ctf)`` of ``batch`` in chunks of ``size`` particles.

        Raises
        ------
        RuntimeError
            If a ``PreparedBatch`` was prepared for another polar grid (a programming error).
        """
        if isinstance(batch, PreparedBatch):
            shape = (self.grid.n_rings + 1, self.grid.n_angles)
            if tuple(batch.samples.shape[1:]) != shape or tuple(batch.ctf.shape[1:]) != shape:
                got = tuple(batch.samples.shape[1:])
                raise RuntimeError(f"prepared particles of shape {got}, expected {shape}")
            for start in range(0, len(batch), size):
                sl = slice(start, min(start + size, len(batch)))
                yield sl, batch.samples[sl].to(self.device), batch.ctf[sl].to(self.device)
            return
        tb = self.tensors(batch)
        for start in range(0, len(tb), size):
            sl = slice(start, min(start + size, len(tb)))
            samples, ctf = self.prepare(tb.images[sl], tb.ctf.take(sl))
            yield sl, samples, ctf


__all__ = ["ParticlePreparer"]
