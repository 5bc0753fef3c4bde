"""Particle preprocessing: background normalisation, Fourier cropping, soft circular masks.

All functions take and return tensors ``(n, h, w)`` (real space, ``[y, x]``, centre at pixel
``h // 2``) and keep the device and dtype of their input.
"""

from __future__ import annotations

import math

import torch


def radius_map(box: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Distance of every pixel from the box centre (pixel ``box // 2``), shape ``(box, box)``, px."""
    c = torch.arange(box, device=device, dtype=dtype) - box // 2
    return torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)


def soft_circular_mask(
    box: int,
    inner_radius: float,
    outer_radius: float,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A circular mask with a raised-cosine edge.

    Parameters
    ----------
    box
        Side (px).
    inner_radius, outer_radius
        1 up to ``inner_radius`` (px), 0 from ``outer_radius`` on, ``0.5·(1 + cos)`` between.

    Returns
    -------
    torch.Tensor
        ``(box, box)`` values in [0, 1].
    """
    r = radius_map(box, device, dtype)
    if outer_radius <= inner_radius:
        return (r <= inner_radius).to(dtype)
    t = ((r - inner_radius) / (outer_radius - inner_radius)).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def normalise_background(images: torch.Tensor, radius: float) -> torch.Tensor:
    """Shift and scale each image so its background (outside ``radius`` px) has mean 0 and std 1.

    Parameters
    ----------
    images
        ``(n, h, w)`` real images.
    radius
        Radius (px) of the circle whose outside is the background. When fewer than 16 pixels lie
        outside it, the whole image is used instead.

    Returns
    -------
    torch.Tensor
        ``(n, h, w)``, same dtype. Images with a constant background are only mean-subtracted.
    """
    box = images.shape[-1]
    outside = radius_map(box, images.device, torch.float32) > radius
    if int(outside.sum()) < 16:
        outside = torch.ones_like(outside)
    values = images[:, outside].to(torch.float64)
    mean = values.mean(dim=1)
    std = values.std(dim=1)
    std = torch.where(std > 0, std, torch.ones_like(std))
    out = (images.to(torch.float64) - mean[:, None, None]) / std[:, None, None]
    return out.to(images.dtype)


def fourier_crop(images: torch.Tensor, new_box: int) -> torch.Tensor:
    """Fourier-crop square images to ``new_box`` pixels, keeping real-space amplitudes.

    Parameters
    ----------
    images
        ``(n, D, D)`` real images, ``D`` even.
    new_box
        Even side ``≤ D``. The pixel size grows by ``D / new_box``.

    Returns
    -------
    torch.Tensor
        ``(n, new_box, new_box)``: the low-pass, downsampled images (a constant image keeps its value).
    """
    box = images.shape[-1]
    if new_box == box:
        return images
    dtype = images.dtype
    spec = torch.fft.rfft2(images.to(_fft_dtype(images)))
    half = new_box // 2
    rows = torch.cat([spec[:, :half, : half + 1], spec[:, box - half :, : half + 1]], dim=1)
    out = torch.fft.irfft2(rows, s=(new_box, new_box)) * (new_box / box) ** 2
    return out.to(dtype)


def fourier_pad(images: torch.Tensor, new_box: int) -> torch.Tensor:
    """Fourier-pad (sinc-interpolate) square images to ``new_box ≥ D`` pixels.

    Used to show class averages at the particles' own box and pixel size.

    Parameters
    ----------
    images
        ``(n, D, D)`` real images, ``D`` even.
    new_box
        Even side ``≥ D``.

    Returns
    -------
    torch.Tensor
        ``(n, new_box, new_box)``, same dtype.
    """
    box = images.shape[-1]
    if new_box == box:
        return images
    dtype = images.dtype
    spec = torch.fft.rfft2(images.to(_fft_dtype(images)))
    half = box // 2
    out = torch.zeros(images.shape[0], new_box, new_box // 2 + 1, dtype=spec.dtype, device=spec.device)
    # The Nyquist row/column of the small grid is split evenly between +/- frequencies.
    out[:, :half, :half] = spec[:, :half, :half]
    out[:, new_box - half + 1 :, :half] = spec[:, half + 1 :, :half]
    out[:, half, :half] = 0.5 * spec[:, half, :half]
    out[:, new_box - half, :half] = 0.5 * spec[:, half, :half]
    out[:, :half, half] = 0.5 * spec[:, :half, half]
    out[:, new_box - half + 1 :, half] = 0.5 * spec[:, half + 1 :, half]
    out[:, half, half] = 0.5 * spec[:, half, half]
    out[:, new_box - half, half] = 0.5 * spec[:, half, half]
    result = torch.fft.irfft2(out, s=(new_box, new_box)) * (new_box / box) ** 2
    return result.to(dtype)


def _fft_dtype(images: torch.Tensor) -> torch.dtype:
    return torch.float64 if images.dtype == torch.float64 else torch.float32


__all__ = ["fourier_crop", "fourier_pad", "normalise_background", "radius_map", "soft_circular_mask"]
