"""Projections of a 3D map at RELION Euler angles, by Fourier slice (NumPy, batched).

Conventions (pinned against RELION 3.1.3 by ``tests/test_projection.py``)
-------------------------------------------------------------------------
- A map is indexed ``[z, y, x]``; an image ``[y, x]``. The rotation centre of a map of side ``n``
  is voxel ``n // 2`` on every axis, the centre of an image of side ``b`` is pixel ``b // 2``
  (RELION's ``setXmippOrigin``).
- ``euler_matrix_relion(rot, tilt, psi)`` is RELION's ``Euler_angles2matrix`` (ZYZ:
  ``A = R_z(psi) · R_y(tilt) · R_z(rot)``). The projection at ``A`` is
  ``P(x, y) = ∫ V(Aᵀ · (x, y, z)) dz`` (coordinates as ``(x, y, z)`` column vectors); in Fourier
  space the 2D frequency ``k`` samples the 3D transform at ``Aᵀ · (kx, ky, 0)``, exactly as
  RELION's ``Projector::project`` does with ``Ainv``. The viewing direction (the map direction
  that ends up along the beam) is the third row of ``A``.
- Shifts follow RELION's ``rlnOriginXAngst``/``rlnOriginYAngst``: they are the shift that
  *centres* the particle, so a particle with origin ``(ox, oy)`` Å has its centre at
  ``box // 2 - (ox, oy) / pixel_size`` pixels, and translating the image by ``+(ox, oy)``
  re-centres it (``relion_project`` shifts its projections by ``-origin``).
- ``relion_project`` itself puts the centre of *odd*-sized images one pixel off (at
  ``b // 2 + 1``; ASPIRE's tests note the same). RELION extracts even boxes only; the simulator
  writes even boxes.
- Values are line integrals in map-voxel units (for equal map and image sampling a projection is
  the plain sum of voxels along z), computed like RELION's projector: the map is zero-padded
  ``padding`` times, divided by the trilinear gridding correction ``sinc²(r / (padding·n))``,
  Fourier transformed, and the central slice is trilinearly interpolated, up to the map's Nyquist
  frequency and the image's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError, PixelSizeError

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]

#: Projections computed per chunk, to bound the memory of the interpolation (~100 MB at box 128).
CHUNK = 128


def euler_matrix_relion(
    rot_degrees: npt.ArrayLike, tilt_degrees: npt.ArrayLike, psi_degrees: npt.ArrayLike
) -> FloatArray:
    """RELION's ``Euler_angles2matrix``: rotation matrices ``A`` of shape ``(n, 3, 3)``.

    Parameters
    ----------
    rot_degrees, tilt_degrees, psi_degrees
        ``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi`` in degrees, each broadcastable to ``(n,)``.

    Returns
    -------
    numpy.ndarray
        ``(n, 3, 3)`` float64; ``A @ (x, y, z)`` maps map coordinates to image coordinates.
    """
    rot, tilt, psi = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (rot_degrees, tilt_degrees, psi_degrees))
    )
    a, b, g = np.deg2rad(rot), np.deg2rad(tilt), np.deg2rad(psi)
    ca, cb, cg = np.cos(a), np.cos(b), np.cos(g)
    sa, sb, sg = np.sin(a), np.sin(b), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty((*rot.shape, 3, 3), dtype=np.float64)
    m[..., 0, 0] = cg * cc - sg * sa
    m[..., 0, 1] = cg * cs + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cc - cg * sa
    m[..., 1, 1] = -sg * cs + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sc
    m[..., 2, 1] = ss
    m[..., 2, 2] = cb
    return m


def viewing_direction(rot_degrees: npt.ArrayLike, tilt_degrees: npt.ArrayLike) -> FloatArray:
    """Unit vector of the map direction projected along the beam, shape ``(n, 3)`` as ``(x, y, z)``.

    It is the third row of ``euler_matrix_relion(rot, tilt, psi)`` and does not depend on psi.
    """
    rot, tilt = np.broadcast_arrays(np.atleast_1d(rot_degrees), np.atleast_1d(tilt_degrees))
    a, b = np.deg2rad(np.asarray(rot, dtype=np.float64)), np.deg2rad(np.asarray(tilt, dtype=np.float64))
    return np.stack([np.sin(b) * np.cos(a), np.sin(b) * np.sin(a), np.cos(b)], axis=-1)


@dataclass(frozen=True)
class VolumeSpectrum:
    """A map prepared for Fourier-slice projection.

    Attributes
    ----------
    half_spectrum
        ``(N, N, N // 2 + 1)`` complex128, ``N = padding · map_box``: ``rfftn`` of the padded,
        gridding-corrected map with its centre moved to voxel 0, then fftshifted along z and y
        (zero frequency at index ``N // 2`` on those axes, at 0 along x).
    map_box
        Side of the original map in voxels.
    padding
        Zero-padding factor.
    pixel_size_angstrom
        Voxel size of the map in Å.
    """

    half_spectrum: ComplexArray
    map_box: int
    padding: int
    pixel_size_angstrom: float

    @property
    def padded_box(self) -> int:
        """``N = padding · map_box``."""
        return int(self.half_spectrum.shape[0])


def prepare_volume(volume: npt.ArrayLike, pixel_size_angstrom: float, *, padding: int = 2) -> VolumeSpectrum:
    """Pad, gridding-correct and Fourier transform a cubic map once, for many projections.

    Parameters
    ----------
    volume
        ``(n, n, n)`` map indexed ``[z, y, x]``, rotation centre at voxel ``n // 2``.
    pixel_size_angstrom
        Voxel size in Å (> 0).
    padding
        Zero-padding factor (RELION's default is 2).

    Returns
    -------
    VolumeSpectrum
        The transformed map.

    Raises
    ------
    InputError
        If the map is not a finite cube or the padding is below 1.
    """
    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3 or len(set(vol.shape)) != 1 or vol.shape[0] < 2:
        raise InputError(None, f"the map must be a cube of side >= 2, got shape {vol.shape}")
    if not np.all(np.isfinite(vol)):
        raise InputError(None, "the map contains NaN or Inf voxels")
    if not np.isfinite(pixel_size_angstrom) or pixel_size_angstrom <= 0:
        raise PixelSizeError(None, f"map voxel size must be > 0 Å, got {pixel_size_angstrom}")
    if int(padding) != padding or padding < 1:
        raise InputError(None, f"padding must be an integer >= 1, got {padding}")
    n = vol.shape[0]
    big = int(padding) * n
    centre = n // 2
    r = np.arange(n, dtype=np.float64) - centre
    radius = np.sqrt(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2)
    sinc = np.sinc(radius / big)
    padded = np.zeros((big, big, big), dtype=np.float64)
    lo = big // 2 - centre
    padded[lo : lo + n, lo : lo + n, lo : lo + n] = vol / (sinc * sinc)
    spectrum = np.fft.rfftn(np.fft.ifftshift(padded))
    spectrum = np.fft.fftshift(spectrum, axes=(0, 1))
    return VolumeSpectrum(
        half_spectrum=np.ascontiguousarray(spectrum),
        map_box=n,
        padding=int(padding),
        pixel_size_angstrom=float(pixel_size_angstrom),
    )


def project_fourier(
    spectrum: VolumeSpectrum, rotations: npt.ArrayLike, box: int, pixel_size_angstrom: float
) -> ComplexArray:
    """``rfft2`` of the projections at ``rotations``, with the image centre at pixel ``[0, 0]``.

    Parameters
    ----------
    spectrum
        The prepared map.
    rotations
        ``(n, 3, 3)`` RELION rotation matrices (see ``euler_matrix_relion``).
    box
        Side of the output images in pixels.
    pixel_size_angstrom
        Å per output pixel; may differ from the map's voxel size (the map is resampled).

    Returns
    -------
    numpy.ndarray
        ``(n, box, box // 2 + 1)`` complex128 on NumPy's ``rfft2`` grid, zero beyond the map's
        and the image's Nyquist frequency. ``numpy.fft.irfft2`` of it is the projection centred
        at pixel ``[0, 0]``; see ``centre_and_shift`` to place it.
    """
    rot = np.asarray(rotations, dtype=np.float64)
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise InputError(None, f"rotations must have shape (n, 3, 3), got {rot.shape}")
    if int(box) != box or box < 2:
        raise InputError(None, f"box must be an integer >= 2, got {box}")
    if not np.isfinite(pixel_size_angstrom) or pixel_size_angstrom <= 0:
        raise PixelSizeError(None, f"pixel size must be > 0 Å, got {pixel_size_angstrom}")
    big = spectrum.padded_box
    # Output frequency k / (box · p_out) equals padded-map frequency j / (N · p_map).
    scale = big * spectrum.pixel_size_angstrom / (box * pixel_size_angstrom)
    ky = np.fft.fftfreq(box) * box
    kx = np.fft.rfftfreq(box) * box
    kyy, kxx = np.meshgrid(ky, kx, indexing="ij")
    inside = (kxx**2 + kyy**2 <= (box / 2) ** 2) & ((kxx**2 + kyy**2) * scale**2 <= (big // 2) ** 2)
    flat_index = np.flatnonzero(inside)
    k2d = np.stack([kxx.ravel()[flat_index], kyy.ravel()[flat_index]], axis=-1) * scale  # (m, 2)
    # Values in map-voxel-sum units whatever the output sampling.
    amplitude = (spectrum.pixel_size_angstrom / pixel_size_angstrom) ** 2
    out = np.zeros((rot.shape[0], box * (box // 2 + 1)), dtype=np.complex128)
    for start in range(0, rot.shape[0], CHUNK):
        a = rot[start : start + CHUNK]
        # 3D coordinates Aᵀ·(kx, ky, 0): (b, m, 3) as (x, y, z).
        coords = np.einsum("mi,bij->bmj", k2d, a[:, :2, :])
        out[start : start + CHUNK, flat_index] = amplitude * _interpolate_half(spectrum, coords)
    return out.reshape(rot.shape[0], box, box // 2 + 1)


def _interpolate_half(spectrum: VolumeSpectrum, coords: FloatArray) -> ComplexArray:
    """Trilinear interpolation of the Hermitian half spectrum at ``coords`` (``(..., 3)``, x y z)."""
    big = spectrum.padded_box
    half = spectrum.half_spectrum
    flip = coords[..., 0] < 0
    c = np.where(flip[..., None], -coords, coords)
    x0f = np.floor(c[..., 0])
    y0f = np.floor(c[..., 1])
    z0f = np.floor(c[..., 2])
    fx, fy, fz = c[..., 0] - x0f, c[..., 1] - y0f, c[..., 2] - z0f
    nx = half.shape[2]
    x0 = x0f.astype(np.int64)
    x1 = np.minimum(x0 + 1, nx - 1)
    y0 = (y0f.astype(np.int64) + big // 2) % big
    y1 = (y0 + 1) % big
    z0 = (z0f.astype(np.int64) + big // 2) % big
    z1 = (z0 + 1) % big
    flat = half.reshape(-1)
    row_z0 = z0 * big
    row_z1 = z1 * big
    result = np.zeros(c.shape[:-1], dtype=np.complex128)
    for zz, wz in ((row_z0, 1.0 - fz), (row_z1, fz)):
        for yy, wy in ((y0, 1.0 - fy), (y1, fy)):
            base = (zz + yy) * nx
            wzy = wz * wy
            result += (wzy * (1.0 - fx)) * flat[base + x0]
            result += (wzy * fx) * flat[base + x1]
    return np.where(flip, np.conj(result), result)


def centre_and_shift(box: int, shift_x_pixels: npt.ArrayLike, shift_y_pixels: npt.ArrayLike) -> ComplexArray:
    """Phase factors that move an image centred at ``[0, 0]`` to ``box // 2 + shift``.

    Parameters
    ----------
    box
        Image side in pixels.
    shift_x_pixels, shift_y_pixels
        ``(n,)`` displacement of the particle centre from the box centre, pixels (+x = +column).

    Returns
    -------
    numpy.ndarray
        ``(n, box, box // 2 + 1)`` complex128 to multiply an ``rfft2`` with.
    """
    sx = np.atleast_1d(np.asarray(shift_x_pixels, dtype=np.float64)) + box // 2
    sy = np.atleast_1d(np.asarray(shift_y_pixels, dtype=np.float64)) + box // 2
    fy = np.fft.fftfreq(box)[None, :, None]
    fx = np.fft.rfftfreq(box)[None, None, :]
    return np.exp(-2j * np.pi * (fx * sx[:, None, None] + fy * sy[:, None, None]))


def project(
    spectrum: VolumeSpectrum,
    rot_degrees: npt.ArrayLike,
    tilt_degrees: npt.ArrayLike,
    psi_degrees: npt.ArrayLike,
    box: int,
    pixel_size_angstrom: float,
    *,
    origin_x_angstrom: npt.ArrayLike = 0.0,
    origin_y_angstrom: npt.ArrayLike = 0.0,
) -> FloatArray:
    """Real-space projections at RELION angles and origins.

    Parameters
    ----------
    spectrum
        The prepared map (``prepare_volume``).
    rot_degrees, tilt_degrees, psi_degrees
        RELION Euler angles in degrees, broadcastable to ``(n,)``.
    box
        Output side in pixels.
    pixel_size_angstrom
        Å per output pixel.
    origin_x_angstrom, origin_y_angstrom
        RELION ``rlnOriginXAngst``/``rlnOriginYAngst``: the particle centre lands at
        ``box // 2 - origin / pixel_size``.

    Returns
    -------
    numpy.ndarray
        ``(n, box, box)`` float64 images indexed ``[y, x]``.
    """
    a = euler_matrix_relion(rot_degrees, tilt_degrees, psi_degrees)
    ox, oy = np.broadcast_arrays(
        np.atleast_1d(np.asarray(origin_x_angstrom, dtype=np.float64)),
        np.atleast_1d(np.asarray(origin_y_angstrom, dtype=np.float64)),
    )
    ox = np.broadcast_to(ox, (a.shape[0],))
    oy = np.broadcast_to(oy, (a.shape[0],))
    f = project_fourier(spectrum, a, box, pixel_size_angstrom)
    f *= centre_and_shift(box, -ox / pixel_size_angstrom, -oy / pixel_size_angstrom)
    return np.fft.irfft2(f, s=(box, box))


__all__ = [
    "VolumeSpectrum",
    "centre_and_shift",
    "euler_matrix_relion",
    "prepare_volume",
    "project",
    "project_fourier",
    "viewing_direction",
]
