"""Synthetic 2D particles with exact ground truth for the EM tests (NumPy float64, no torch).

Templates are sums of Gaussian blobs, so a rotated and shifted template is rendered exactly by
moving the blob centres. Conventions are RELION's (independent of the engine's code):

- image ``[y, x]``, centre pixel ``D // 2``;
- a particle at in-plane angle ψ and origin ``o`` (px) is ``image(p) = template(R(ψ)·(p + o))``,
  ``R(ψ)`` counter-clockwise, so a template point ``c`` appears at ``p = R(−ψ)·c − o``;
- the CTF is RELION's ``CTF::getCTF`` (:func:`relion_ctf_numpy`, transcribed here independently),
  applied by multiplication in Fourier space; positive density stays positive at low frequency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from otf2d.core.particles import CtfParams, ParticleBatch


def relion_ctf_numpy(ctf: CtfParams, freq_x: np.ndarray, freq_y: np.ndarray) -> np.ndarray:
    """RELION's CTF at frequencies ``freq_x`` (columns) and ``freq_y`` (rows) in 1/Å, float64.

    γ = K1·(Axx X² + 2 Axy XY + Ayy Y²) + K2·u⁴ − K5 − K3, CTF = −sin γ · exp(−B/4·u²) · scale,
    A = Qᵀ diag(−U, −V) Q, Q = [[cos φ, sin φ], [−sin φ, cos φ]] (RELION ``ctf.h``).
    Returns ``(n, *freq_x.shape)``.
    """
    out = []
    for i in range(len(ctf)):
        volts = ctf.voltage_kv[i] * 1e3
        lam = 12.2643247 / np.sqrt(volts * (1.0 + volts * 0.978466e-6))
        k1 = np.pi * lam
        k2 = np.pi / 2.0 * ctf.spherical_aberration_mm[i] * 1e7 * lam**3
        q0 = ctf.amplitude_contrast[i]
        k3 = np.arctan(q0 / np.sqrt(1 - q0 * q0))
        k4 = -ctf.bfactor_angstrom2[i] / 4.0
        k5 = np.deg2rad(ctf.phase_shift_degrees[i])
        phi = np.deg2rad(ctf.defocus_angle_degrees[i])
        q = np.array([[np.cos(phi), np.sin(phi)], [-np.sin(phi), np.cos(phi)]])
        a = q.T @ np.diag([-ctf.defocus_u_angstrom[i], -ctf.defocus_v_angstrom[i]]) @ q
        x, y = freq_x, freq_y
        u2 = x * x + y * y
        gamma = k1 * (a[0, 0] * x * x + 2 * a[0, 1] * x * y + a[1, 1] * y * y) + k2 * u2 * u2 - k5 - k3
        out.append(-np.sin(gamma) * np.exp(k4 * u2) * ctf.scale[i])
    return np.stack(out)


@dataclass(frozen=True)
class Template:
    """Gaussian blobs: centres ``(b, 2)`` as ``(x, y)`` px from the centre, amplitudes, widths (px)."""

    centres: np.ndarray
    amplitudes: np.ndarray
    widths: np.ndarray


def random_templates(n: int, box: int, rng: np.random.Generator, blobs: int = 6) -> list[Template]:
    """``n`` distinct asymmetric templates, centre of mass at the box centre, within about ``0.3·box``."""
    out = []
    for _ in range(n):
        radius = 0.3 * box * np.sqrt(rng.uniform(0.05, 1.0, blobs))
        angle = rng.uniform(0, 2 * np.pi, blobs)
        centres = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
        amplitudes = rng.uniform(0.5, 1.0, blobs)
        widths = rng.uniform(0.04, 0.08, blobs) * box
        mass = amplitudes * widths**2
        centres -= (mass[:, None] * centres).sum(axis=0) / mass.sum()  # centre of mass at the origin
        out.append(Template(centres, amplitudes, widths))
    return out


def render(
    template: Template, box: int, psi_degrees: float = 0.0, origin: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """The template at angle ψ with origin ``o`` px: ``image(p) = template(R(ψ)(p + o))``, ``(box, box)``."""
    c = np.arange(box) - box // 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    psi = np.deg2rad(psi_degrees)
    rot_inv = np.array([[np.cos(psi), np.sin(psi)], [-np.sin(psi), np.cos(psi)]])  # R(−ψ)
    img = np.zeros((box, box))
    for centre, amp, width in zip(template.centres, template.amplitudes, template.widths, strict=True):
        px, py = rot_inv @ centre - np.asarray(origin)
        img += amp * np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * width * width))
    return img


def apply_ctf(images: np.ndarray, ctf: CtfParams, pixel_size_angstrom: float) -> np.ndarray:
    """Multiply each image's transform by its RELION CTF (rfft grid, phase origin irrelevant)."""
    box = images.shape[-1]
    fy = np.fft.fftfreq(box) / pixel_size_angstrom
    fx = np.fft.rfftfreq(box) / pixel_size_angstrom
    yy, xx = np.meshgrid(fy, fx, indexing="ij")
    c = relion_ctf_numpy(ctf, xx, yy)
    return np.fft.irfft2(np.fft.rfft2(images) * c, s=(box, box))


@dataclass(frozen=True)
class SyntheticSet:
    """Particles and their truth: template index, psi (deg), origin (px), scale."""

    batch: ParticleBatch
    templates: list[Template]
    template_index: np.ndarray
    psi_degrees: np.ndarray
    origin_px: np.ndarray
    scale: np.ndarray


def make_particles(
    n: int,
    templates: list[Template],
    box: int,
    pixel_size_angstrom: float,
    rng: np.random.Generator,
    *,
    psi_step_degrees: float = 10.0,
    max_shift_px: int = 2,
    noise_std: float = 1.0,
    scales: np.ndarray | None = None,
    defocus_range_angstrom: tuple[float, float] = (8000.0, 20000.0),
    astigmatism_angstrom: float = 500.0,
    signal: float = 1.0,
    session: str = "synthetic",
) -> SyntheticSet:
    """Noisy, rotated (multiples of ``psi_step_degrees``), shifted (integer px), CTF-affected particles."""
    which = rng.integers(0, len(templates), n)
    n_steps = round(360 / psi_step_degrees)
    psi = rng.integers(0, n_steps, n) * psi_step_degrees
    shifts: list[np.ndarray] = []
    while len(shifts) < n:
        o = rng.integers(-max_shift_px, max_shift_px + 1, 2)
        if o @ o <= max_shift_px**2:
            shifts.append(o)
    origin = np.asarray(shifts, dtype=np.float64)
    scale = np.ones(n) if scales is None else np.asarray(scales, dtype=np.float64)
    mean_df = rng.uniform(*defocus_range_angstrom, n)
    ctf = CtfParams(
        defocus_u_angstrom=mean_df + astigmatism_angstrom / 2,
        defocus_v_angstrom=mean_df - astigmatism_angstrom / 2,
        defocus_angle_degrees=rng.uniform(-180, 180, n),
        voltage_kv=np.full(n, 300.0),
        spherical_aberration_mm=np.full(n, 2.7),
        amplitude_contrast=np.full(n, 0.1),
        phase_shift_degrees=np.zeros(n),
        bfactor_angstrom2=np.zeros(n),
        scale=np.ones(n),
    )
    clean = np.stack([scale[i] * signal * render(templates[which[i]], box, psi[i], tuple(origin[i])) for i in range(n)])
    images = apply_ctf(clean, ctf, pixel_size_angstrom) + rng.normal(0.0, noise_std, (n, box, box))
    batch = ParticleBatch(
        images=images.astype(np.float32),
        pixel_size_angstrom=pixel_size_angstrom,
        ctf=ctf,
        session=session,
        stack_paths=np.array([f"Extract/job001/mic{i // 100:03d}.mrcs" for i in range(n)]),
        indices=np.arange(n, dtype=np.int64) % 100 + 1,
        optics_groups=np.ones(n, dtype=np.int64),
    )
    return SyntheticSet(batch, templates, which, psi, origin, scale)


def best_rotational_correlation(image: np.ndarray, reference: np.ndarray, step_degrees: float = 5.0) -> float:
    """Max normalised correlation of ``image`` with ``reference`` over rotations and integer shifts.

    Rotation is done on ``image`` by bilinear interpolation; shifts by cross-correlation (FFT).
    """
    box = image.shape[-1]
    c = np.arange(box) - box // 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    ref = reference - reference.mean()
    ref_f = np.conj(np.fft.fft2(ref))
    best = -1.0
    for angle in np.arange(0, 360, step_degrees):
        a = np.deg2rad(angle)
        sx = np.cos(a) * xx - np.sin(a) * yy + box // 2
        sy = np.sin(a) * xx + np.cos(a) * yy + box // 2
        rotated = _bilinear(image, sx, sy)
        rotated = rotated - rotated.mean()
        cc = np.real(np.fft.ifft2(np.fft.fft2(rotated) * ref_f))
        denom = np.linalg.norm(rotated) * np.linalg.norm(ref)
        if denom > 0:
            best = max(best, float(cc.max() / denom))
    return best


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    box = img.shape[-1]
    x0 = np.floor(x).astype(int)
    y0 = np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    out = np.zeros_like(x)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < box) & (yi >= 0) & (yi < box)
            out += np.where(ok, img[np.clip(yi, 0, box - 1), np.clip(xi, 0, box - 1)], 0.0) * wx * wy
    return out
