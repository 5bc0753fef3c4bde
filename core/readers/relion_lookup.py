"""RELION's per-particle lookup rule, and the optics table it looks into.

For each CTF value RELION looks in the particle row first, then in the optics row of the particle's
``rlnOpticsGroup``, and else uses its default (``CTF::readValue``, ctf.cpp; formats.md §1):
kV 200, DefocusV = DefocusU, angle 0, Cs 0, B 0, scale 1, Q0 0, phase shift 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError, MissingColumnError
from otf2d.core.particles import RELION_CTF_DEFAULTS
from otf2d.core.readers.optics import CTF_LABELS
from otf2d.core.readers.star import float_column, int_column, loop_blocks, read_star_blocks, str_column

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class OpticsRows:
    """A ``data_optics`` table and which of its rows each particle belongs to.

    Attributes
    ----------
    source
        The file the table came from (the particle file, or ``optics_from``).
    table
        The ``data_optics`` DataFrame.
    numbers
        ``(g,)`` 1-based group number of each row.
    names
        ``(g,)`` group names.
    row_of_particle
        ``(n,)`` row index into ``table`` for each particle.
    """

    source: Path
    table: Any
    numbers: IntArray
    names: npt.NDArray[np.str_]
    row_of_particle: IntArray

    def column(self, label: str) -> FloatArray | None:
        """Per-particle values of optics column ``label``, or ``None`` when the table lacks it."""
        if label not in self.table.columns:
            return None
        return float_column(self.source, self.table, label)[self.row_of_particle]

    @property
    def groups(self) -> IntArray:
        """``(n,)`` optics group of each particle."""
        return self.numbers[self.row_of_particle]


def read_optics_table(path: Path, *, for_file: Path) -> Any:
    """The ``data_optics`` block of ``path`` (an ``optics_from`` file)."""
    blocks = loop_blocks(read_star_blocks(path))
    if "optics" not in blocks:
        raise InputError(path, f"has no data_optics table, needed for the optics of {for_file}")
    return blocks["optics"]


def match_optics(path: Path, particles: Any, source: Path, optics: Any) -> OpticsRows:
    """Attach each particle of ``path`` to its row of the optics table from ``source``.

    Raises
    ------
    MissingColumnError
        ``rlnOpticsGroup`` is needed (several optics rows) but absent.
    InputError
        A particle's group is not in the optics table, or the optics table is empty.
    """
    if len(optics) == 0:
        raise InputError(source, "data_optics has no rows")
    if "rlnOpticsGroup" in optics.columns:
        numbers = int_column(source, optics, "rlnOpticsGroup")
    elif len(optics) == 1:
        numbers = np.ones(1, dtype=np.int64)
    else:
        raise MissingColumnError(source, f"data_optics has {len(optics)} rows but no rlnOpticsGroup column")
    if len(np.unique(numbers)) != len(numbers):
        raise InputError(source, f"data_optics repeats an optics group number: {numbers.tolist()}")
    if "rlnOpticsGroupName" in optics.columns:
        names = str_column(optics, "rlnOpticsGroupName")
    else:
        names = np.array([f"opticsGroup{g}" for g in numbers], dtype=str)
    n = len(particles)
    if "rlnOpticsGroup" in particles.columns:
        groups = int_column(path, particles, "rlnOpticsGroup")
    elif len(numbers) == 1:
        groups = np.full(n, numbers[0], dtype=np.int64)
    else:
        raise MissingColumnError(
            path,
            f"particles lack rlnOpticsGroup while data_optics of {source} has {len(numbers)} groups; "
            f"columns present: {', '.join(map(str, particles.columns))}",
        )
    row_by_number = {int(g): i for i, g in enumerate(numbers)}
    unknown = sorted(set(np.unique(groups).tolist()) - set(row_by_number))
    if unknown:
        raise InputError(path, f"particles refer to optics group(s) {unknown} absent from data_optics of {source}")
    rows = np.array([row_by_number[int(g)] for g in groups], dtype=np.int64)
    return OpticsRows(source=source, table=optics, numbers=numbers, names=names, row_of_particle=rows)


def lookup_ctf(path: Path, particles: Any, optics: OpticsRows | None) -> tuple[dict[str, FloatArray], dict[str, str]]:
    """Per-particle CTF values by RELION's rule: particle row, optics row, default.

    Returns
    -------
    values
        CtfParams field name → ``(n,)`` float64.
    found_in
        Field name → ``"particles"``, ``"optics"`` or ``"default"``.
    """
    n = len(particles)
    values: dict[str, FloatArray] = {}
    found_in: dict[str, str] = {}
    for name, label in CTF_LABELS.items():
        from_optics = optics.column(label) if optics is not None else None
        if label in particles.columns:
            values[name], found_in[name] = float_column(path, particles, label), "particles"
        elif from_optics is not None:
            values[name], found_in[name] = from_optics, "optics"
        elif name == "defocus_v_angstrom":
            values[name], found_in[name] = values["defocus_u_angstrom"].copy(), "default"
        else:
            default = 0.0 if name == "defocus_u_angstrom" else RELION_CTF_DEFAULTS[name]
            values[name], found_in[name] = np.full(n, default, dtype=np.float64), "default"
    return values, found_in


def pixel_size_columns(path: Path, particles: Any, optics: OpticsRows | None) -> FloatArray:
    """``(n,)`` image pixel size of each particle from the metadata (Å; NaN where unknown).

    Optics ``rlnImagePixelSize``, then optics ``rlnMicrographPixelSize`` (images extracted without
    rescaling), then the particle row's ``rlnImagePixelSize``, then RELION 3.0's
    ``rlnDetectorPixelSize`` (µm) × 10⁴ / ``rlnMagnification``.
    """
    n = len(particles)
    result = np.full(n, np.nan)
    candidates: list[FloatArray | None] = []
    if optics is not None:
        candidates += [optics.column("rlnImagePixelSize"), optics.column("rlnMicrographPixelSize")]
    if "rlnImagePixelSize" in particles.columns:
        candidates.append(float_column(path, particles, "rlnImagePixelSize"))
    if {"rlnDetectorPixelSize", "rlnMagnification"} <= set(particles.columns):
        detector_um = float_column(path, particles, "rlnDetectorPixelSize")
        magnification = float_column(path, particles, "rlnMagnification")
        with np.errstate(divide="ignore", invalid="ignore"):
            candidates.append(detector_um * 1e4 / magnification)
    for values in candidates:
        if values is None:
            continue
        usable = np.isnan(result) & np.isfinite(values) & (values > 0)
        result[usable] = values[usable]
    return result


def derive_groups(path: Path, particles: Any, values: dict[str, FloatArray], pixel_size: FloatArray) -> IntArray:
    """Optics groups of a file without an optics table (RELION 3.0 or ``_extract.star``).

    ``rlnOpticsGroup`` when present; else one group per distinct (kV, Cs, Q0, pixel size), numbered
    1, 2, … in order of first appearance.
    """
    if "rlnOpticsGroup" in particles.columns:
        groups = int_column(path, particles, "rlnOpticsGroup")
        if groups.min() < 1:
            raise InputError(path, "rlnOpticsGroup is 1-based; found a value below 1")
        return groups
    key = np.column_stack(
        [
            values["voltage_kv"],
            values["spherical_aberration_mm"],
            values["amplitude_contrast"],
            np.nan_to_num(pixel_size, nan=-1.0),
        ]
    )
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)] + 1


__all__ = [
    "OpticsRows",
    "derive_groups",
    "lookup_ctf",
    "match_optics",
    "pixel_size_columns",
    "read_optics_table",
]
