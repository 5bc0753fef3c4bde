"""RELION particle STAR files: 3.1/4/5 (optics + particles), 3.0 (no optics) and ``_extract.star``.

The presence of a ``data_optics`` table, not the version line, decides between 3.1+ and 3.0
(formats.md §1). A per-micrograph ``<mic>_extract.star`` holds a single ``data_images`` block
without optics: its voltage, Cs, amplitude contrast and pixel size come from ``optics_from`` (the
job's ``particles.star``) or from explicit values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from otf2d.core.errors import InputError, MissingColumnError, PixelSizeError
from otf2d.core.extra_columns import from_dataframe
from otf2d.core.particles import CtfParams
from otf2d.core.readers.optics import CTF_LABELS, OPTICS_FIELDS, OpticsOverrides, first_header, resolve_pixel_size
from otf2d.core.readers.project import default_session, find_project_dir
from otf2d.core.readers.relion_lookup import (
    OpticsRows,
    derive_groups,
    lookup_ctf,
    match_optics,
    pixel_size_columns,
    read_optics_table,
)
from otf2d.core.readers.star import (
    float_column,
    int_column,
    loop_blocks,
    read_star_blocks,
    require_columns,
    split_image_names,
    str_column,
)
from otf2d.core.readers.table import Alignments2D, ParticleTable
from otf2d.core.readers.validate import PHYSICAL_RANGES, check_ranges, check_stack_paths
from otf2d.core.snapshot import OpticsGroup


def read_relion_table(
    path: str | os.PathLike[str],
    *,
    session: str | None = None,
    project_dir: str | os.PathLike[str] | None = None,
    optics_from: str | os.PathLike[str] | None = None,
    overrides: OpticsOverrides | None = None,
) -> ParticleTable:
    """Read a RELION particle STAR file into a :class:`ParticleTable` (no images are read).

    Parameters
    ----------
    path
        ``particles.star`` (3.1+ or 3.0), ``run_data.star``, or a per-micrograph ``_extract.star``.
    session
        Session name for particle keys (default: the project directory's name).
    project_dir
        Directory stack paths are relative to (default: the STAR file's directory or the first
        ancestor where the first stack exists).
    optics_from
        A STAR file whose ``data_optics`` to use when ``path`` has none (the job's ``particles.star``).
    overrides
        Explicit pixel size / kV / Cs / Q0, which win over the file.

    Raises
    ------
    InputError
        Unparsable file, no particle rows, or an ``_extract.star`` whose optics cannot be found.
    MissingColumnError
        No ``rlnImageName``, or no ``rlnOpticsGroup`` where several optics groups exist.
    PixelSizeError
        No pixel size in the metadata, the keywords or the stack header.
    """
    path = Path(path)
    overrides = overrides or OpticsOverrides()
    blocks, block_name, particles = _particle_rows(path)
    stacks, indices = split_image_names(path, str_column(particles, "rlnImageName"))
    pdir = Path(project_dir) if project_dir is not None else find_project_dir(path, stacks.tolist())
    check_stack_paths(path, stacks, pdir)
    optics, fmt = _optics_rows(path, blocks, block_name, particles, optics_from)
    values, found_in = _ctf_values(path, block_name, particles, optics, fmt, overrides)
    pixel_meta = pixel_size_columns(path, particles, optics)
    groups = optics.groups if optics is not None else derive_groups(path, particles, values, pixel_meta)
    group_list, pixel_size = _optics_groups(path, groups, stacks, pdir, values, pixel_meta, optics, overrides)
    first_group = next(g for g in group_list if g.number == groups[0])
    return ParticleTable(
        source=path,
        project_dir=pdir,
        session=session if session is not None else default_session(pdir, path),
        stack_paths=stacks,
        indices=indices,
        ctf=CtfParams(**values),
        optics_groups=groups,
        optics=group_list,
        pixel_size_angstrom=first_group.image_pixel_size_angstrom,
        box_size=first_group.image_size,
        micrograph_names=str_column(particles, "rlnMicrographName")
        if "rlnMicrographName" in particles.columns
        else None,
        alignments=_alignments(path, particles, pixel_size),
        has_ctf=found_in["defocus_u_angstrom"] != "default",
        format=fmt,
        extra=from_dataframe(
            particles,
            optics=None if optics is None else optics.table,
            optics_rows=None if optics is None else optics.row_of_particle,
        ),
    )


def _particle_rows(path: Path) -> tuple[dict[str, Any], str, Any]:
    """Step 1 of :func:`read_relion_table`: the file's loop blocks and its particle block (named, non-empty)."""
    all_blocks = read_star_blocks(path)
    blocks = loop_blocks(all_blocks)
    for name in ("particles", "images"):
        if name in all_blocks and name not in blocks:
            raise InputError(path, f"block data_{name} is not a loop_ table (it holds key/value pairs only)")
    block_name, particles = _particle_block(path, blocks)
    require_columns(path, particles, ["rlnImageName"], block_name)
    if len(particles) == 0:
        raise InputError(path, f"block data_{block_name} has no particle rows")
    return blocks, block_name, particles


def _optics_rows(
    path: Path, blocks: dict[str, Any], block_name: str, particles: Any, optics_from: str | os.PathLike[str] | None
) -> tuple[OpticsRows | None, str]:
    """Step 2: the optics table each particle belongs to (the file's, or ``optics_from``'s), and the format."""
    if "optics" in blocks:
        return match_optics(path, particles, path, blocks["optics"]), "relion"
    if optics_from is not None:
        source = Path(optics_from)
        return match_optics(path, particles, source, read_optics_table(source, for_file=path)), "relion-extract"
    return None, "relion-extract" if block_name == "images" else "relion30"


def _ctf_values(
    path: Path, block_name: str, particles: Any, optics: OpticsRows | None, fmt: str, overrides: OpticsOverrides
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Step 3: each particle's CTF values (particle row, optics row, default; then the overrides), checked,
    and where each was found."""
    values, found_in = lookup_ctf(path, particles, optics)
    overrides.apply(path, values)
    if fmt == "relion-extract" and optics is None:
        _check_extract_optics(path, found_in, overrides)
    _check_ctf(path, block_name, values, found_in, optics, overrides)
    return values, found_in


def _optics_groups(
    path: Path,
    groups: np.ndarray,
    stacks: np.ndarray,
    pdir: Path,
    values: dict[str, np.ndarray],
    pixel_meta: np.ndarray,
    optics: OpticsRows | None,
    overrides: OpticsOverrides,
) -> tuple[list[OpticsGroup], np.ndarray]:
    """Step 4: one :class:`OpticsGroup` per group, and each particle's pixel size.

    A group's pixel size comes from the metadata, the overrides or, failing those, the header of one of its
    first stacks (read also when the optics table has no image size).
    """
    group_list: list[OpticsGroup] = []
    pixel_size = np.empty(len(groups))
    for number in np.unique(groups):
        members = np.flatnonzero(groups == number)
        first = int(members[0])
        header = None
        needs_pixel_size = overrides.pixel_size_angstrom is None and bool(np.isnan(pixel_meta[first]))
        if needs_pixel_size or not _has_image_size(optics):
            candidates = [pdir / s for s in dict.fromkeys(stacks[members[:64]].tolist())]
            header = first_header(candidates, path)
        meta = _group_pixel_size(path, int(number), pixel_meta[members])
        px = resolve_pixel_size(path, meta, overrides.pixel_size_angstrom, header, what=f"optics group {number}")
        pixel_size[members] = px
        image_size = _group_image_size(optics, first, header)
        name = str(optics.names[optics.row_of_particle[first]]) if optics is not None else f"opticsGroup{number}"
        group_list.append(
            OpticsGroup(
                number=int(number),
                name=name,
                voltage_kv=float(values["voltage_kv"][first]),
                spherical_aberration_mm=float(values["spherical_aberration_mm"][first]),
                amplitude_contrast=float(values["amplitude_contrast"][first]),
                image_pixel_size_angstrom=px,
                image_size=image_size,
            )
        )
    return group_list, pixel_size


def _particle_block(path: Path, blocks: dict[str, Any]) -> tuple[str, Any]:
    """The block holding the particles: ``particles``, ``images``, or the first with ``rlnImageName``."""
    for name in ("particles", "images"):
        if name in blocks:
            return name, blocks[name]
    for name, block in blocks.items():
        if name != "optics" and "rlnImageName" in block.columns:
            return name, block
    found = {f"data_{name}": list(map(str, block.columns)) for name, block in blocks.items()}
    raise MissingColumnError(path, f"no particle block: no loop has rlnImageName (loops found: {found or 'none'})")


def _check_extract_optics(path: Path, found_in: dict[str, str], overrides: OpticsOverrides) -> None:
    missing = [name for name in OPTICS_FIELDS if found_in[name] == "default" and getattr(overrides, name) is None]
    if missing:
        raise InputError(
            path,
            "per-micrograph extraction file (data_images, no optics table) does not give "
            f"{', '.join(missing)}: pass optics_from=<the job's particles.star> or explicit values "
            "(voltage_kv, spherical_aberration_mm, amplitude_contrast, pixel_size_angstrom)",
        )


def _check_ctf(
    path: Path,
    block: str,
    values: dict[str, np.ndarray],
    found_in: dict[str, str],
    optics: OpticsRows | None,
    overrides: OpticsOverrides,
) -> None:
    """Complete defocus pairs, a voltage from somewhere when there is a CTF, values in physical ranges."""
    if found_in["defocus_v_angstrom"] != "default" and found_in["defocus_u_angstrom"] == "default":
        raise InputError(path, "has rlnDefocusV but no rlnDefocusU: the defocus pair is incomplete")
    has_ctf = found_in["defocus_u_angstrom"] != "default"
    if has_ctf and found_in["voltage_kv"] == "default" and overrides.voltage_kv is None:
        lack = "its data_optics has no rlnVoltage" if optics is not None else "no data_optics and no rlnVoltage column"
        raise InputError(
            path,
            f"has defocus values but no accelerating voltage ({lack}); RELION's 200 kV default is not "
            "assumed: pass --voltage (and --cs, --amplitude-contrast) or --optics-from a particles.star",
        )
    where: dict[str, tuple[str, np.ndarray | None]] = {}
    for name in PHYSICAL_RANGES:
        label = CTF_LABELS[name]
        if getattr(overrides, name) is not None:
            continue
        if found_in[name] == "particles":
            where[name] = (f"column {label} of data_{block}", None)
        elif found_in[name] == "optics" and optics is not None:
            where[name] = (f"column {label} of data_optics in {optics.source}", optics.row_of_particle)
    check_ranges(path, values, where)


def _group_pixel_size(path: Path, number: int, values: np.ndarray) -> float | None:
    """The one pixel size the metadata gives a group's particles, ``None`` if it gives none."""
    known = values[np.isfinite(values)]
    if len(known) == 0:
        return None
    if len(known) < len(values) or not np.allclose(known, known[0], rtol=1e-4):
        raise PixelSizeError(path, f"pixel size differs within optics group {number}: {np.unique(known).tolist()} Å")
    return float(known[0])


def _has_image_size(optics: OpticsRows | None) -> bool:
    return optics is not None and "rlnImageSize" in optics.table.columns


def _group_image_size(optics: OpticsRows | None, first: int, header: Any) -> int:
    if optics is not None and "rlnImageSize" in optics.table.columns:
        return int(int_column(optics.source, optics.table, "rlnImageSize")[optics.row_of_particle[first]])
    return int(header.width) if header is not None else 0


def _alignments(path: Path, particles: Any, pixel_size: np.ndarray) -> Alignments2D | None:
    """``rlnAnglePsi`` with its origins (Å) and classes, when the file has them."""
    columns = set(particles.columns)
    if "rlnAnglePsi" not in columns:
        return None
    zeros = np.zeros(len(particles))
    if {"rlnOriginXAngst", "rlnOriginYAngst"} <= columns:
        ox = float_column(path, particles, "rlnOriginXAngst")
        oy = float_column(path, particles, "rlnOriginYAngst")
    elif {"rlnOriginX", "rlnOriginY"} <= columns:
        ox = float_column(path, particles, "rlnOriginX") * pixel_size
        oy = float_column(path, particles, "rlnOriginY") * pixel_size
    else:
        ox, oy = zeros, zeros.copy()
    classes = int_column(path, particles, "rlnClassNumber") - 1 if "rlnClassNumber" in columns else None
    return Alignments2D(
        psi_degrees=float_column(path, particles, "rlnAnglePsi"),
        origin_x_angstrom=ox,
        origin_y_angstrom=oy,
        class_index=classes,
    )


__all__ = ["read_relion_table"]
