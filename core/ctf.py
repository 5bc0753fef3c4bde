"""RELION's 2D CTF in NumPy (float64): a straight transcription of ``CTF::getCTF``.

Conventions
-----------
- Images are indexed ``[y, x]``. The CTF is returned on the grid of ``numpy.fft.rfft2`` (shape
  ``(box, box // 2 + 1)``, ``rfft=True``) or ``numpy.fft.fft2`` (shape ``(box, box)``,
  ``rfft=False``) of such an image, *not* fftshifted: row ``i`` has spatial frequency
  ``Y = fftfreq(box)[i] / pixel_size`` and column ``j`` has ``X = rfftfreq(box)[j] / pixel_size``
  (``fftfreq`` for the full grid), both in 1/Å. ``X`` is the column (fast, x) frequency.
- RELION's own ``CTF::getFftwImage`` takes row ``box/2`` (even box) as ``+box/2``; NumPy's
  ``fftfreq`` calls it ``-box/2``. The two differ only on that Nyquist row where astigmatism makes
  the CTF odd in ``Y``; everywhere else they agree exactly.
- ``rlnDefocusAngle`` φ is the angle from the x axis (counter-clockwise towards +y) to the
  direction along which the defocus is ``rlnDefocusU``.

The formula (RELION ``ctf.cpp``/``ctf.h``)::

    CTF(X, Y) = -sin(γ) · exp(-B/4 · u²) · scale,     u² = X² + Y²
    γ = K1 · (Axx·X² + 2·Axy·X·Y + Ayy·Y²) + K2 · u⁴ − K5 − K3
    K1 = π·λ,  K2 = π/2 · Cs · λ³ (Cs in Å),  K3 = atan(Q0 / √(1 − Q0²)),  K5 = phase shift (rad)
    λ = 12.2643247 / √(V · (1 + 0.978466e-6 · V)) Å   (V in volts)
    A = Qᵀ · diag(−U, −V) · Q,  Q = [[cos φ, sin φ], [−sin φ, cos φ]]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError, PixelSizeError
from otf2d.core.particles import CtfParams

FloatArray = npt.NDArray[np.float64]


def relion_wavelength_angstrom(voltage_kv: npt.ArrayLike) -> FloatArray:
    """Relativistic electron wavelength in Å, exactly as RELION computes it.

    Parameters
    ----------
    voltage_kv
        Acceleration voltage(s) in kV, any shape.

    Returns
    -------
    numpy.ndarray
        λ in Å, same shape as ``voltage_kv``.
    """
    volts = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return np.asarray(12.2643247 / np.sqrt(volts * (1.0 + volts * 0.978466e-6)))


def fft_frequency_grid(box: int, pixel_size_angstrom: float, *, rfft: bool = True) -> tuple[FloatArray, FloatArray]:
    """Spatial frequencies ``(X, Y)`` in 1/Å of the (r)FFT grid of a ``(box, box)`` image.

    Parameters
    ----------
    box
        Image side in pixels (> 1).
    pixel_size_angstrom
        Å per pixel (> 0).
    rfft
        ``True``: the ``rfft2`` half grid ``(box, box // 2 + 1)``; ``False``: the full ``fft2`` grid.

    Returns
    -------
    tuple of numpy.ndarray
        ``X`` (column frequency) and ``Y`` (row frequency), each of the grid's shape, 1/Å.
    """
    _check_geometry(box, pixel_size_angstrom)
    y = np.fft.fftfreq(box) / pixel_size_angstrom
    x = (np.fft.rfftfreq(box) if rfft else np.fft.fftfreq(box)) / pixel_size_angstrom
    yy, xx = np.meshgrid(y, x, indexing="ij")
    return xx, yy


def relion_ctf_2d(ctf: CtfParams, pixel_size_angstrom: float, box: int, *, rfft: bool = True) -> FloatArray:
    """RELION's CTF of ``n`` particles on the (r)FFT grid of a ``(box, box)`` image.

    Parameters
    ----------
    ctf
        CTF parameters of ``n`` particles in RELION units (defocus Å, angle degrees, kV, Cs mm,
        amplitude contrast fraction, phase shift degrees, B-factor Å², scale).
    pixel_size_angstrom
        Å per pixel of the image the CTF is for (> 0).
    box
        Image side in pixels (> 1).
    rfft
        ``True`` (default): shape ``(n, box, box // 2 + 1)``, the grid of ``numpy.fft.rfft2``;
        ``False``: shape ``(n, box, box)``, the grid of ``numpy.fft.fft2``. Neither is fftshifted.

    Returns
    -------
    numpy.ndarray
        float64 CTF values, ``-sin(γ)`` times the B-factor envelope and the scale.

    Raises
    ------
    InputError
        If the geometry is invalid, a voltage is not positive or an amplitude contrast is
        outside ``(-1, 1)``.
    """
    xx, yy = fft_frequency_grid(box, pixel_size_angstrom, rfft=rfft)
    voltage = ctf.voltage_kv
    q0 = ctf.amplitude_contrast
    if np.any(voltage <= 0):
        raise InputError(None, "CTF voltage must be > 0 kV")
    if np.any(np.abs(q0) >= 1):
        raise InputError(None, "CTF amplitude contrast must lie in (-1, 1)")
    lam = relion_wavelength_angstrom(voltage)
    cs_angstrom = ctf.spherical_aberration_mm * 1e7
    k1 = np.pi * lam
    k2 = np.pi / 2.0 * cs_angstrom * lam**3
    k3 = np.arctan(q0 / np.sqrt(1.0 - q0 * q0))
    k4 = -ctf.bfactor_angstrom2 / 4.0
    k5 = np.deg2rad(ctf.phase_shift_degrees)

    # A = Qᵀ · diag(-U, -V) · Q, one 2×2 matrix per particle.
    phi = np.deg2rad(ctf.defocus_angle_degrees)
    c, s = np.cos(phi), np.sin(phi)
    q = np.stack([np.stack([c, s], axis=-1), np.stack([-s, c], axis=-1)], axis=-2)  # (n, 2, 2)
    d = np.zeros_like(q)
    d[:, 0, 0] = -ctf.defocus_u_angstrom
    d[:, 1, 1] = -ctf.defocus_v_angstrom
    a = np.swapaxes(q, -1, -2) @ d @ q
    axx = a[:, 0, 0, None, None]
    axy = a[:, 0, 1, None, None]
    ayy = a[:, 1, 1, None, None]

    def per(v: FloatArray) -> FloatArray:
        return v[:, None, None]

    u2 = xx * xx + yy * yy
    gamma = per(k1) * (axx * xx * xx + 2.0 * axy * xx * yy + ayy * yy * yy) + per(k2) * u2 * u2
    gamma = gamma - per(k5) - per(k3)
    out = -np.sin(gamma)
    out *= np.exp(per(k4) * u2)
    out *= per(ctf.scale)
    return np.asarray(out, dtype=np.float64)


def _check_geometry(box: int, pixel_size_angstrom: float) -> None:
    if int(box) != box or box < 2:
        raise InputError(None, f"box must be an integer >= 2, got {box}")
    if not np.isfinite(pixel_size_angstrom) or pixel_size_angstrom <= 0:
        raise PixelSizeError(None, f"pixel size must be > 0 Å, got {pixel_size_angstrom}")


__all__ = ["fft_frequency_grid", "relion_ctf_2d", "relion_wavelength_angstrom"]
