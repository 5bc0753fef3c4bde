"""RELION's CTF in torch: on FFT grids (through torch-ctf) and at arbitrary frequencies.

Convention (RELION ``CTF::getCTF``, ``ctf.cpp``/``ctf.h``; ``formats.md`` §1)::

    CTF(X, Y) = -sin(γ) · exp(-B/4 · u²) · scale,     u² = X² + Y²  (1/Å)
    γ = K1·(Axx·X² + 2·Axy·X·Y + Ayy·Y²) + K2·u⁴ − K5 − K3
    K1 = π·λ,  K2 = π/2·Cs·λ³ (Cs in Å),  K3 = atan(Q0/√(1 − Q0²)),  K5 = phase shift (rad)
    A = Qᵀ·diag(−U, −V)·Q,  Q = [[cos φ, sin φ], [−sin φ, cos φ]],  φ = rlnDefocusAngle

``X`` is the column (x) frequency, ``Y`` the row (y) frequency. At low frequency the CTF is
``+sin(K3) > 0``: with RELION's sign, particles and references share one contrast, and a positive
class density (protein white, RELION's convention after contrast inversion at extraction) gives
particles whose low-resolution content is positive.

Two evaluators:

- :func:`relion_ctf_grid` uses torch-ctf 0.6 ``calculate_ctf_2d`` with the mapping of
  ``formats.md`` §12 (defocus µm = (U+V)/2e4, astigmatism (U−V)/2e4, angle straight through, U/V
  swapped and +90° when U < V because torch-ctf returns NaN otherwise, times
  ``torch_fourier_filter.envelopes.b_envelope`` and the scale);
- :func:`relion_ctf` evaluates the formula directly at any frequencies. The E-step needs the CTF at
  polar sample points, which are not on an FFT grid, and torch-ctf only evaluates on FFT grids: this
  is why the formula is also written here. Both are tested against a NumPy float64 transcription.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch_ctf import calculate_ctf_2d
from torch_fourier_filter.envelopes import b_envelope

from otf2d.core.particles import CtfParams


@dataclass(frozen=True)
class CtfTensors:
    """Per-particle CTF parameters as tensors of shape ``(n,)``, in RELION units (see ``CtfParams``)."""

    defocus_u_angstrom: torch.Tensor
    defocus_v_angstrom: torch.Tensor
    defocus_angle_degrees: torch.Tensor
    voltage_kv: torch.Tensor
    spherical_aberration_mm: torch.Tensor
    amplitude_contrast: torch.Tensor
    phase_shift_degrees: torch.Tensor
    bfactor_angstrom2: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def from_params(
        cls, ctf: CtfParams, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
    ) -> CtfTensors:
        """Copy ``CtfParams`` (NumPy float64) to tensors on ``device``."""
        return cls(
            **{
                f.name: torch.as_tensor(np.asarray(getattr(ctf, f.name)), dtype=dtype, device=device)
                for f in fields(cls)
            }
        )

    def take(self, index: torch.Tensor | slice) -> CtfTensors:
        """The parameters of the particles at ``index``."""
        return CtfTensors(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def __len__(self) -> int:
        return int(self.defocus_u_angstrom.shape[0])


def wavelength_angstrom(voltage_kv: torch.Tensor) -> torch.Tensor:
    """Relativistic electron wavelength (Å) as RELION computes it, same shape as ``voltage_kv``."""
    volts = voltage_kv * 1e3
    return 12.2643247 / torch.sqrt(volts * (1.0 + volts * 0.978466e-6))


def ctf_basis(freq_x: torch.Tensor, freq_y: torch.Tensor) -> torch.Tensor:
    """Frequency terms of γ, ``(5, *S)``: ``X², 2XY, Y², u⁴, u²`` (1/Å powers), in the input dtype."""
    x, y = freq_x, freq_y
    u2 = x * x + y * y
    return torch.stack([x * x, 2.0 * x * y, y * y, u2 * u2, u2])


def relion_ctf(
    ctf: CtfTensors, freq_x: torch.Tensor, freq_y: torch.Tensor, basis: torch.Tensor | None = None
) -> torch.Tensor:
    """RELION's CTF of ``n`` particles at arbitrary spatial frequencies.

    Parameters
    ----------
    ctf
        Parameters of ``n`` particles, each ``(n,)``.
    freq_x, freq_y
        Column (x) and row (y) spatial frequencies in 1/Å, any identical shape ``S`` (shared by
        all particles).
    basis
        ``ctf_basis(freq_x, freq_y)``, when precomputed (evaluating many batches on one grid).

    Returns
    -------
    torch.Tensor
        ``(n, *S)``, in the dtype and device of ``freq_x`` (the per-particle constants are formed in
        float64; the grid is evaluated in the frequencies' dtype): γ is one small matrix product of
        per-particle coefficients ``(Axx·K1, Axy·K1, Ayy·K1, K2)`` with the basis.
    """
    dtype = freq_x.dtype
    shape = freq_x.shape
    if basis is None:
        basis = ctf_basis(freq_x, freq_y)

    def per(v: torch.Tensor) -> torch.Tensor:
        return v.to(dtype=torch.float64, device=freq_x.device)

    # Per-particle constants in float64, the grid in the frequencies' own dtype.
    lam = wavelength_angstrom(per(ctf.voltage_kv))
    k1 = math.pi * lam
    k2 = math.pi / 2.0 * per(ctf.spherical_aberration_mm) * 1e7 * lam**3
    q0 = per(ctf.amplitude_contrast)
    offset = torch.atan(q0 / torch.sqrt(1.0 - q0 * q0)) + torch.deg2rad(per(ctf.phase_shift_degrees))
    phi = torch.deg2rad(per(ctf.defocus_angle_degrees))
    c, s = torch.cos(phi), torch.sin(phi)
    u, v = per(ctf.defocus_u_angstrom), per(ctf.defocus_v_angstrom)
    # A = Qᵀ diag(-U, -V) Q with Q = [[c, s], [-s, c]]
    coeffs = torch.stack(
        [-k1 * (u * c * c + v * s * s), -k1 * (u - v) * c * s, -k1 * (u * s * s + v * c * c), k2], dim=1
    ).to(dtype)
    flat = basis.reshape(5, -1)
    gamma = torch.addmm(-offset.to(dtype)[:, None], coeffs, flat[:4])
    out = torch.sin(gamma).neg_()
    bfactor = per(ctf.bfactor_angstrom2)
    if bool(torch.any(bfactor != 0)):
        out = out * torch.exp((-bfactor / 4.0).to(dtype)[:, None] * flat[4][None])
    out = out * per(ctf.scale).to(dtype)[:, None]
    return out.reshape((len(ctf), *tuple(shape)))


def relion_ctf_grid(ctf: CtfTensors, box: int, pixel_size_angstrom: float, *, rfft: bool = True) -> torch.Tensor:
    """RELION's CTF on the (r)FFT grid of a ``(box, box)`` image, through torch-ctf.

    Parameters
    ----------
    ctf
        Parameters of ``n`` particles.
    box
        Image side (px).
    pixel_size_angstrom
        Pixel size of that image (Å).
    rfft
        ``True``: the ``torch.fft.rfft2`` grid ``(box, box // 2 + 1)``; ``False``: the full grid.
        Not fftshifted.

    Returns
    -------
    torch.Tensor
        ``(n, box, box // 2 + 1)`` (or ``(n, box, box)``), float32, on the parameters' device.
    """
    u = ctf.defocus_u_angstrom
    v = ctf.defocus_v_angstrom
    angle = ctf.defocus_angle_degrees
    swap = u < v
    # torch-ctf takes the square root of the astigmatism: it needs U >= V.
    u2 = torch.where(swap, v, u)
    v2 = torch.where(swap, u, v)
    angle2 = torch.where(swap, angle + 90.0, angle)
    f32 = torch.float32
    out = calculate_ctf_2d(
        defocus=((u2 + v2) / 2e4).to(f32),
        astigmatism=((u2 - v2) / 2e4).to(f32),
        astigmatism_angle=angle2.to(f32),
        voltage=ctf.voltage_kv.to(f32),
        spherical_aberration=ctf.spherical_aberration_mm.to(f32),
        amplitude_contrast=ctf.amplitude_contrast.to(f32),
        phase_shift=ctf.phase_shift_degrees.to(f32),
        pixel_size=float(pixel_size_angstrom),
        image_shape=(box, box),
        rfft=rfft,
        fftshift=False,
    )
    out = out.to(f32)
    bfactors = ctf.bfactor_angstrom2
    if bool(torch.any(bfactors != 0)):
        distinct, which = torch.unique(bfactors, return_inverse=True)
        envelopes = torch.stack(
            [
                b_envelope(float(b), (box, box), float(pixel_size_angstrom), rfft=rfft, device=out.device)
                for b in distinct.tolist()
            ]
        )
        out = out * envelopes.to(f32)[which.to(out.device)]
    return out * ctf.scale.to(device=out.device, dtype=f32).reshape(-1, 1, 1)


__all__ = ["CtfTensors", "ctf_basis", "relion_ctf", "relion_ctf_grid", "wavelength_angstrom"]
