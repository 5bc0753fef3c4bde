"""A small RELION project whose particles carry what a real Extract job writes (issue 14): micrograph
names, coordinates, CTF fit statistics, optics columns otf2d does not use, a label RELION 3.1 does
not know, and an old classification's results, so tests can check every column comes back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from particle_files import random_images, star_loop, write_stack, write_star

BOX = 32
PIXEL = 2.0
#: ``[ny, nx]`` of every micrograph.
MIC_SHAPE = (300, 400)
N_PER_MIC = 12
N_MICS = 2


@dataclass(frozen=True)
class RoundtripProject:
    root: Path
    particles_star: Path
    coords_x: np.ndarray
    coords_y: np.ndarray
    micrographs: list[str]
    #: 0-based rows that duplicate another particle (centres 3 px = 6 Å apart, same micrograph)
    duplicate_rows: list[int]

    @property
    def n(self) -> int:
        return len(self.coords_x)


def make_project(root: Path, seed: int = 3) -> RoundtripProject:
    """Stacks, micrographs (MRC, 300 x 400) and a RELION 3.1 ``particles.star`` under ``root``."""
    rng = np.random.default_rng(seed)
    n = N_PER_MIC * N_MICS
    mics = [f"MotionCorr/job002/Movies/mic_{m:03d}.mrc" for m in range(N_MICS)]
    for name in mics:
        write_stack(root / name, rng.normal(size=MIC_SHAPE).astype(np.float32), voxel_size=PIXEL / 2)
    stacks = [f"Extract/job007/Movies/mic_{m:03d}.mrcs" for m in range(N_MICS)]
    for m, stack in enumerate(stacks):
        write_stack(root / stack, random_images(N_PER_MIC, BOX, seed=seed + m), voxel_size=PIXEL)
    # a 4 x 3 grid per micrograph, 80 px (80 Å at the micrograph's 1 Å/px) and more apart
    grid = np.arange(N_PER_MIC)
    xs = np.tile(40.0 + 90.0 * (grid % 4), N_MICS) + rng.integers(0, 5, size=n)
    ys = np.tile(40.0 + 80.0 * (grid // 4), N_MICS) + rng.integers(0, 5, size=n)
    xs[1], ys[1] = xs[0] + 3.0, ys[0]  # a duplicate of particle 0 (6 Å away)
    columns = {
        "rlnCoordinateX": [f"{x:.6f}" for x in xs],
        "rlnCoordinateY": [f"{y:.6f}" for y in ys],
        "rlnAutopickFigureOfMerit": [f"{v:.6f}" for v in rng.uniform(0, 1, n)],
        "rlnImageName": [f"{i % N_PER_MIC + 1:06d}@{stacks[i // N_PER_MIC]}" for i in range(n)],
        "rlnMicrographName": [mics[i // N_PER_MIC] for i in range(n)],
        "rlnOpticsGroup": ["1"] * n,
        "rlnCtfMaxResolution": [f"{v:.6f}" for v in rng.uniform(3, 6, n)],
        "rlnCtfFigureOfMerit": [f"{v:.6f}" for v in rng.uniform(0, 0.3, n)],
        "rlnDefocusU": [f"{v:.6f}" for v in rng.uniform(10000, 20000, n)],
        "rlnDefocusV": [f"{v:.6f}" for v in rng.uniform(10000, 20000, n)],
        "rlnDefocusAngle": [f"{v:.6f}" for v in rng.uniform(0, 180, n)],
        "rlnCtfBfactor": ["0.000000"] * n,
        "rlnCtfScalefactor": ["1.000000"] * n,
        "rlnPhaseShift": ["0.000000"] * n,
        "rlnHelicalTubeID": [str(i % 3 + 1) for i in range(n)],
        "rlnClassNumber": ["7"] * n,  # an old job's answer: must be replaced
        "rlnOriginX": ["1.5"] * n,  # RELION 3.0 origins in pixels: dropped, otf2d writes ...Angst
    }
    optics = {
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnOpticsGroup": ["1"],
        "rlnMicrographOriginalPixelSize": ["1.000000"],
        "rlnVoltage": ["300.000000"],
        "rlnSphericalAberration": ["2.700000"],
        "rlnAmplitudeContrast": ["0.100000"],
        "rlnImagePixelSize": [f"{PIXEL:.6f}"],
        "rlnImageSize": [str(BOX)],
        "rlnImageDimensionality": ["2"],
        "rlnCtfDataAreCtfPremultiplied": ["0"],
    }
    star_path = root / "Extract/job007/particles.star"
    star = write_star(star_path, star_loop("optics", optics), star_loop("particles", columns))
    return RoundtripProject(root, star, xs, ys, mics, duplicate_rows=[1])
