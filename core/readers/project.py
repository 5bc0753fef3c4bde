"""Where stack paths resolve from, and the default session name."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

#: A RELION job directory (``Extract/job007``) and a cryoSPARC one (``P3/J12``).
_RELION_JOB = re.compile(r"^job\d+$")
_CRYOSPARC_JOB = re.compile(r"^J\d+$")
#: How many distinct stacks are tried when the project directory is searched for.
_SAMPLE = 32


def layout_project_dir(metadata_path: Path, *, cryosparc: bool = False) -> Path | None:
    """The project directory implied by the job layout, or ``None`` outside a job directory.

    RELION: the folder above ``<JobType>/jobNNN/`` (``Extract/job007/particles.star`` and
    ``Extract/job007/Movies/x_extract.star`` both give the project). cryoSPARC: the folder holding
    ``Jnn/`` (``P3/J12/J12_particles.cs`` gives ``P3``).
    """
    start = metadata_path.resolve().parent
    if cryosparc:
        return start.parent if _CRYOSPARC_JOB.match(start.name) and start.parent != start else None
    for directory in (start, *start.parents):
        if _RELION_JOB.match(directory.name) and directory.parent.parent != directory.parent:
            return directory.parent.parent
    return None


def _holds_any(directory: Path, stacks: Sequence[str]) -> bool:
    return any((directory / stack).is_file() for stack in stacks)


def find_project_dir(metadata_path: Path, stacks: Sequence[str], *, cryosparc: bool = False) -> Path:
    """The directory that stack paths are relative to.

    RELION writes stack paths relative to the project directory, while job files sit deeper
    (``Extract/job007/particles.star``, ``Extract/job007/Movies/x_extract.star``). The job layout
    decides when the file sits in a job directory and some stack exists below it (or none exists
    anywhere yet); otherwise the metadata file's directory and then each ancestor are tried, and
    the first where *any* of the first distinct stacks exists wins (not just row 1's, so one missing
    stack does not make every stack "missing"). When no stack exists anywhere, the layout's
    directory, else the metadata file's directory.

    Parameters
    ----------
    metadata_path
        The STAR or ``.cs`` file.
    stacks
        Stack paths as written in the file, in row order.
    cryosparc
        Use cryoSPARC's job layout (``Jnn/``) instead of RELION's (``<Type>/jobNNN/``).
    """
    start = metadata_path.resolve().parent
    sample = [s for s in dict.fromkeys(stacks[: _SAMPLE * 64]) if s and not Path(s).is_absolute()][:_SAMPLE]
    layout = layout_project_dir(metadata_path, cryosparc=cryosparc)
    if not sample:
        return layout or start
    if layout is not None and _holds_any(layout, sample):
        return layout
    for candidate in (start, *start.parents):
        if _holds_any(candidate, sample):
            return candidate
    return layout or start


def default_session(project_dir: Path, metadata_path: Path) -> str:
    """Session name when none is given: the project directory's name (stable across the project's
    files, so a particle read from ``particles.star`` and from its ``_extract.star`` gets one key)."""
    return project_dir.resolve().name or metadata_path.stem


__all__ = ["default_session", "find_project_dir", "layout_project_dir"]
