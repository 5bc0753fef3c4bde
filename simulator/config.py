"""``SimulationConfig``: every knob of the virtual microscope, with defaults and validation.

Defaults give a 2,000-particle session over 20 micrographs at box 64 and 4 Å/px of the built-in
phantom, 300 kV, Cs 2.7 mm, amplitude contrast 0.1, defocus 0.8–2.5 µm with up to 400 Å of
astigmatism, SNR 0.05 and 20 % junk; ``otf2d simulate --out DIR`` writes it in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from otf2d.core.errors import ConfigError

#: Junk kinds the simulator can make (``truth.csv`` column ``junk_type``; ``none`` = a particle).
JUNK_TYPES: tuple[str, ...] = ("noise", "ice", "carbon", "aggregate", "decoy")

#: Default box (px) and pixel size (Å) for the built-in phantom (a 256 Å box for a ~150 Å protein).
DEFAULT_BOX = 64
DEFAULT_PIXEL_SIZE_ANGSTROM = 4.0


@dataclass(frozen=True)
class SimulationConfig:
    """Parameters of one simulated collection session.

    Attributes
    ----------
    n_particles, n_micrographs
        Particles in the session, spread as evenly as possible over the micrographs.
    map_path
        MRC map to project; ``None`` uses the built-in phantom (``otf2d.simulator.phantom``).
    map_pixel_size_angstrom
        Voxel size of the map; overrides the header. Where the header says 0 and this is ``None``,
        the map is taken to be sampled at the simulation pixel size (a warning is logged).
    box
        Particle box in pixels; ``None``: 64 for the phantom, the map's side (rounded up to even)
        for a map.
    pixel_size_angstrom
        Å per pixel of the particle images; ``None``: 4 Å for the phantom, the map's voxel size
        for a map (4 Å if the map has none).
    snr
        Signal variance inside the particle circle / noise variance (after the CTF).
    junk_fraction
        Probability that an image is junk; junk kinds are drawn uniformly from ``junk_types``.
    preferred_orientation
        ``False``: views uniform on the sphere. ``True``: ``preferred_fraction`` of the particles
        within a Gaussian cone (``preferred_spread_degrees`` per axis) about the main preferred
        view, ``secondary_fraction`` about a second one, the rest uniform.
    shift_sigma_pixels, max_shift_pixels
        Particle origins: Gaussian per axis, clipped to ``±max_shift_pixels``.
    defocus_min_angstrom, defocus_max_angstrom, astigmatism_max_angstrom
        Per-micrograph mean defocus (uniform), and ``U - V`` (uniform in ``[0, max]``; U ≥ V);
        the angle is uniform in ``[-90, 90)`` degrees.
    voltage_kv, spherical_aberration_mm, amplitude_contrast
        Optics (one optics group).
    rate_per_minute
        Pace of writing, particles per minute; 0 = as fast as possible.
    seed
        Seed of everything random: equal configs write bit-identical sessions.
    micrograph_pixel_size_angstrom
        ``rlnMicrographOriginalPixelSize``; ``None``: a quarter of the image pixel size (images
        extracted with 4× down-scaling, as on-the-fly pipelines do). Picks are placed on a
        4096 × 4096 micrograph of that sampling.
    particle_diameter_angstrom
        Diameter of the circle used for the SNR; ``None``: from the map (the phantom's extent, or
        the sphere holding 95 % of a map's positive density).
    padding
        Zero-padding of the map for Fourier-slice projection.
    extract_job, motioncorr_job
        RELION job folders written into, relative to the output (project) directory.
    stack_growth
        ``"atomic"``: each stack is written to a temporary file and renamed. ``"append"``: like
        RELION, the stack grows one image at a time in place (to test readiness gates).
    """

    n_particles: int = 2000
    n_micrographs: int = 20
    map_path: Path | None = None
    map_pixel_size_angstrom: float | None = None
    box: int | None = None
    pixel_size_angstrom: float | None = None
    snr: float = 0.05
    junk_fraction: float = 0.2
    junk_types: tuple[str, ...] = JUNK_TYPES
    preferred_orientation: bool = False
    preferred_fraction: float = 0.75
    secondary_fraction: float = 0.1
    preferred_spread_degrees: float = 6.0
    shift_sigma_pixels: float = 1.5
    max_shift_pixels: float = 4.0
    defocus_min_angstrom: float = 8000.0
    defocus_max_angstrom: float = 25000.0
    astigmatism_max_angstrom: float = 400.0
    voltage_kv: float = 300.0
    spherical_aberration_mm: float = 2.7
    amplitude_contrast: float = 0.1
    rate_per_minute: float = 0.0
    seed: int = 0
    micrograph_pixel_size_angstrom: float | None = None
    particle_diameter_angstrom: float | None = None
    padding: int = 2
    extract_job: str = "Extract/job005"
    motioncorr_job: str = "MotionCorr/job002"
    stack_growth: str = "atomic"

    def __post_init__(self) -> None:
        problems = []
        if self.n_particles < 1:
            problems.append(f"n_particles must be >= 1, got {self.n_particles}")
        if self.n_micrographs < 1:
            problems.append(f"n_micrographs must be >= 1, got {self.n_micrographs}")
        if self.n_micrographs > self.n_particles:
            problems.append(f"{self.n_micrographs} micrographs need at least as many particles")
        if self.box is not None and (self.box < 16 or self.box % 2):
            problems.append(f"box must be even and >= 16 (RELION extracts even boxes), got {self.box}")
        for name in (
            "pixel_size_angstrom",
            "map_pixel_size_angstrom",
            "particle_diameter_angstrom",
            "micrograph_pixel_size_angstrom",
        ):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                problems.append(f"{name} must be > 0, got {value}")
        if not (np.isfinite(self.snr) and self.snr > 0):
            problems.append(f"snr must be > 0, got {self.snr}")
        if not 0.0 <= self.junk_fraction <= 1.0:
            problems.append(f"junk_fraction must lie in [0, 1], got {self.junk_fraction}")
        unknown = set(self.junk_types) - set(JUNK_TYPES)
        if unknown or not self.junk_types:
            problems.append(f"junk_types must be a non-empty subset of {JUNK_TYPES}, got {self.junk_types}")
        if not (
            self.preferred_fraction >= 0
            and self.secondary_fraction >= 0
            and self.preferred_fraction + self.secondary_fraction <= 1
        ):
            problems.append("preferred_fraction and secondary_fraction must be >= 0 and sum to <= 1")
        if self.preferred_spread_degrees <= 0:
            problems.append("preferred_spread_degrees must be > 0")
        if self.shift_sigma_pixels < 0 or self.max_shift_pixels < 0:
            problems.append("shift_sigma_pixels and max_shift_pixels must be >= 0")
        if not 0 < self.defocus_min_angstrom <= self.defocus_max_angstrom:
            problems.append("need 0 < defocus_min_angstrom <= defocus_max_angstrom")
        if not 0 <= self.astigmatism_max_angstrom < 2 * self.defocus_min_angstrom:
            problems.append("astigmatism_max_angstrom must lie in [0, 2·defocus_min_angstrom)")
        if self.voltage_kv <= 0 or self.spherical_aberration_mm < 0:
            problems.append("voltage_kv must be > 0 and spherical_aberration_mm >= 0")
        if not 0 <= self.amplitude_contrast < 1:
            problems.append(f"amplitude_contrast must lie in [0, 1), got {self.amplitude_contrast}")
        if not (np.isfinite(self.rate_per_minute) and self.rate_per_minute >= 0):
            problems.append(f"rate_per_minute must be >= 0, got {self.rate_per_minute}")
        if self.padding < 1:
            problems.append(f"padding must be >= 1, got {self.padding}")
        if self.stack_growth not in ("atomic", "append"):
            problems.append(f"stack_growth must be 'atomic' or 'append', got {self.stack_growth!r}")
        if problems:
            raise ConfigError(None, "; ".join(problems))


__all__ = ["DEFAULT_BOX", "DEFAULT_PIXEL_SIZE_ANGSTROM", "JUNK_TYPES", "SimulationConfig"]
