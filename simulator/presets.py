"""Named sessions: the realistic benchmark session of issue 12, built from a real map.

``realistic_session`` is what a facility's data looks like to a 2D classifier, and what the
project's quality tests and ``benchmarks/classify.py`` classify next to RELION: the 70S ribosome
(ASPIRE's ``clean70SRibosome_vol_65p.mrc``, whose header says voxel 0; at 5 Å per voxel the
ribosome is ≈ 250 Å across) in an 80-px box at 5 Å/px, RELION's CTF of each micrograph (300 kV,
Cs 2.7 mm, amplitude contrast 0.1, defocus 0.8–2.5 µm, up to 400 Å of astigmatism), white noise at
SNR 0.05 (signal variance inside the particle circle over noise variance), views uniform on the
sphere, origins Gaussian with σ = 2 px, 20 % junk of five kinds (pure noise, ice blobs, carbon
edges, two touching particles, a smaller contaminant protein), normalised as RELION Extract does,
200 particles per micrograph. The projector is pinned to RELION's conventions by
``tests/test_projection.py`` (``relion_project``'s projections of the same map).

The map is not part of the project (licence): pass its path; tests find it under ``../shared/data``
and skip where it is absent.
"""

from __future__ import annotations

from pathlib import Path

from otf2d.simulator.config import SimulationConfig

#: Where the map lies relative to the shared data folder.
RIBOSOME_MAP = Path("aspire/clean70SRibosome_vol_65p.mrc")
#: Voxel size of that map (its header says 0).
RIBOSOME_VOXEL_ANGSTROM = 5.0
#: Box and pixel size of the realistic session's particles.
REALISTIC_BOX = 80
REALISTIC_PIXEL_ANGSTROM = 5.0
#: Particles per micrograph (a micrograph of a typical on-the-fly session).
PARTICLES_PER_MICROGRAPH = 200


def realistic_session(
    map_path: Path, *, n_particles: int = 2000, snr: float = 0.05, seed: int = 1, junk_fraction: float = 0.2
) -> SimulationConfig:
    """The realistic benchmark session (module docstring) of ``n_particles`` at ``snr``."""
    return SimulationConfig(
        n_particles=n_particles,
        n_micrographs=max(1, n_particles // PARTICLES_PER_MICROGRAPH),
        map_path=Path(map_path),
        map_pixel_size_angstrom=RIBOSOME_VOXEL_ANGSTROM,
        box=REALISTIC_BOX,
        pixel_size_angstrom=REALISTIC_PIXEL_ANGSTROM,
        snr=snr,
        junk_fraction=junk_fraction,
        shift_sigma_pixels=2.0,
        max_shift_pixels=6.0,
        seed=seed,
    )


__all__ = ["RIBOSOME_MAP", "RIBOSOME_VOXEL_ANGSTROM", "realistic_session"]
