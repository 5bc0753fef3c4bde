"""Real-space constraints on class images and the geometry of class density.

Sign convention: the density is **positive** (RELION's convention: particles extracted with
inverted contrast show protein white, and with RELION's CTF, ``−sin γ``, positive at low frequency,
such particles give positive class averages). Non-negativity, re-centring and the principal axis
all act on the positive part. Particles with protein dark must be multiplied by −1 before
classification (e.g. cryoSPARC stacks whose ``blob/sign`` is −1, or RELION particles extracted
without ``--invert_contrast``).

All functions take ``(K, D, D)`` images (centre pixel ``D // 2``) and keep device and dtype.
"""

from __future__ import annotations

import math

import torch


def nonnegative(images: torch.Tensor) -> torch.Tensor:
    """Clip negative density to zero (cryoSPARC "Enforce non-negativity")."""
    return images.clamp(min=0.0)


def centre_of_mass(images: torch.Tensor, threshold: float) -> torch.Tensor:
    """Centre of mass of the pixels above ``threshold × max`` of each image, weighted by value.

    Parameters
    ----------
    images
        ``(K, D, D)``.
    threshold
        Fraction of each image's maximum (cryoSPARC's re-centre threshold, 0.2).

    Returns
    -------
    torch.Tensor
        ``(K, 2)`` ``(x, y)`` in pixels from the centre; ``(0, 0)`` for images with no positive pixel.
    """
    _, d, _ = images.shape
    c = torch.arange(d, device=images.device, dtype=images.dtype) - d // 2
    peak = images.amax(dim=(1, 2), keepdim=True)
    w = torch.where((images > threshold * peak) & (peak > 0), images, torch.zeros_like(images))
    total = w.sum(dim=(1, 2))
    safe = torch.where(total > 0, total, torch.ones_like(total))
    x = (w * c[None, None, :]).sum(dim=(1, 2)) / safe
    y = (w * c[None, :, None]).sum(dim=(1, 2)) / safe
    out = torch.stack([x, y], dim=1)
    return torch.where((total > 0)[:, None], out, torch.zeros_like(out))


def fourier_shift_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Move image content by ``shifts`` pixels: ``out(p) = image(p − s)`` (periodic, sub-pixel).

    Parameters
    ----------
    images
        ``(K, D, D)`` real.
    shifts
        ``(K, 2)`` ``(x, y)`` in pixels.

    Returns
    -------
    torch.Tensor
        ``(K, D, D)``.
    """
    _, d, _ = images.shape
    spec = torch.fft.rfft2(images)
    ky = torch.fft.fftfreq(d, device=images.device, dtype=torch.float64)
    kx = torch.fft.rfftfreq(d, device=images.device, dtype=torch.float64)
    s = shifts.to(torch.float64)
    phase = -2.0 * math.pi * (s[:, 0, None, None] * kx[None, None, :] + s[:, 1, None, None] * ky[None, :, None])
    ramp = torch.polar(torch.ones_like(phase), phase).to(spec.dtype)
    return torch.fft.irfft2(spec * ramp, s=(d, d)).to(images.dtype)


def principal_axis(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Direction of the long axis of each image's positive density, from its second moments.

    Parameters
    ----------
    images
        ``(K, D, D)``.

    Returns
    -------
    tuple of torch.Tensor
        ``angle`` ``(K,)``: degrees from the +x axis (counter-clockwise, towards +y), in
        ``[−90, 90)``; ``elongation`` ``(K,)``: ratio of the two principal standard deviations
        (≥ 1; 1 for isotropic or empty images).
    """
    _, d, _ = images.shape
    w = images.clamp(min=0.0).to(torch.float64)
    c = torch.arange(d, device=images.device, dtype=torch.float64) - d // 2
    total = w.sum(dim=(1, 2)).clamp(min=1e-30)
    mx = (w * c[None, None, :]).sum(dim=(1, 2)) / total
    my = (w * c[None, :, None]).sum(dim=(1, 2)) / total
    dx = c[None, None, :] - mx[:, None, None]
    dy = c[None, :, None] - my[:, None, None]
    sxx = (w * dx * dx).sum(dim=(1, 2)) / total
    syy = (w * dy * dy).sum(dim=(1, 2)) / total
    sxy = (w * dx * dy).sum(dim=(1, 2)) / total
    angle = 0.5 * torch.atan2(2.0 * sxy, sxx - syy)
    root = torch.sqrt(((sxx - syy) / 2) ** 2 + sxy**2)
    big = (sxx + syy) / 2 + root
    small = ((sxx + syy) / 2 - root).clamp(min=1e-30)
    elongation = torch.sqrt(big / small)
    deg = torch.rad2deg(angle)
    deg = torch.where(deg >= 90.0, deg - 180.0, deg)
    return deg.to(images.dtype), elongation.to(images.dtype)


def upright_rotation(images: torch.Tensor, min_elongation: float) -> torch.Tensor:
    """Counter-clockwise turn (degrees, ``[−90, 90)``) that makes each image's long axis vertical.

    ``Δ = 90° − axis`` from :func:`principal_axis` (no polarity); 0 for images whose principal
    standard deviations differ by less than ``min_elongation``. Returns ``(K,)`` float64.
    """
    axis, elongation = principal_axis(images)
    delta = 90.0 - axis.to(torch.float64)
    delta = torch.where(delta >= 90.0, delta - 180.0, delta)
    return torch.where(elongation >= min_elongation, delta, torch.zeros_like(delta))


__all__ = ["centre_of_mass", "fourier_shift_images", "nonnegative", "principal_axis", "upright_rotation"]
