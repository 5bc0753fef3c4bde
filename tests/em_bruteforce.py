"""A direct, float64 Cartesian scorer: the reference the fast polar E-step is tested against.

For particle ``X`` (DFT of the preprocessed internal image, phase origin at the centre pixel),
class image ``a``, rotation ψ and particle-frame origin ``o`` (px)::

    LL = −Σ_f |X(f) − C(f)·A(R(ψ)·f)·e^{2πi f·o/D}|² / σ²(round|f|)     (each Hermitian pair once)

with ``A(k) = Σ_p a(p)·e^{−2πi k·p/D}`` evaluated exactly at the rotated frequencies (a direct
non-uniform DFT), ``f`` over the full DFT grid on the alignment rings. Nothing here comes from the
engine except the inputs.
"""

from __future__ import annotations

import numpy as np


def centred_dft(images: np.ndarray) -> np.ndarray:
    """DFT with phase origin at pixel ``D // 2``; full grid, not shifted."""
    return np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1)))


def direct_log_likelihood(
    particles: np.ndarray,
    ctf: np.ndarray,
    classes: np.ndarray,
    psi_degrees: np.ndarray,
    origins_px: np.ndarray,
    sigma2: np.ndarray,
    ring_min: int,
    ring_max: int,
) -> np.ndarray:
    """Log-likelihood of particles for every class, rotation and (per-rotation) origin.

    Parameters
    ----------
    particles
        ``(B, D, D)`` preprocessed particle images.
    ctf
        ``(B, D, D)`` CTF on the full DFT grid (``fftfreq`` order).
    classes
        ``(K, D, D)`` class images.
    psi_degrees
        ``(R,)`` rotations.
    origins_px
        ``(R, T, 2)`` particle-frame origins ``(x, y)`` per rotation.
    sigma2
        ``(N + 1,)`` noise power per ring.
    ring_min, ring_max
        Alignment rings (inclusive).

    Returns
    -------
    numpy.ndarray
        ``(B, K, R, T)``.
    """
    d = particles.shape[-1]
    f = np.fft.fftfreq(d, 1.0 / d)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    ring = np.round(np.hypot(fx, fy)).astype(int)
    sel = (ring >= ring_min) & (ring <= ring_max)
    fx, fy, ring = fx[sel], fy[sel], ring[sel]
    x = centred_dft(particles)[:, sel]  # (B, F)
    c = ctf[:, sel]
    w = 0.5 / sigma2[ring]
    pc = np.arange(d) - d // 2
    py, px = np.meshgrid(pc, pc, indexing="ij")
    px, py = px.ravel(), py.ravel()
    flat = classes.reshape(classes.shape[0], -1)
    out = np.zeros((particles.shape[0], classes.shape[0], len(psi_degrees), origins_px.shape[1]))
    for r, psi in enumerate(np.deg2rad(psi_degrees)):
        kx = np.cos(psi) * fx - np.sin(psi) * fy
        ky = np.sin(psi) * fx + np.cos(psi) * fy
        rotated = flat @ np.exp(-2j * np.pi * (np.outer(kx, px) + np.outer(ky, py)) / d).T  # (K, F)
        for t, (ox, oy) in enumerate(origins_px[r]):
            ramp = np.exp(2j * np.pi * (fx * ox + fy * oy) / d)
            model = c[:, None, :] * (rotated * ramp)[None]  # (B, K, F)
            out[:, :, r, t] = -(np.abs(x[:, None, :] - model) ** 2 * w).sum(axis=-1)
    return out
