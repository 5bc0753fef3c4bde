"""Checks that make physically absurd or unsafe input a clear error instead of a silent wrong answer.

- :data:`PHYSICAL_RANGES`: accelerating voltage 60–400 kV, Cs 0–10 mm, amplitude contrast 0 ≤ Q0 < 1
  (RELION's ``K3 = atan(Q0/√(1−Q0²))`` is undefined from 1 on); :func:`check_ranges` names the
  file, the row and the column of the first value outside.
- :data:`MAX_IMAGE_INDEX`: an MRC header counts sections in a signed 32-bit ``nz``, so no stack
  holds an image numbered beyond it.
- :func:`check_stack_paths`: stack paths stay inside the project directory.
- :func:`not_a_file_reason`: what a path that cannot be opened as a file really is (a directory,
  a symbolic-link loop, a broken link, absent).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import UnsafePathError, ValueRangeError

#: CtfParams field → (lowest, highest, unit, highest included).
PHYSICAL_RANGES: dict[str, tuple[float, float, str, bool]] = {
    "voltage_kv": (60.0, 400.0, "kV", True),
    "spherical_aberration_mm": (0.0, 10.0, "mm", True),
    "amplitude_contrast": (0.0, 1.0, "", False),
}
#: Largest image number an MRC stack can hold (``nz`` is a signed 32-bit integer).
MAX_IMAGE_INDEX = 2**31 - 1


def range_text(name: str) -> str:
    """``60–400 kV`` style description of the allowed range of ``name``."""
    low, high, unit, inclusive = PHYSICAL_RANGES[name]
    if not inclusive:
        return f"{low:g} ≤ value < {high:g}{' ' + unit if unit else ''}"
    return f"{low:g}–{high:g}{' ' + unit if unit else ''}"


def outside(name: str, values: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Mask of ``values`` outside the allowed range of field ``name``."""
    low, high, _unit, inclusive = PHYSICAL_RANGES[name]
    too_high = values > high if inclusive else values >= high
    return np.asarray((values < low) | too_high | ~np.isfinite(values))


def check_ranges(
    path: Path,
    values: Mapping[str, npt.NDArray[np.float64]],
    where: Mapping[str, tuple[str, npt.NDArray[np.int64] | None]],
) -> None:
    """Raise ``ValueRangeError`` for the first value outside :data:`PHYSICAL_RANGES`.

    Parameters
    ----------
    path
        The file, named in the error.
    values
        CtfParams field name → ``(n,)`` per-particle values.
    where
        Field name → (description of the column, e.g. ``"column rlnVoltage of data_optics"``,
        and the 0-based row of that table each particle's value comes from, or ``None`` when the
        rows are the particles themselves). Fields absent from ``where`` are not checked (defaults,
        explicit values checked elsewhere).
    """
    for name, (column, rows) in where.items():
        if name not in PHYSICAL_RANGES:
            continue
        bad = outside(name, values[name])
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            row = first if rows is None else int(rows[first])
            value = float(values[name][first])
            raise ValueRangeError(
                path, f"row {row + 1}, {column}: {value:g} is outside the physical range {range_text(name)}"
            )


def check_stack_paths(path: Path, stacks: npt.NDArray[np.str_], project_dir: Path) -> None:
    """Refuse stack paths that leave ``project_dir`` (``..`` beyond it, or absolute elsewhere).

    The check is on the written path (lexical), so symbolic links inside the project (RELION's
    ``Movies`` link to the raw data, for instance) stay usable.
    """
    root = os.path.normpath(os.path.abspath(project_dir))
    unique, first = np.unique(stacks, return_index=True)
    for stack, row in zip(unique.tolist(), first.tolist(), strict=True):
        normal = os.path.normpath(os.path.join(root, stack))
        if normal != root and not normal.startswith(root.rstrip(os.sep) + os.sep):
            raise UnsafePathError(
                path,
                f"row {row + 1}: stack path {stack!r} leaves the project directory {root}; refused "
                "(if intended: `otf2d classify` / `inspect` take --project-dir, a directory holding every stack)",
            )


def not_a_file_reason(path: str | os.PathLike[str]) -> str:
    """Why ``path`` cannot be read as a file: a directory, a symbolic-link loop, absent, ..."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (too many levels of symbolic links)"
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"broken symbolic link (to {target!r}, which does not exist)"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "file not found"
        return f"cannot access it: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return "file not found"


def is_absent(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` simply does not exist (as opposed to a directory, a link loop, ...)."""
    return not_a_file_reason(path) == "file not found"


__all__ = [
    "MAX_IMAGE_INDEX",
    "PHYSICAL_RANGES",
    "check_ranges",
    "check_stack_paths",
    "is_absent",
    "not_a_file_reason",
    "outside",
    "range_text",
]
