"""Built-in procedural 3D phantoms: asymmetric protein-like densities made of Gaussian blobs.

Two fixed shapes, defined in Å so that they look the same at any sampling:

- ``protein_phantom()``: the default particle when no ``--map`` is given, about 150 Å across: a
  large ellipsoidal body, a smaller head lobe, a curved arm and a knob. It has no symmetry, so
  every view is distinguishable.
- ``decoy_phantom()``: a *different* protein used as junk: a ring of blobs on a short stalk.

Both are sums of isotropic Gaussians, so their projections are known analytically
(``project_blobs``), which the tests use to pin the projector independently of RELION.
Coordinates are ``(x, y, z)`` in Å from the rotation centre; maps are indexed ``[z, y, x]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError, PixelSizeError

FloatArray = npt.NDArray[np.float64]

#: Seeds of the two shapes: fixed, so "the phantom" is one protein whatever the session seed.
_PROTEIN_SEED = 20240611
_DECOY_SEED = 77


@dataclass(frozen=True)
class GaussianBlobs:
    """A density ``Σ a_i · exp(-|r - c_i|² / (2 σ_i²))``.

    Attributes
    ----------
    centres_angstrom
        ``(m, 3)`` blob centres ``(x, y, z)`` in Å.
    sigmas_angstrom
        ``(m,)`` Gaussian widths in Å.
    amplitudes
        ``(m,)`` peak densities (arbitrary units).
    """

    centres_angstrom: FloatArray
    sigmas_angstrom: FloatArray
    amplitudes: FloatArray

    def diameter_angstrom(self) -> float:
        """Diameter of the sphere about the origin that holds every blob out to 2 σ."""
        reach = np.linalg.norm(self.centres_angstrom, axis=1) + 2.0 * self.sigmas_angstrom
        return float(2.0 * reach.max())


def _ellipsoid_points(
    rng: np.random.Generator, m: int, centre: tuple[float, float, float], semi_axes: tuple[float, float, float]
) -> FloatArray:
    direction = rng.normal(size=(m, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = rng.uniform(0.0, 1.0, size=(m, 1)) ** (1.0 / 3.0)
    return np.asarray(centre) + direction * radius * np.asarray(semi_axes)


def _centred(centres: FloatArray, sigmas: FloatArray, amplitudes: FloatArray) -> GaussianBlobs:
    mass = amplitudes * sigmas**3
    com = (centres * mass[:, None]).sum(axis=0) / mass.sum()
    return GaussianBlobs(centres - com, sigmas, amplitudes)


def protein_phantom() -> GaussianBlobs:
    """The default particle: an asymmetric four-domain protein about 150 Å across."""
    rng = np.random.default_rng(_PROTEIN_SEED)
    body = _ellipsoid_points(rng, 40, (0.0, 0.0, 0.0), (42.0, 28.0, 22.0))
    head = _ellipsoid_points(rng, 14, (36.0, 26.0, -10.0), (16.0, 14.0, 12.0))
    t = np.linspace(0.0, 1.0, 8)[:, None]
    arm = np.hstack([-22.0 - 32.0 * t, -16.0 - 28.0 * t**1.5, 8.0 + 22.0 * t**2])
    knob = np.array([[6.0, -5.0, 32.0], [11.0, -2.0, 38.0]])
    centres = np.vstack([body, head, arm, knob])
    sigmas = np.concatenate(
        [
            rng.uniform(7.0, 10.0, len(body)),
            rng.uniform(6.0, 8.0, len(head)),
            np.full(len(arm), 6.0),
            np.array([7.0, 5.0]),
        ]
    )
    amplitudes = np.concatenate(
        [
            rng.uniform(0.6, 1.0, len(body)),
            rng.uniform(0.8, 1.2, len(head)),
            np.full(len(arm), 1.3),
            np.array([1.5, 1.5]),
        ]
    )
    return _centred(centres, sigmas, amplitudes)


def decoy_phantom() -> GaussianBlobs:
    """A different protein (for junk): a wavy ring of 12 blobs, 45 Å radius, on a stalk."""
    rng = np.random.default_rng(_DECOY_SEED)
    angle = np.linspace(0.0, 2.0 * np.pi, 12, endpoint=False)
    ring = np.stack([45.0 * np.cos(angle), 45.0 * np.sin(angle), 8.0 * np.sin(2.0 * angle)], axis=1)
    stalk = np.stack([np.zeros(5), np.zeros(5), -np.linspace(12.0, 52.0, 5)], axis=1)
    centres = np.vstack([ring, stalk, [[0.0, 0.0, 0.0]]])
    sigmas = np.concatenate([rng.uniform(8.0, 11.0, len(ring)), np.full(len(stalk), 7.0), [12.0]])
    amplitudes = np.concatenate([rng.uniform(0.8, 1.1, len(ring)), np.full(len(stalk), 1.2), [1.0]])
    return _centred(centres, sigmas, amplitudes)


def render_blobs(blobs: GaussianBlobs, box: int, pixel_size_angstrom: float) -> FloatArray:
    """Sample the density on a ``(box, box, box)`` grid indexed ``[z, y, x]``, centre at ``box // 2``.

    Parameters
    ----------
    blobs
        The density.
    box
        Map side in voxels.
    pixel_size_angstrom
        Voxel size in Å.

    Returns
    -------
    numpy.ndarray
        ``(box, box, box)`` float64.
    """
    _check(box, pixel_size_angstrom)
    axis = (np.arange(box, dtype=np.float64) - box // 2) * pixel_size_angstrom
    out = np.zeros((box, box, box), dtype=np.float64)
    for (cx, cy, cz), sigma, amp in zip(blobs.centres_angstrom, blobs.sigmas_angstrom, blobs.amplitudes, strict=True):
        gx = np.exp(-((axis - cx) ** 2) / (2.0 * sigma**2))
        gy = np.exp(-((axis - cy) ** 2) / (2.0 * sigma**2))
        gz = np.exp(-((axis - cz) ** 2) / (2.0 * sigma**2))
        out += amp * gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    return out


def project_blobs(
    blobs: GaussianBlobs,
    rotations: npt.ArrayLike,
    box: int,
    pixel_size_angstrom: float,
    *,
    voxel_size_angstrom: float | None = None,
) -> FloatArray:
    """Exact projections of the blobs, in the units of ``otf2d.simulator.projection.project``.

    A blob at ``c`` lands at ``(A·c)[:2]`` and integrates along z to
    ``a·√(2π)·σ·exp(-|r - (A·c)[:2]|² / (2σ²))``; dividing by the voxel size of the map the
    projector was given gives the sum of voxels along z, which is what it returns.

    Parameters
    ----------
    blobs
        The density.
    rotations
        ``(n, 3, 3)`` RELION rotation matrices.
    box
        Image side in pixels.
    pixel_size_angstrom
        Å per image pixel.
    voxel_size_angstrom
        Voxel size of the map the comparison projector used (default: ``pixel_size_angstrom``).

    Returns
    -------
    numpy.ndarray
        ``(n, box, box)`` float64 images indexed ``[y, x]``, centre at ``box // 2``.
    """
    _check(box, pixel_size_angstrom)
    voxel = pixel_size_angstrom if voxel_size_angstrom is None else voxel_size_angstrom
    rot = np.asarray(rotations, dtype=np.float64)
    axis = (np.arange(box, dtype=np.float64) - box // 2) * pixel_size_angstrom
    moved = np.einsum("nij,mj->nmi", rot, blobs.centres_angstrom)  # (n, m, 3)
    out = np.zeros((rot.shape[0], box, box), dtype=np.float64)
    for k, (sigma, amp) in enumerate(zip(blobs.sigmas_angstrom, blobs.amplitudes, strict=True)):
        gx = np.exp(-((axis[None, :] - moved[:, k, 0, None]) ** 2) / (2.0 * sigma**2))
        gy = np.exp(-((axis[None, :] - moved[:, k, 1, None]) ** 2) / (2.0 * sigma**2))
        weight = amp * np.sqrt(2.0 * np.pi) * sigma / voxel
        out += weight * gy[:, :, None] * gx[:, None, :]
    return out


def _check(box: int, pixel_size_angstrom: float) -> None:
    if int(box) != box or box < 2:
        raise InputError(None, f"box must be an integer >= 2, got {box}")
    if not np.isfinite(pixel_size_angstrom) or pixel_size_angstrom <= 0:
        raise PixelSizeError(None, f"pixel size must be > 0 Å, got {pixel_size_angstrom}")


__all__ = ["GaussianBlobs", "decoy_phantom", "project_blobs", "protein_phantom", "render_blobs"]
