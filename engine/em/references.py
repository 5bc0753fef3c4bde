"""From class statistics to class images and E-step references (the M-step's image side).

Per M-step: Wiener averages in polar form (``otf2d.engine.em.mstep``), band-limited; real-space images
by gridding (``otf2d.engine.em.polar``) refined by a few Landweber iterations so that the image's polar
samples match the average; the DC fixed by the solvent (zero mean outside the inner mask, because
the CTF is only ``≈ Q0`` there and the particles' background is normalised to zero); optional
re-centring (class and statistics shifted together); the real-space constraints; and the polar,
band-limited references of the next E-step with their power ``τ²`` and the noise ``σ²``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from otf2d.engine.em.constraints import centre_of_mass, fourier_shift_images, nonnegative
from otf2d.engine.em.mstep import SufficientStats, ring_power, wiener_average
from otf2d.engine.em.noise import noise_from_stats
from otf2d.engine.em.polar import PolarGrid, band_limit, image_to_polar, polar_to_image

#: Gridding refinement iterations when turning polar averages into images.
GRIDDING_ITERATIONS = 2
#: Re-centring moves a class only when its centre of mass is at least this far off (px).
RECENTER_MIN_PX = 0.5


@dataclass(frozen=True)
class ClassMasks:
    """Real-space masks of one geometry, ``(D, D)`` each.

    Attributes
    ----------
    window
        Soft circular window (1 inside the inner diameter, cosine to 0 at the outer).
    solvent
        Clamp-solvent mask: 0 from the inner diameter outwards, its cosine edge inside.
    background
        bool, pixels outside the inner diameter (the solvent whose mean is set to zero).
    """

    window: torch.Tensor
    solvent: torch.Tensor
    background: torch.Tensor


@dataclass(frozen=True)
class ClassReferences:
    """Everything an M-step produces for the classes.

    Attributes
    ----------
    images
        ``(K, D, D)`` class images after the constraints.
    references
        ``(K, N + 1, Q)`` complex band-limited polar references for the E-step.
    tau2
        ``(K, N + 1)`` signal power per sample of each reference.
    sigma2
        ``(N + 1,)`` noise power per sample.
    stats
        The statistics (shifted with the classes when re-centred).
    moved
        ``(K, 2)`` re-centring shift of each class (px, ``(x, y)``; the content moved by minus it).
    """

    images: torch.Tensor
    references: torch.Tensor
    tau2: torch.Tensor
    sigma2: torch.Tensor
    stats: SufficientStats
    moved: torch.Tensor


def refined_polar_to_image(polar: torch.Tensor, grid: PolarGrid, iterations: int = GRIDDING_ITERATIONS) -> torch.Tensor:
    """Images whose polar samples match ``polar``: gridding plus ``iterations`` Landweber steps."""
    img = polar_to_image(polar, grid)
    for _ in range(iterations):
        img = img + polar_to_image(polar - image_to_polar(img, grid), grid)
    return img


def apply_constraints(
    images: torch.Tensor, masks: ClassMasks, clamp_solvent: bool, non_negativity: bool
) -> torch.Tensor:
    """Soft window always; clamp-solvent (zero outside the inner diameter); non-negativity."""
    out = images * masks.window
    if clamp_solvent:
        out = out * masks.solvent
    if non_negativity:
        out = nonnegative(out)
    return out


def build_references(
    stats: SufficientStats,
    sigma2: torch.Tensor,
    tau2: torch.Tensor | None,
    n_effective: float,
    grid: PolarGrid,
    masks: ClassMasks,
    *,
    clamp_solvent: bool,
    non_negativity: bool,
    recenter_threshold: float | None,
    max_shift: float,
) -> ClassReferences:
    """One M-step on the image side (see the module docstring).

    Parameters
    ----------
    stats
        Per-particle statistics.
    sigma2, tau2
        Current noise and signal power (``tau2`` ``None``: regularise with 1 % of the CTF² sum).
    n_effective
        Particles the statistics stand for.
    grid
        The polar grid.
    masks
        Real-space masks.
    clamp_solvent, non_negativity
        The constraints.
    recenter_threshold
        Re-centre on the centre of mass of pixels above this fraction of the maximum; ``None``: off.
    max_shift
        Largest re-centring move (px).

    Returns
    -------
    ClassReferences
    """
    real = stats.ctf2.dtype
    complex_dtype = stats.numerator.dtype
    averages = band_limit(wiener_average(stats, sigma2, tau2, n_effective), grid)
    images = refined_polar_to_image(averages, grid).to(real)
    images = images - images[:, masks.background].mean(dim=1)[:, None, None]
    moved = torch.zeros(images.shape[0], 2, dtype=torch.float64, device=images.device)
    if recenter_threshold is not None:
        com = centre_of_mass(images * masks.window, recenter_threshold).to(torch.float64)
        length = com.norm(dim=1, keepdim=True)
        limited = torch.where(length > max_shift, com * (max_shift / length.clamp(min=1e-12)), com)
        moved = torch.where(length >= RECENTER_MIN_PX, limited, torch.zeros_like(limited))
        if bool((moved != 0).any()):
            images = fourier_shift_images(images, -moved.to(images.dtype))
            ramps = grid.shift_phases(moved, complex_dtype)
            stats = dataclasses.replace(stats, numerator=stats.numerator * ramps)
    images = apply_constraints(images, masks, clamp_solvent, non_negativity)
    references = band_limit(image_to_polar(images, grid), grid).to(complex_dtype)
    return ClassReferences(
        images=images,
        references=references,
        tau2=ring_power(references).to(real),
        sigma2=noise_from_stats(stats, references).to(real),
        stats=stats,
        moved=moved,
    )


__all__ = [
    "GRIDDING_ITERATIONS",
    "RECENTER_MIN_PX",
    "ClassMasks",
    "ClassReferences",
    "apply_constraints",
    "build_references",
    "refined_polar_to_image",
]
