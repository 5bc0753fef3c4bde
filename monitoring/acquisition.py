"""What the microscope collected: micrographs, particles per micrograph, defocus and astigmatism.

:func:`summarize_acquisition` reads a snapshot's per-particle table (before the engine drops it
from the state it keeps, see ``otf2d.engine.serving.monitoring_hooks.without_particle_table``) and returns a
small :class:`AcquisitionSummary` the status page shows beside the classes: how many micrographs
(the RELION micrograph name, else the particle stack, one per micrograph in RELION's Extract),
particles per micrograph, the defocus range and a histogram of it, and the astigmatism. Defocus is
the mean of RELION's ``rlnDefocusU``/``V``; astigmatism their difference. Non-finite values are
left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from otf2d.core.snapshot import ParticleAssignments

#: Bins of the defocus histogram.
DEFOCUS_BINS = 16


@dataclass(frozen=True)
class AcquisitionSummary:
    """Micrographs and CTF of the particles in one snapshot (defocus in µm, astigmatism in Å)."""

    particles: int
    micrographs: int
    particles_per_micrograph: float
    defocus_median_um: float | None
    defocus_p5_um: float | None
    defocus_p95_um: float | None
    astigmatism_median_angstrom: float | None
    defocus_edges_um: tuple[float, ...] = ()
    defocus_counts: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """As strict JSON (unknown values are ``null``)."""
        return {
            "particles": self.particles,
            "micrographs": self.micrographs,
            "particles_per_micrograph": self.particles_per_micrograph,
            "defocus_median_um": self.defocus_median_um,
            "defocus_p5_um": self.defocus_p5_um,
            "defocus_p95_um": self.defocus_p95_um,
            "astigmatism_median_angstrom": self.astigmatism_median_angstrom,
            "defocus_histogram": {"edges_um": list(self.defocus_edges_um), "counts": list(self.defocus_counts)},
        }


def _micrograph_keys(particles: ParticleAssignments) -> np.ndarray:
    names = particles.micrograph_names
    return np.asarray(names if names is not None else particles.stack_paths)


def summarize_acquisition(particles: ParticleAssignments) -> AcquisitionSummary:
    """Summarise the micrographs and CTF of ``particles`` (see the module docstring)."""
    n = len(particles.indices)
    micrographs = len(np.unique(_micrograph_keys(particles).astype(str))) if n else 0
    du = np.asarray(particles.ctf.defocus_u_angstrom, dtype=np.float64)
    dv = np.asarray(particles.ctf.defocus_v_angstrom, dtype=np.float64)
    keep = np.isfinite(du) & np.isfinite(dv)
    defocus_um = (du[keep] + dv[keep]) / 2.0 / 1e4
    astig = np.abs(du[keep] - dv[keep])
    per_mic = n / micrographs if micrographs else 0.0
    if defocus_um.size == 0:
        return AcquisitionSummary(n, micrographs, per_mic, None, None, None, None)
    p5, median, p95 = (float(v) for v in np.percentile(defocus_um, [5, 50, 95]))
    lo, hi = (float(v) for v in np.percentile(defocus_um, [0.5, 99.5]))
    if not hi > lo:
        lo, hi = lo - 0.05, hi + 0.05
    counts, edges = np.histogram(np.clip(defocus_um, lo, hi), bins=DEFOCUS_BINS, range=(lo, hi))
    return AcquisitionSummary(
        particles=n,
        micrographs=micrographs,
        particles_per_micrograph=float(per_mic),
        defocus_median_um=median,
        defocus_p5_um=p5,
        defocus_p95_um=p95,
        astigmatism_median_angstrom=float(np.median(astig)) if math.isfinite(float(np.median(astig))) else None,
        defocus_edges_um=tuple(float(e) for e in edges),
        defocus_counts=tuple(int(c) for c in counts),
    )


__all__ = ["DEFOCUS_BINS", "AcquisitionSummary", "summarize_acquisition"]
