"""Junk the picker lets through: pure noise, ice, carbon edges, aggregates, a different protein.

Every generator returns a ``JunkImages`` of clean (noise-free, CTF-free) real-space images in the
units of ``otf2d.simulator.projection.project`` (so the caller applies the same CTF and noise as to the
particles), plus the pose of the projection it contains, if any (NaN otherwise): a decoy's own
pose, the first member of an aggregate. Amplitudes are given relative to ``particle_peak``, a
typical maximum of a clean particle projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from otf2d.simulator.projection import VolumeSpectrum, centre_and_shift, euler_matrix_relion, project_fourier
from otf2d.simulator.views import uniform_views

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class JunkImages:
    """Clean junk images and the pose of the projection inside each, if any.

    Attributes
    ----------
    images
        ``(n, box, box)`` float64, real space, before CTF and noise.
    junk_type
        The kind, one of ``otf2d.simulator.config.JUNK_TYPES``.
    rot, tilt, psi, origin_x_angstrom, origin_y_angstrom
        ``(n,)`` RELION pose (degrees, Å) of the projection contained, NaN where there is none.
    """

    images: FloatArray
    junk_type: str
    rot: FloatArray
    tilt: FloatArray
    psi: FloatArray
    origin_x_angstrom: FloatArray
    origin_y_angstrom: FloatArray


def _no_pose(images: FloatArray, junk_type: str) -> JunkImages:
    nan = np.full(images.shape[0], np.nan)
    return JunkImages(images, junk_type, nan, nan.copy(), nan.copy(), nan.copy(), nan.copy())


def _grid(box: int) -> tuple[FloatArray, FloatArray]:
    axis = np.arange(box, dtype=np.float64) - box // 2
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    return xx, yy


def _smooth_noise(n: int, box: int, rng: np.random.Generator, correlation_pixels: float) -> FloatArray:
    """Unit-variance Gaussian noise low-passed with a Gaussian of ``correlation_pixels``."""
    white = rng.normal(size=(n, box, box))
    fy = np.fft.fftfreq(box)[:, None]
    fx = np.fft.rfftfreq(box)[None, :]
    kernel = np.exp(-2.0 * (np.pi * correlation_pixels) ** 2 * (fx**2 + fy**2))
    smooth = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=(box, box))
    return np.asarray(smooth / smooth.std(axis=(1, 2), keepdims=True))


def pure_noise(n: int, box: int) -> JunkImages:
    """Empty boxes: the caller's noise is all there will be."""
    return _no_pose(np.zeros((n, box, box)), "noise")


def ice_blobs(
    n: int, box: int, rng: np.random.Generator, particle_peak: float, *, canvas: int | None = None
) -> JunkImages:
    """One to three soft-edged ellipses of crystalline ice, 2–5× brighter than a particle.

    Parameters
    ----------
    n, box
        Number of images, and the particle box (px) that sizes and places the blobs.
    rng
        Random generator.
    particle_peak
        Typical maximum of a clean particle projection.
    canvas
        Side of the images returned (default ``box``): a larger canvas centred on the box lets
        the caller apply the CTF without wrap-around from blobs cut by the box edge.
    """
    canvas = box if canvas is None else canvas
    xx, yy = _grid(canvas)
    out = np.zeros((n, canvas, canvas))
    for i in range(n):
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(-0.45, 0.45, 2) * box
            a, b = rng.uniform(0.12, 0.4, 2) * box
            theta = rng.uniform(0.0, np.pi)
            u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
            v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
            r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
            edge = rng.uniform(0.05, 0.2)
            out[i] += rng.uniform(2.0, 5.0) * particle_peak / (1.0 + np.exp((r - 1.0) / edge))
        out[i] *= 1.0 + 0.15 * _smooth_noise(1, canvas, rng, box / 16)[0]
    return _no_pose(out, "ice")


def carbon_edges(
    n: int, box: int, rng: np.random.Generator, particle_peak: float, *, canvas: int | None = None
) -> JunkImages:
    """The edge of the carbon film: a soft step at a random angle and offset, with mottle.

    Parameters
    ----------
    n, box
        Number of images, and the particle box (px) that places the edge.
    rng
        Random generator.
    particle_peak
        Typical maximum of a clean particle projection.
    canvas
        Side of the images returned (default ``box``), as for ``ice_blobs``.
    """
    canvas = box if canvas is None else canvas
    xx, yy = _grid(canvas)
    out = np.zeros((n, canvas, canvas))
    for i in range(n):
        theta = rng.uniform(0.0, 2.0 * np.pi)
        offset = rng.uniform(-0.3, 0.3) * box
        width = rng.uniform(1.0, 4.0)
        distance = xx * np.cos(theta) + yy * np.sin(theta) - offset
        step = 0.5 * (1.0 + np.tanh(distance / width))
        level = rng.uniform(1.0, 3.0) * particle_peak
        mottle = 1.0 + 0.2 * _smooth_noise(1, canvas, rng, box / 20)[0]
        out[i] = level * step * mottle
    return _no_pose(out, "carbon")


def _projections(
    spectrum: VolumeSpectrum,
    n: int,
    box: int,
    pixel_size_angstrom: float,
    rng: np.random.Generator,
    shift_x_pixels: FloatArray,
    shift_y_pixels: FloatArray,
) -> tuple[FloatArray, tuple[FloatArray, FloatArray, FloatArray]]:
    rot, tilt, psi = uniform_views(n, rng)
    f = project_fourier(spectrum, euler_matrix_relion(rot, tilt, psi), box, pixel_size_angstrom)
    f *= centre_and_shift(box, shift_x_pixels, shift_y_pixels)
    return np.fft.irfft2(f, s=(box, box)), (rot, tilt, psi)


def aggregates(
    spectrum: VolumeSpectrum,
    n: int,
    box: int,
    pixel_size_angstrom: float,
    rng: np.random.Generator,
    particle_diameter_angstrom: float,
) -> JunkImages:
    """Two particles stuck together: two random views, 0.4–0.8 diameters apart.

    The pose reported is the first member's (its origin follows RELION's sign: the member's centre
    is at ``box // 2 - origin / pixel_size``).
    """
    separation = rng.uniform(0.4, 0.8, n) * particle_diameter_angstrom / pixel_size_angstrom
    direction = rng.uniform(0.0, 2.0 * np.pi, n)
    dx, dy = 0.5 * separation * np.cos(direction), 0.5 * separation * np.sin(direction)
    first, (rot, tilt, psi) = _projections(spectrum, n, box, pixel_size_angstrom, rng, dx, dy)
    second, _ = _projections(spectrum, n, box, pixel_size_angstrom, rng, -dx, -dy)
    return JunkImages(first + second, "aggregate", rot, tilt, psi, -dx * pixel_size_angstrom, -dy * pixel_size_angstrom)


def decoys(
    decoy_spectrum: VolumeSpectrum,
    n: int,
    box: int,
    pixel_size_angstrom: float,
    rng: np.random.Generator,
    shift_sigma_pixels: float,
    max_shift_pixels: float,
) -> JunkImages:
    """Projections of a different protein (``otf2d.simulator.phantom.decoy_phantom``) in random poses."""
    sx = np.clip(rng.normal(0.0, shift_sigma_pixels, n), -max_shift_pixels, max_shift_pixels)
    sy = np.clip(rng.normal(0.0, shift_sigma_pixels, n), -max_shift_pixels, max_shift_pixels)
    images, (rot, tilt, psi) = _projections(decoy_spectrum, n, box, pixel_size_angstrom, rng, sx, sy)
    return JunkImages(images, "decoy", rot, tilt, psi, -sx * pixel_size_angstrom, -sy * pixel_size_angstrom)


__all__ = ["JunkImages", "aggregates", "carbon_edges", "decoys", "ice_blobs", "pure_noise"]
