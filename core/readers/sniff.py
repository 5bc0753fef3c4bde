"""One entry point for every particle file: sniff the format, then call its reader."""

from __future__ import annotations

import os
from pathlib import Path

from otf2d.core.errors import InputError, UnsupportedFormatError
from otf2d.core.readers.cryosparc import CSDAT_MAGIC, NUMPY_MAGIC, read_cryosparc_table
from otf2d.core.readers.optics import OpticsOverrides
from otf2d.core.readers.relion import read_relion_table
from otf2d.core.readers.table import ParticleTable

_MRC_SUFFIXES = {".mrc", ".mrcs", ".st", ".map"}


def sniff_format(path: str | os.PathLike[str]) -> str:
    """``"cryosparc"``, ``"csdat"``, ``"mrc"`` or ``"star"``, from the first bytes and the name.

    Raises
    ------
    InputError
        Missing or empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    with path.open("rb") as fh:
        head = fh.read(1024)
    if not head:
        raise InputError(path, "empty file")
    if head.startswith(CSDAT_MAGIC):
        return "csdat"
    if head.startswith(NUMPY_MAGIC):
        return "cryosparc"
    if head[208:211] == b"MAP" or path.suffix.lower() in _MRC_SUFFIXES:
        return "mrc"
    if path.suffix.lower() == ".cs":
        return "cryosparc"  # load_cs explains what is wrong with it
    return "star"


def read_particle_table(
    path: str | os.PathLike[str],
    *,
    session: str | None = None,
    project_dir: str | os.PathLike[str] | None = None,
    optics_from: str | os.PathLike[str] | None = None,
    pixel_size_angstrom: float | None = None,
    voltage_kv: float | None = None,
    spherical_aberration_mm: float | None = None,
    amplitude_contrast: float | None = None,
) -> ParticleTable:
    """Read any supported particle metadata file (RELION STAR or cryoSPARC ``.cs``); no images.

    Parameters
    ----------
    path
        RELION ``particles.star`` (3.0–5), per-micrograph ``_extract.star``, or cryoSPARC ``.cs``.
    session
        Session name for particle keys (default: the project directory's name).
    project_dir
        Directory stack paths are relative to (default: found from the file's location).
    optics_from
        RELION file whose ``data_optics`` applies when ``path`` has none (``_extract.star``).
    pixel_size_angstrom, voltage_kv, spherical_aberration_mm, amplitude_contrast
        Explicit values (Å, kV, mm, fraction): when given, they win over the file for every particle.

    Raises
    ------
    UnsupportedFormatError
        Compressed cryoSPARC CSDAT, or a bare image stack (use
        :func:`otf2d.core.readers.stacks.read_stack_images` for those).
    InputError
        Any problem with the file; the subclass says which (see ``otf2d.core.errors``).
    """
    overrides = OpticsOverrides(
        pixel_size_angstrom=pixel_size_angstrom,
        voltage_kv=voltage_kv,
        spherical_aberration_mm=spherical_aberration_mm,
        amplitude_contrast=amplitude_contrast,
    )
    kind = sniff_format(path)
    if kind in ("cryosparc", "csdat"):
        return read_cryosparc_table(path, session=session, project_dir=project_dir, overrides=overrides)
    if kind == "mrc":
        raise UnsupportedFormatError(
            path,
            "an image stack holds no particle metadata (CTF, pixel size); read it with "
            "otf2d.core.readers.read_stack_images, or pass the particles.star / .cs that refers to it",
        )
    return read_relion_table(
        path, session=session, project_dir=project_dir, optics_from=optics_from, overrides=overrides
    )


__all__ = ["read_particle_table", "sniff_format"]
