"""Polar Fourier representation: images ↔ samples on rings × angles, rotations and shifts there.

A ``PolarGrid`` samples the 2D Fourier transform ``X(k)`` of a ``D × D`` image (unnormalised DFT,
phase origin at the centre pixel ``D // 2``) at radii ``r = 0 .. N`` (``N = D // 2``, in Fourier
pixels of the ``D`` grid, i.e. ``r / D`` cycles per pixel) and angles ``θ_q = 2π·q / Q`` measured
from the +x (column) axis towards +y (rows). Samples are complex, ``(…, N + 1, Q)``; a real image
gives ``X(r, θ + π) = conj X(r, θ)``.

- Image → polar (:func:`image_to_polar`): divide by the bilinear gridding correction, zero-pad
  ``zero_pad_factor`` times, FFT, bilinear interpolation (``grid_sample``; the role of cryoSPARC's
  "2D zeropad factor"). Only the half circle ``θ ∈ [−90°, 90°)`` is interpolated; the other half
  is its conjugate. The one sample at ``ky`` = +Nyquist of the padded grid takes the nearest row.
- Polar → image (:func:`polar_to_image`): the adjoint, a gridding sum: each sample, weighted by the
  area it stands for (``2π·r / Q``, ``π/4 / Q`` at ``r = 0``), is spread bilinearly onto the padded
  grid, inverse-FFT'd, cropped and divided by the gridding correction.
- A rotation by ``ψ`` (``image(p) = class(R(ψ)·p)``) is ``X(r, θ) = A(r, θ + ψ)``: a cyclic shift by
  ``ψ·Q/2π`` samples, or a phase ``e^{i·m·ψ}`` on angular order ``m``.
- A shift ``image(p) = class(p + o)`` multiplies by ``e^{2πi·k·o / D}``, ``k = r·(cos θ, sin θ)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from otf2d.engine.em.geometry import Geometry


@dataclass(frozen=True)
class PolarGrid:
    """Polar sample positions and weights of one geometry (tensors on one device).

    Attributes
    ----------
    box
        Side ``D`` of the images the grid samples.
    n_rings, n_angles
        ``N`` and ``Q``; samples are ``(N + 1, Q)``.
    kx, ky
        ``(N + 1, Q)`` sample positions in Fourier pixels (cycles per ``D`` pixels), float64.
    area
        ``(N + 1,)`` area of Fourier plane each sample of a ring stands for (Fourier pixels²).
    independent
        ``(N + 1,)`` number of independent complex Fourier coefficients per sample of each ring:
        half the Cartesian points of the ring (``round(|k|) = r``) divided by ``Q``.
    orders
        ``(N + 1,)`` int64, highest angular order kept per ring (band limit).
    zero_pad_factor
        Oversampling of the interpolation grid.
    """

    box: int
    n_rings: int
    n_angles: int
    kx: torch.Tensor
    ky: torch.Tensor
    area: torch.Tensor
    independent: torch.Tensor
    orders: torch.Tensor
    zero_pad_factor: int

    @classmethod
    def from_geometry(cls, geometry: Geometry, device: torch.device | str = "cpu") -> PolarGrid:
        """The polar grid of ``geometry`` on ``device``."""
        d = geometry.internal_box
        n = geometry.n_rings
        q = geometry.n_angles
        r = torch.arange(n + 1, dtype=torch.float64, device=device)
        theta = 2.0 * math.pi * torch.arange(q, dtype=torch.float64, device=device) / q
        kx = r[:, None] * torch.cos(theta)[None, :]
        ky = r[:, None] * torch.sin(theta)[None, :]
        area = 2.0 * math.pi * r / q
        area[0] = math.pi / 4.0 / q
        c = torch.fft.fftfreq(d, d=1.0 / d, dtype=torch.float64, device=device)
        rr = torch.round(torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)).to(torch.int64)
        counts = torch.bincount(rr.flatten(), minlength=n + 2)[: n + 1].to(torch.float64)
        independent = counts / 2.0 / q
        orders = torch.tensor(geometry.ring_orders(), dtype=torch.int64, device=device)
        return cls(d, n, q, kx, ky, area, independent, orders, geometry.zero_pad_factor)

    @property
    def device(self) -> torch.device:
        """Device of the grid's tensors."""
        return self.kx.device

    def frequencies_per_angstrom(self, pixel_size_angstrom: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X, Y)`` spatial frequencies of the samples in 1/Å, each ``(N + 1, Q)`` float64."""
        scale = 1.0 / (self.box * pixel_size_angstrom)
        return self.kx * scale, self.ky * scale

    def shift_phases(self, shifts: torch.Tensor, dtype: torch.dtype = torch.complex64) -> torch.Tensor:
        """Phase ramps ``e^{2πi·k·o/D}`` of shifts ``o``.

        Parameters
        ----------
        shifts
            ``(T, 2)`` shifts ``(x, y)`` in pixels.

        Returns
        -------
        torch.Tensor
            ``(T, N + 1, Q)`` complex: multiplying a transform by it moves the image content by
            ``−o`` (``shifted(p) = image(p + o)``).
        """
        o = shifts.to(torch.float64)
        phase = (2.0 * math.pi / self.box) * (o[:, 0, None, None] * self.kx[None] + o[:, 1, None, None] * self.ky[None])
        return torch.polar(torch.ones_like(phase), phase).to(dtype)


def gridding_correction(box: int, pad: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Fourier transform of the bilinear kernel on a ``pad``-times oversampled grid, ``(box, box)``.

    ``sinc²(x / (pad·D))·sinc²(y / (pad·D))`` with ``x, y`` measured from the centre pixel.
    """
    c = (torch.arange(box, device=device, dtype=torch.float64) - box // 2) / (pad * box)
    s = torch.sinc(c) ** 2
    return (s[:, None] * s[None, :]).to(dtype)


def _half_angles(n_angles: int) -> int:
    """Index of the first sample of the interpolated half circle ``θ ∈ [−90°, 90°)``."""
    return -(n_angles // 4) if n_angles % 4 == 0 else -((n_angles + 2) // 4) + 1


def image_to_polar(images: torch.Tensor, grid: PolarGrid) -> torch.Tensor:
    """Polar Fourier samples of real images.

    Parameters
    ----------
    images
        ``(n, D, D)`` real, centre at pixel ``D // 2``.
    grid
        The polar grid (``grid.box == D``).

    Returns
    -------
    torch.Tensor
        ``(n, N + 1, Q)`` complex64 (complex128 for float64 input): the unnormalised DFT of each
        image at the grid points, phase origin at the centre pixel.
    """
    n, d, _ = images.shape
    pad = grid.zero_pad_factor
    big = pad * d
    h = d // 2
    real_dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    # Divide by the gridding correction and multiply by (−1)^row, which moves ky = 0 to the
    # middle row of the transform (so the interpolation never wraps).
    rows = torch.arange(d, device=images.device) - h
    sign = torch.where(rows % 2 == 0, 1.0, -1.0).to(real_dtype)
    factor = sign[:, None] / gridding_correction(d, pad, images.device, real_dtype)
    src = images.to(real_dtype) * factor
    # Zero-pad with the centre pixel at index 0 (what ifftshift of a centred padding gives).
    padded = torch.zeros(n, big, big, dtype=real_dtype, device=images.device)
    padded[:, :h, :h] = src[:, h:, h:]
    padded[:, :h, big - h :] = src[:, h:, :h]
    padded[:, big - h :, :h] = src[:, :h, h:]
    padded[:, big - h :, big - h :] = src[:, :h, :h]
    spec = torch.fft.rfft2(padded)  # (n, big, big//2+1); row r holds ky = r − big/2
    planes = torch.view_as_real(spec).permute(0, 3, 1, 2).contiguous()  # (n, 2, big, big//2+1)

    q = grid.n_angles
    q0 = _half_angles(q)
    half_idx = torch.arange(q0, q0 + q // 2, device=images.device) % q
    col = (grid.kx[:, half_idx] * pad).clamp(min=0.0)  # kx >= 0 on this half circle
    row = grid.ky[:, half_idx] * pad + big // 2
    ncol = big // 2 + 1
    where = torch.stack([2.0 * col / (ncol - 1) - 1.0, 2.0 * row / (big - 1) - 1.0], dim=-1).to(real_dtype)
    sampled = torch.nn.functional.grid_sample(
        planes, where[None].expand(n, -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=True
    )  # (n, 2, N+1, Q/2)
    out_half = torch.view_as_complex(sampled.permute(0, 2, 3, 1).contiguous())
    out = torch.empty(n, grid.n_rings + 1, q, dtype=out_half.dtype, device=images.device)
    out[:, :, half_idx] = out_half
    out[:, :, (half_idx + q // 2) % q] = out_half.conj()
    return out


def polar_to_image(polar: torch.Tensor, grid: PolarGrid) -> torch.Tensor:
    """Real images from polar Fourier samples (the gridding adjoint of :func:`image_to_polar`).

    Parameters
    ----------
    polar
        ``(n, N + 1, Q)`` complex samples with ``X(r, θ + π) = conj X(r, θ)``.
    grid
        The polar grid.

    Returns
    -------
    torch.Tensor
        ``(n, D, D)`` real (float32, or float64 for complex128 input), centre at ``D // 2``.
    """
    n = polar.shape[0]
    d = grid.box
    pad = grid.zero_pad_factor
    big = pad * d
    real_dtype = torch.float64 if polar.dtype == torch.complex128 else torch.float32
    weights = grid.area.to(real_dtype)[None, :, None]
    values = (polar * weights).reshape(n, -1)
    kx = (grid.kx * pad).flatten()
    ky = (grid.ky * pad).flatten()
    x0 = torch.floor(kx)
    y0 = torch.floor(ky)
    fx = (kx - x0).to(real_dtype)
    fy = (ky - y0).to(real_dtype)
    x0i = x0.to(torch.int64) % big
    y0i = y0.to(torch.int64) % big
    x1i = (x0i + 1) % big
    y1i = (y0i + 1) % big
    g = torch.zeros(n, big * big, dtype=polar.dtype, device=polar.device)
    for yi, xi, w in (
        (y0i, x0i, (1 - fx) * (1 - fy)),
        (y0i, x1i, fx * (1 - fy)),
        (y1i, x0i, (1 - fx) * fy),
        (y1i, x1i, fx * fy),
    ):
        g.index_add_(1, yi * big + xi, values * w)
    img = torch.fft.ifft2(g.reshape(n, big, big)).real * (big * big)
    img = torch.fft.fftshift(img, dim=(-2, -1))
    start = big // 2 - d // 2
    img = img[:, start : start + d, start : start + d]
    corr = gridding_correction(d, pad, polar.device, real_dtype)
    return (img / (d * d) / corr).contiguous()


def angular_spectrum(polar: torch.Tensor, n_orders: int) -> torch.Tensor:
    """Angular Fourier coefficients ``Ŷ[…, r, m] = Σ_q Y[…, r, q]·e^{−2πi·m·q/Q}`` for ``m < n_orders``."""
    return torch.fft.fft(polar, dim=-1)[..., :n_orders]


def band_limit(polar: torch.Tensor, grid: PolarGrid) -> torch.Tensor:
    """Keep only the angular orders ``|m| ≤ M_r`` of each ring (the support constraint), same shape."""
    q = grid.n_angles
    m = torch.fft.fftfreq(q, d=1.0 / q, device=polar.device).abs()
    keep = (m[None, :] <= grid.orders[:, None].to(m.dtype)).to(polar.real.dtype)
    return torch.fft.ifft(torch.fft.fft(polar, dim=-1) * keep, dim=-1)


def rotate_polar(polar: torch.Tensor, angle_degrees: torch.Tensor) -> torch.Tensor:
    """Rotate polar samples: ``out(r, θ) = in(r, θ − φ)`` (image content turned by ``+φ``, CCW).

    Parameters
    ----------
    polar
        ``(n, N + 1, Q)`` complex or real.
    angle_degrees
        ``(n,)`` angles φ; any value (exact for band-limited samples, by a phase on each order).

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``polar``.
    """
    q = polar.shape[-1]
    m = torch.fft.fftfreq(q, d=1.0 / q, device=polar.device, dtype=torch.float64)
    phi = torch.deg2rad(angle_degrees.to(torch.float64))
    phase = torch.polar(torch.ones(len(phi), q, dtype=torch.float64, device=polar.device), -phi[:, None] * m[None, :])
    spec = torch.fft.fft(polar, dim=-1) * phase[:, None, :].to(
        torch.complex128 if polar.dtype in (torch.float64, torch.complex128) else torch.complex64
    )
    out = torch.fft.ifft(spec, dim=-1)
    return out if polar.is_complex() else out.real.to(polar.dtype)


__all__ = [
    "PolarGrid",
    "angular_spectrum",
    "band_limit",
    "gridding_correction",
    "image_to_polar",
    "polar_to_image",
    "rotate_polar",
]
