"""Checks every snapshot writer makes before writing anything (so bad input writes no file)."""

from __future__ import annotations

import numpy as np

from otf2d.core.errors import InputError, NonFiniteError
from otf2d.core.snapshot import ClassSnapshot

_FLOAT_FIELDS = (
    "psi_degrees",
    "origin_x_angstrom",
    "origin_y_angstrom",
    "pmax",
    "class_posterior",
    "class_ess",
    "log_likelihood",
)


def optics_lookup(snapshot: ClassSnapshot) -> dict[int, int]:
    """Map each 1-based optics-group number to its position in ``snapshot.optics``.

    Raises
    ------
    InputError
        If a group number is listed twice, or a particle refers to a group that is not listed.
    """
    lookup: dict[int, int] = {}
    for pos, group in enumerate(snapshot.optics):
        if int(group.number) in lookup:
            raise InputError(None, f"snapshot: optics group {group.number} is listed twice")
        lookup[int(group.number)] = pos
    used = {int(g) for g in np.unique(np.asarray(snapshot.particles.optics_groups))}
    missing = sorted(used - set(lookup))
    if missing:
        raise InputError(None, f"snapshot: particles refer to optics group(s) {missing} not in snapshot.optics")
    return lookup


def check_snapshot(snapshot: ClassSnapshot) -> dict[int, int]:
    """Validate what the writers rely on; return :func:`optics_lookup`.

    Raises
    ------
    InputError
        Bad optics groups, a particle index below 1, or a non-positive pixel size.
    NonFiniteError
        NaN or Inf in a per-particle value or in the class averages.
    """
    parts = snapshot.particles
    if not np.isfinite(snapshot.pixel_size_angstrom) or snapshot.pixel_size_angstrom <= 0:
        raise InputError(None, f"snapshot: pixel size must be > 0 Å, got {snapshot.pixel_size_angstrom}")
    if len(parts) and np.asarray(parts.indices).min() < 1:
        raise InputError(None, "snapshot: particle indices are 1-based; found an index below 1")
    for name in _FLOAT_FIELDS:
        values = np.asarray(getattr(parts, name), dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise NonFiniteError(None, f"snapshot: particles' {name} contains NaN or Inf")
    if not np.all(np.isfinite(snapshot.averages)):
        raise NonFiniteError(None, "snapshot: class averages contain NaN or Inf")
    return optics_lookup(snapshot)


__all__ = ["check_snapshot", "optics_lookup"]
