"""Sampling geometry of a classification: internal box, masks, rotations, shifts, polar grid size.

Everything here is derived once from ``Class2DParams`` and the particles' box and pixel size, and
is plain numbers (no tensors), so it can be written into checkpoints and snapshots as is.

Conventions
-----------
- Images are indexed ``[y, x]``; the centre of a box of side ``D`` is pixel ``D // 2`` (RELION).
- In-plane rotations follow RELION's ``rlnAnglePsi``: a particle at angle ψ with origin ``o`` (px)
  is ``image(p) = class(R(ψ)·(p + o))``, with ``R(ψ)`` the counter-clockwise rotation of the
  ``(x, y)`` plane (pinned against ``relion_project`` in ``tests/test_em_conventions.py``).
- Internal pixels: the particles are Fourier-cropped to ``internal_box`` pixels of
  ``internal_pixel_angstrom`` Å, whose Nyquist frequency is the maximum resolution.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from otf2d.core.config import Class2DParams
from otf2d.core.errors import InputError

#: Extra angular orders kept on each ring beyond the support bound ``2π·r·a/D``.
BAND_MARGIN_ORDERS = 2


@dataclass(frozen=True)
class Geometry:
    """The sampling of one classification (all lengths in internal pixels unless named).

    Attributes
    ----------
    box, pixel_size_angstrom
        Side (px) and pixel size (Å) of the input particles.
    internal_box, internal_pixel_angstrom
        Side and pixel size after Fourier cropping to the maximum resolution.
    mask_inner_radius, mask_outer_radius
        Radii of the soft circular mask (1 inside the inner radius, raised cosine to 0 at the outer).
    n_rings
        Polar rings ``0 .. n_rings`` (``n_rings = internal_box // 2``), one Fourier pixel apart.
    align_ring_min, align_ring_max
        Rings used in scoring (inclusive): the minimum and maximum alignment resolution.
    n_rotations
        In-plane rotations scored, ``R``; the step is ``360 / R`` degrees. Derived from RELION's rule
        ``ceil(π · diameter / resolution)`` rounded up to even unless ``in_plane_step_degrees`` is given.
    n_angles
        Polar samples per ring, ``Q``: a multiple of ``R``, even, at least twice the angular
        bandwidth of an object of radius ``band_radius`` at the outermost ring.
    band_radius
        Radius (px) of the support assumed for particles and classes (the outer mask radius).
    max_shift
        Radius of the disc of shifts searched (px, step ``shift_step``).
    shift_step
        Spacing of the shift grid (px).
    zero_pad_factor
        Oversampling of the Fourier grid used to interpolate polar samples.
    """

    box: int
    pixel_size_angstrom: float
    internal_box: int
    internal_pixel_angstrom: float
    mask_inner_radius: float
    mask_outer_radius: float
    n_rings: int
    align_ring_min: int
    align_ring_max: int
    n_rotations: int
    n_angles: int
    band_radius: float
    max_shift: float
    shift_step: float
    zero_pad_factor: int

    @property
    def rotation_step_degrees(self) -> float:
        """In-plane angular step in degrees."""
        return 360.0 / self.n_rotations

    @property
    def angles_per_rotation(self) -> int:
        """Polar samples per rotation step, ``Q / R``."""
        return self.n_angles // self.n_rotations

    def ring_orders(self) -> list[int]:
        """Highest angular order ``M_r`` kept on each ring ``r = 0 .. n_rings``.

        An object inside radius ``a`` has, on Fourier ring ``r``, angular orders up to about
        ``2π·r·a/D`` (Jacobi–Anger); orders above that carry only noise. ``M_0 = 0``.
        """
        half = self.n_angles // 2
        orders = [0]
        for r in range(1, self.n_rings + 1):
            bound = math.ceil(2.0 * math.pi * r * self.band_radius / self.internal_box) + BAND_MARGIN_ORDERS
            orders.append(min(half, bound))
        return orders

    def shift_grid(self) -> list[tuple[float, float]]:
        """The ``(x, y)`` shifts searched (px): grid points on a disc, RELION's rule.

        RELION's ``HealpixSampling::setTranslations`` keeps ``i² + j² ≤ range² + 0.001`` (in steps);
        ±3 px at 1 px gives 29 shifts, ±5 px gives 81. The zero shift is always included.
        """
        steps = math.floor(self.max_shift / self.shift_step + 1e-9)
        limit = (self.max_shift / self.shift_step) ** 2 + 1e-3
        out = []
        for j in range(-steps, steps + 1):
            for i in range(-steps, steps + 1):
                if i * i + j * j <= limit:
                    out.append((i * self.shift_step, j * self.shift_step))
        return out

    def as_dict(self) -> dict[str, Any]:
        """Plain-number view for checkpoints and snapshots."""
        return asdict(self)


def internal_box_size(box: int, pixel_size_angstrom: float, max_resolution_angstrom: float) -> int:
    """Side of the Fourier-cropped box whose Nyquist frequency reaches ``max_resolution_angstrom``.

    Parameters
    ----------
    box
        Side of the input particles (px, even).
    pixel_size_angstrom
        Input pixel size (Å).
    max_resolution_angstrom
        Highest resolution kept (Å).

    Returns
    -------
    int
        The smallest even side ``D ≤ box`` with ``2·box·pixel/D ≤ max_resolution`` (``box`` when
        the data do not reach that resolution).
    """
    wanted = 2.0 * box * pixel_size_angstrom / max_resolution_angstrom
    d = 2 * math.ceil(wanted / 2.0 - 1e-9)
    return int(max(8, min(box, d)))


def make_geometry(params: Class2DParams, box: int, pixel_size_angstrom: float) -> Geometry:
    """Derive the sampling of a classification from its parameters and the input box.

    Parameters
    ----------
    params
        The classification parameters.
    box
        Side of the input particles in pixels (even, ≥ 16).
    pixel_size_angstrom
        Pixel size of the input particles in Å.

    Returns
    -------
    Geometry

    Raises
    ------
    InputError
        If the box is odd or too small, or the mask or shift range make no sense for it.
    """
    if box % 2 or box < 16:
        raise InputError(None, f"particle box must be even and >= 16 px, got {box}")
    if not pixel_size_angstrom > 0:
        raise InputError(None, f"pixel size must be > 0 Å, got {pixel_size_angstrom}")
    d = internal_box_size(box, pixel_size_angstrom, params.max_resolution_angstrom)
    pix = box * pixel_size_angstrom / d
    box_angstrom = box * pixel_size_angstrom

    inner_a = params.mask_diameter_angstrom if params.mask_diameter_angstrom is not None else 0.85 * box_angstrom
    if params.mask_outer_diameter_angstrom is not None:
        outer_a = params.mask_outer_diameter_angstrom
    else:
        outer_a = min(1.2 * inner_a, box_angstrom)
    if not 0 < inner_a <= outer_a:
        raise InputError(None, f"mask diameters must satisfy 0 < inner ({inner_a} Å) <= outer ({outer_a} Å)")
    inner_r = inner_a / (2.0 * pix)
    outer_r = outer_a / (2.0 * pix)

    n_rings = d // 2
    align_res = params.alignment_resolution_angstrom
    ring_max = min(n_rings, math.floor(d * pix / align_res + 1e-6))
    ring_min = 1
    if params.min_alignment_resolution_angstrom is not None:
        ring_min = max(1, math.ceil(d * pix / params.min_alignment_resolution_angstrom - 1e-6))
    if ring_max < ring_min:
        raise InputError(None, "the alignment resolution range selects no Fourier ring at this pixel size")

    if params.in_plane_step_degrees is not None:
        n_rot = max(4, round(360.0 / params.in_plane_step_degrees))
    else:
        n_rot = max(4, math.ceil(math.pi * inner_a / max(align_res, 2.0 * pix)))
        # Even, so that the adaptive E-step's coarse pass takes every other rotation
        # (otf2d.engine.em.significant); an odd R left it at every rotation, at twice the cost.
        n_rot += n_rot % 2

    band_radius = min(outer_r, d / 2.0)
    max_order = math.ceil(2.0 * math.pi * n_rings * band_radius / d) + BAND_MARGIN_ORDERS
    c = max(1, math.ceil(2 * (max_order + 1) / n_rot))
    if (c * n_rot) % 2:
        c += 1
    n_angles = c * n_rot

    max_shift_a = params.max_shift_angstrom if params.max_shift_angstrom is not None else 0.1 * inner_a
    if max_shift_a < 0:
        raise InputError(None, f"max shift must be >= 0 Å, got {max_shift_a}")
    return Geometry(
        box=int(box),
        pixel_size_angstrom=float(pixel_size_angstrom),
        internal_box=int(d),
        internal_pixel_angstrom=float(pix),
        mask_inner_radius=float(inner_r),
        mask_outer_radius=float(outer_r),
        n_rings=int(n_rings),
        align_ring_min=int(ring_min),
        align_ring_max=int(ring_max),
        n_rotations=int(n_rot),
        n_angles=int(n_angles),
        band_radius=float(band_radius),
        max_shift=float(max_shift_a / pix),
        shift_step=1.0,
        zero_pad_factor=int(params.zero_pad_factor),
    )


__all__ = ["BAND_MARGIN_ORDERS", "Geometry", "internal_box_size", "make_geometry"]
