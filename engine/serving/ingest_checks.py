"""What the engine accepts into a session: only particles its classifier can classify.

:func:`batch_problem` says why a decoded batch can never be classified ("" when it can): a box
that is not square, even and within :data:`BOX_RANGE`; a pixel size outside
:data:`PIXEL_SIZE_RANGE_ANGSTROM`; or a particle whose CTF is not physical (voltage, spherical
aberration, amplitude contrast, defocus, scale outside the ranges below). The reason names the
first offending particle (its stack and 1-based index) and the value. Such a batch is REJECTed
(a dead letter with the reason on the streamer's side) instead of being ACKed and failing the
session's classification later.
"""

from __future__ import annotations

import numpy as np

from otf2d.core.particles import ParticleBatch

#: Smallest and largest box (pixels, square and even) the classifier takes.
BOX_RANGE = (16, 2048)
#: Pixel sizes (Å) of real cryo-EM particle images, with room for heavy binning.
PIXEL_SIZE_RANGE_ANGSTROM = (0.05, 50.0)
#: Physical ranges of the CTF fields (RELION units), inclusive: field -> (low, high, unit).
CTF_RANGES: dict[str, tuple[float, float, str]] = {
    "voltage_kv": (60.0, 400.0, "kV"),
    "spherical_aberration_mm": (0.0, 10.0, "mm"),
    "amplitude_contrast": (0.0, 1.0, ""),
    "defocus_u_angstrom": (-100_000.0, 200_000.0, "Å"),
    "defocus_v_angstrom": (-100_000.0, 200_000.0, "Å"),
    "scale": (1e-3, 1e3, ""),
}


def box_problem(batch: ParticleBatch) -> str:
    """Why the classifier cannot take images of this box ("" when it can)."""
    h, w = batch.box_size
    if h != w:
        return f"images of {h}x{w} pixels: only square boxes can be classified"
    if h % 2:
        return f"images of odd box {h}: only even boxes can be classified"
    if not BOX_RANGE[0] <= h <= BOX_RANGE[1]:
        return f"images of box {h}: the classifier takes boxes of {BOX_RANGE[0]} to {BOX_RANGE[1]} pixels"
    return ""


def batch_problem(batch: ParticleBatch) -> str:
    """Why this batch can never be classified ("" when it can; see the module docstring)."""
    problem = box_problem(batch)
    if problem:
        return problem
    low, high = PIXEL_SIZE_RANGE_ANGSTROM
    if not low <= batch.pixel_size_angstrom <= high:
        return f"pixel size {batch.pixel_size_angstrom:g} Å is outside {low:g}-{high:g} Å"
    for name, (lo, hi, unit) in CTF_RANGES.items():
        values = np.asarray(getattr(batch.ctf, name), dtype=np.float64)
        bad = np.flatnonzero((values < lo) | (values > hi))
        if bad.size:
            i = int(bad[0])
            return (
                f"particle {int(batch.indices[i])} of {batch.stack_paths[i]}: {name} = {values[i]:g} {unit} is outside "
                f"{lo:g}-{hi:g} {unit} ({bad.size} particle(s) of the batch)"
            ).replace("  ", " ")
    return ""


__all__ = ["BOX_RANGE", "CTF_RANGES", "PIXEL_SIZE_RANGE_ANGSTROM", "batch_problem", "box_problem"]
