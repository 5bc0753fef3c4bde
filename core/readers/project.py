"""Where stack paths resolve from, and the default session name."""

from __future__ import annotations

from pathlib import Path


def find_project_dir(metadata_path: Path, first_stack: str | None) -> Path:
    """The directory that RELION stack paths are relative to.

    RELION writes stack paths relative to the project directory, while job files sit deeper
    (``Extract/job007/particles.star``, ``Extract/job007/Movies/x_extract.star``). Try the metadata
    file's directory, then each ancestor, and return the first where ``first_stack`` exists; when it
    exists nowhere (or is absolute), the metadata file's directory.

    Parameters
    ----------
    metadata_path
        The STAR file.
    first_stack
        Stack path of the first particle, as written in the file.
    """
    start = metadata_path.resolve().parent
    if not first_stack or Path(first_stack).is_absolute():
        return start
    for candidate in (start, *start.parents):
        if (candidate / first_stack).is_file():
            return candidate
    return start


def default_session(project_dir: Path, metadata_path: Path) -> str:
    """Session name when none is given: the project directory's name (stable across the project's
    files, so a particle read from ``particles.star`` and from its ``_extract.star`` gets one key)."""
    return project_dir.resolve().name or metadata_path.stem


__all__ = ["default_session", "find_project_dir"]
