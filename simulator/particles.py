"""Particle images with ground truth, in memory: projection → CTF → noise → RELION normalisation.

The image model, per particle:

1. the clean signal: a projection of the map at a random pose (``otf2d.simulator.views``), centred at
   ``box // 2 - origin / pixel_size`` (RELION's origin sign), or a junk image (``otf2d.simulator.junk``);
2. times RELION's CTF of its micrograph in Fourier space (``otf2d.core.ctf.relion_ctf_2d``);
3. plus white Gaussian noise of one standard deviation for the whole session, calibrated so that
   (signal variance inside the particle circle) / (noise variance) = ``snr`` on average over
   particles drawn like the session's (``prepare_simulation``);
4. normalised like RELION's Extract: the background (outside a circle of radius 0.75·box/2) gets
   mean 0 and standard deviation 1.

Contrast is RELION's for positive density with its CTF (positive at low frequency): protein is
white, as in extracted, contrast-inverted particles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from otf2d.core.ctf import relion_ctf_2d
from otf2d.core.errors import InputError
from otf2d.core.particles import CtfParams
from otf2d.simulator.config import DEFAULT_BOX, DEFAULT_PIXEL_SIZE_ANGSTROM, SimulationConfig
from otf2d.simulator.junk import JunkImages, aggregates, carbon_edges, decoys, ice_blobs, pure_noise
from otf2d.simulator.maps import enclosing_diameter_angstrom, read_map
from otf2d.simulator.phantom import decoy_phantom, protein_phantom, render_blobs
from otf2d.simulator.projection import (
    VolumeSpectrum,
    centre_and_shift,
    euler_matrix_relion,
    prepare_volume,
    project_fourier,
)
from otf2d.simulator.views import preferred_views, uniform_views

FloatArray = npt.NDArray[np.float64]
logger = logging.getLogger(__name__)

#: Particles drawn to calibrate the noise level.
CALIBRATION_PARTICLES = 256
#: RELION Extract's default background radius, as a fraction of half the box.
BACKGROUND_RADIUS_FRACTION = 0.75


@dataclass(frozen=True)
class SimulationSetup:
    """Everything derived once from a ``SimulationConfig``: maps, sampling, noise level.

    Attributes
    ----------
    config
        The configuration.
    box, pixel_size_angstrom
        Image side (px) and sampling (Å/px) of the particles.
    volume, volume_pixel_size_angstrom
        The map projected (``[z, y, x]``) and its voxel size.
    spectrum, decoy_spectrum
        The map and the decoy protein prepared for projection.
    source
        ``"phantom"`` or the map path.
    particle_diameter_angstrom
        Diameter of the circle in which the signal variance is measured.
    noise_sigma
        Standard deviation of the white noise added before normalisation.
    particle_peak
        Median maximum of a clean projection (sets the scale of junk).
    """

    config: SimulationConfig
    box: int
    pixel_size_angstrom: float
    volume: FloatArray
    volume_pixel_size_angstrom: float
    spectrum: VolumeSpectrum
    decoy_spectrum: VolumeSpectrum
    source: str
    particle_diameter_angstrom: float
    noise_sigma: float
    particle_peak: float


@dataclass(frozen=True)
class SimulatedParticles:
    """``n`` simulated images with their ground truth.

    Attributes
    ----------
    images
        ``(n, box, box)`` float32: what is written to the stacks (normalised).
    signal
        ``(n, box, box)`` float32: the noise-free part of ``images`` on the same scale (CTF
        applied, before the background mean is subtracted), so ``images - signal`` is noise plus a
        per-image constant.
    ctf
        Per-particle CTF parameters (RELION units).
    rot, tilt, psi, origin_x_angstrom, origin_y_angstrom
        ``(n,)`` RELION pose (degrees, Å); NaN for junk without a projection.
    is_junk
        ``(n,)`` bool.
    junk_type
        ``(n,)`` str: ``"none"`` for particles, else one of ``JUNK_TYPES``.
    """

    images: npt.NDArray[np.float32]
    signal: npt.NDArray[np.float32]
    ctf: CtfParams
    rot: FloatArray
    tilt: FloatArray
    psi: FloatArray
    origin_x_angstrom: FloatArray
    origin_y_angstrom: FloatArray
    is_junk: npt.NDArray[np.bool_]
    junk_type: npt.NDArray[np.str_]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _load_volume(config: SimulationConfig) -> tuple[FloatArray, float, str, float, int]:
    """The map, its voxel size, its name, the image pixel size and the box."""
    if config.map_path is None:
        pixel = config.pixel_size_angstrom or DEFAULT_PIXEL_SIZE_ANGSTROM
        box = config.box or DEFAULT_BOX
        return render_blobs(protein_phantom(), box, pixel), pixel, "phantom", pixel, box
    volume, header_voxel = read_map(config.map_path)
    voxel = config.map_pixel_size_angstrom or header_voxel
    pixel = config.pixel_size_angstrom or voxel or DEFAULT_PIXEL_SIZE_ANGSTROM
    if voxel is None:
        logger.warning(
            "%s has voxel size 0 in its header and no --map-pixel-size was given: "
            "taking it to be sampled at the simulation pixel size, %.3f Å",
            config.map_path,
            pixel,
        )
        voxel = pixel
    box = config.box or volume.shape[0] + volume.shape[0] % 2
    return volume, voxel, str(config.map_path), pixel, box


def draw_ctf(config: SimulationConfig, n: int, rng: np.random.Generator) -> CtfParams:
    """``n`` independent CTFs drawn like micrographs of the session (one per particle).

    Mean defocus uniform in ``[defocus_min, defocus_max]``, ``U - V`` uniform in
    ``[0, astigmatism_max]`` (so U ≥ V), angle uniform in ``[-90, 90)`` degrees.
    """
    mean = rng.uniform(config.defocus_min_angstrom, config.defocus_max_angstrom, n)
    astig = rng.uniform(0.0, config.astigmatism_max_angstrom, n)
    angle = rng.uniform(-90.0, 90.0, n)
    return CtfParams(
        defocus_u_angstrom=mean + astig / 2,
        defocus_v_angstrom=mean - astig / 2,
        defocus_angle_degrees=angle,
        voltage_kv=np.full(n, config.voltage_kv),
        spherical_aberration_mm=np.full(n, config.spherical_aberration_mm),
        amplitude_contrast=np.full(n, config.amplitude_contrast),
        phase_shift_degrees=np.zeros(n),
        bfactor_angstrom2=np.zeros(n),
        scale=np.ones(n),
    )


def _draw_poses(config: SimulationConfig, n: int, rng: np.random.Generator) -> tuple[FloatArray, ...]:
    if config.preferred_orientation:
        rot, tilt, psi = preferred_views(
            n,
            rng,
            fractions=(config.preferred_fraction, config.secondary_fraction),
            spread_degrees=config.preferred_spread_degrees,
        )
    else:
        rot, tilt, psi = uniform_views(n, rng)
    shifts = np.clip(
        rng.normal(0.0, config.shift_sigma_pixels, (2, n)), -config.max_shift_pixels, config.max_shift_pixels
    )
    return rot, tilt, psi, shifts[0], shifts[1]


def _particle_spectra(
    spectrum: VolumeSpectrum,
    box: int,
    pixel_size_angstrom: float,
    poses: tuple[FloatArray, FloatArray, FloatArray],
    shift_x_pixels: FloatArray,
    shift_y_pixels: FloatArray,
) -> npt.NDArray[np.complex128]:
    """``rfft2`` of projections at ``poses`` whose centres sit at ``box // 2 + shift``."""
    f = project_fourier(spectrum, euler_matrix_relion(*poses), box, pixel_size_angstrom)
    f *= centre_and_shift(box, shift_x_pixels, shift_y_pixels)
    return f


def circle_mask(box: int, diameter_pixels: float) -> npt.NDArray[np.bool_]:
    """``(box, box)`` bool: pixels within ``diameter_pixels / 2`` of the centre ``box // 2``."""
    axis = np.arange(box, dtype=np.float64) - box // 2
    return np.asarray(axis[:, None] ** 2 + axis[None, :] ** 2 <= (diameter_pixels / 2.0) ** 2)


def signal_variance_in_circle(images: npt.ArrayLike, diameter_pixels: float) -> FloatArray:
    """Per-image variance of the pixels inside the centred circle, ``(n,)``."""
    arr = np.asarray(images, dtype=np.float64)
    mask = circle_mask(arr.shape[-1], diameter_pixels)
    return np.asarray(arr[:, mask].var(axis=1))


def decoy_density_scale(volume: FloatArray, decoy: FloatArray) -> float:
    """Factor that gives the decoy protein the map's density: the ratio of their 99th percentiles of
    density over the voxels above 10 % of each one's maximum (protein has about one density)."""

    def protein_level(v: FloatArray) -> float:
        inside = v[v > 0.1 * float(v.max())]
        return float(np.percentile(inside, 99)) if inside.size else 0.0

    level = protein_level(decoy)
    return protein_level(volume) / level if level > 0 else 1.0


def prepare_simulation(config: SimulationConfig) -> SimulationSetup:
    """Load or build the maps, transform them, and calibrate the noise to ``config.snr``.

    Raises
    ------
    InputError
        If the map cannot be read (see ``otf2d.simulator.maps.read_map``).
    """
    volume, voxel, source, pixel, box = _load_volume(config)
    spectrum = prepare_volume(volume, voxel, padding=config.padding)
    decoy_box = int(np.ceil(box * pixel / voxel / 2.0)) * 2
    decoy = render_blobs(decoy_phantom(), decoy_box, voxel)
    if config.map_path is not None:
        # The phantom's density is in its own units; a map's (e.g. ~1e-4 for ASPIRE's ribosome) differs
        # by orders of magnitude, and a decoy that bright would be junk no classifier could miss.
        decoy *= decoy_density_scale(volume, decoy)
    decoy_spectrum = prepare_volume(decoy, voxel, padding=config.padding)
    if config.particle_diameter_angstrom is not None:
        diameter = config.particle_diameter_angstrom
    elif config.map_path is None:
        diameter = protein_phantom().diameter_angstrom()
    else:
        diameter = enclosing_diameter_angstrom(volume, voxel)
    diameter = min(diameter, box * pixel)
    # Calibrate on particles drawn like the session's, with their own random stream.
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 1]))
    rot, tilt, psi, sx, sy = _draw_poses(config, CALIBRATION_PARTICLES, rng)
    ctf = draw_ctf(config, CALIBRATION_PARTICLES, rng)
    f = _particle_spectra(spectrum, box, pixel, (rot, tilt, psi), sx, sy)
    clean = np.fft.irfft2(f, s=(box, box))
    signal = np.fft.irfft2(f * relion_ctf_2d(ctf, pixel, box), s=(box, box))
    variance = float(signal_variance_in_circle(signal, diameter / pixel).mean())
    return SimulationSetup(
        config=config,
        box=box,
        pixel_size_angstrom=pixel,
        volume=volume,
        volume_pixel_size_angstrom=voxel,
        spectrum=spectrum,
        decoy_spectrum=decoy_spectrum,
        source=source,
        particle_diameter_angstrom=diameter,
        noise_sigma=float(np.sqrt(variance / config.snr)),
        particle_peak=float(np.median(clean.max(axis=(1, 2)))),
    )


def _junk(setup: SimulationSetup, kind: str, n: int, rng: np.random.Generator) -> JunkImages:
    """Junk of one kind; ice and carbon come on a canvas of twice the box (see ``_apply_ctf``)."""
    box, pixel, cfg = setup.box, setup.pixel_size_angstrom, setup.config
    if kind == "noise":
        return pure_noise(n, box)
    if kind == "ice":
        return ice_blobs(n, box, rng, setup.particle_peak, canvas=2 * box)
    if kind == "carbon":
        return carbon_edges(n, box, rng, setup.particle_peak, canvas=2 * box)
    if kind == "aggregate":
        return aggregates(setup.spectrum, n, box, pixel, rng, setup.particle_diameter_angstrom)
    return decoys(setup.decoy_spectrum, n, box, pixel, rng, cfg.shift_sigma_pixels, cfg.max_shift_pixels)


def _apply_ctf(images: FloatArray, ctf: CtfParams, pixel: float, box: int) -> FloatArray:
    """CTF-modulate real-space images and crop the central ``box``.

    Images larger than the box (film edges, ice that extends past it) get the CTF on their whole
    canvas, so what the box shows is delocalised from outside it rather than wrapped around.
    """
    canvas = images.shape[-1]
    out = np.fft.irfft2(np.fft.rfft2(images) * relion_ctf_2d(ctf, pixel, canvas), s=(canvas, canvas))
    lo = canvas // 2 - box // 2
    return np.asarray(out[:, lo : lo + box, lo : lo + box])


def normalise_like_relion(images: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Background (outside radius 0.75·box/2) to mean 0, std 1, per image.

    Returns
    -------
    tuple of numpy.ndarray
        The normalised ``(n, box, box)`` images, and the ``(n,)`` background means and standard
        deviations that were removed.
    """
    box = images.shape[-1]
    background = ~circle_mask(box, 2.0 * BACKGROUND_RADIUS_FRACTION * box / 2.0)
    values = images[:, background]
    mean = values.mean(axis=1)
    std = values.std(axis=1)
    std = np.where(std > 0, std, 1.0)
    return (images - mean[:, None, None]) / std[:, None, None], mean, std


def simulate_particles(
    config: SimulationConfig | SimulationSetup,
    n: int,
    rng: np.random.Generator,
    *,
    ctf: CtfParams | None = None,
) -> SimulatedParticles:
    """``n`` particle images (junk mixed in at ``junk_fraction``) with their ground truth.

    Parameters
    ----------
    config
        A configuration, or a setup already prepared from one (faster when called repeatedly).
    n
        Number of images.
    rng
        Random generator: the same generator state gives bit-identical images.
    ctf
        CTF of each image; ``None`` draws one per image (``draw_ctf``).

    Returns
    -------
    SimulatedParticles
        Images, clean signal and truth.
    """
    setup = config if isinstance(config, SimulationSetup) else prepare_simulation(config)
    cfg, box, pixel = setup.config, setup.box, setup.pixel_size_angstrom
    if ctf is None:
        ctf = draw_ctf(cfg, n, rng)
    elif len(ctf) != n:
        raise InputError(None, f"ctf has {len(ctf)} entries for {n} particles")
    is_junk = rng.random(n) < cfg.junk_fraction
    kinds = np.array(cfg.junk_types)[rng.integers(0, len(cfg.junk_types), n)]
    junk_type = np.where(is_junk, kinds, "none")
    rot, tilt, psi, sx, sy = _draw_poses(cfg, n, rng)
    origin_x, origin_y = -sx * pixel, -sy * pixel
    spectra = np.zeros((n, box, box // 2 + 1), dtype=np.complex128)
    good = np.flatnonzero(~is_junk)
    spectra[good] = _particle_spectra(
        setup.spectrum, box, pixel, (rot[good], tilt[good], psi[good]), sx[good], sy[good]
    )
    signal = np.fft.irfft2(spectra * relion_ctf_2d(ctf, pixel, box), s=(box, box))
    for kind in cfg.junk_types:
        sel = np.flatnonzero(junk_type == kind)
        if len(sel) == 0:
            continue
        made = _junk(setup, kind, len(sel), rng)
        signal[sel] = _apply_ctf(made.images, ctf.take(sel), pixel, box)
        rot[sel], tilt[sel], psi[sel] = made.rot, made.tilt, made.psi
        origin_x[sel], origin_y[sel] = made.origin_x_angstrom, made.origin_y_angstrom
    noisy = signal + rng.normal(0.0, setup.noise_sigma, signal.shape)
    images, _, std = normalise_like_relion(noisy)
    return SimulatedParticles(
        images=images.astype(np.float32),
        signal=(signal / std[:, None, None]).astype(np.float32),
        ctf=ctf,
        rot=rot,
        tilt=tilt,
        psi=psi,
        origin_x_angstrom=origin_x,
        origin_y_angstrom=origin_y,
        is_junk=is_junk,
        junk_type=junk_type.astype(str),
    )


__all__ = [
    "SimulatedParticles",
    "SimulationSetup",
    "circle_mask",
    "draw_ctf",
    "normalise_like_relion",
    "prepare_simulation",
    "signal_variance_in_circle",
    "simulate_particles",
]
