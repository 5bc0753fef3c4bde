"""MRC image stacks: header checks and reading selected images.

The header is parsed with ``mrcfile`` (``header_only``, permissive, so that old RELION stacks without
the ``MAP`` id still open) and then checked here: a supported mode and a file holding at least
``1024 + nsymbt + nx·ny·nz·itemsize`` bytes. Images are then read through ``numpy.memmap``, so
reading a few particles of a large stack touches only their bytes.

Modes: 2 (float32) and 12 (float16) are returned as they are; 0 (int8), 1 (int16) and 6 (uint16)
are converted to float32. A 2-D file holds one image (a stack of one).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np
import numpy.typing as npt

from otf2d.core.errors import IncompleteStackError, IndexOutOfRangeError, InputError, MissingStackError

HEADER_BYTES = 1024
#: MRC modes we read, with what they hold.
SUPPORTED_MODES: dict[int, str] = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}


@dataclass(frozen=True)
class StackHeader:
    """What the header of an MRC stack says, after checking it against the file size.

    Attributes
    ----------
    path
        The stack file.
    n_images, height, width
        ``nz``, ``ny``, ``nx``.
    mode
        MRC mode (see ``SUPPORTED_MODES``).
    dtype
        On-disk dtype, with the file's byte order.
    data_offset
        Byte offset of the first image (``1024 + nsymbt``).
    voxel_size_angstrom
        Pixel size recorded in the header (x); 0 when unset, as is common.
    file_size
        Size of the file in bytes when it was checked.
    """

    path: Path
    n_images: int
    height: int
    width: int
    mode: int
    dtype: np.dtype
    data_offset: int
    voxel_size_angstrom: float
    file_size: int

    @property
    def image_dtype(self) -> np.dtype:
        """dtype of the images once read: float16 for mode 12, float32 otherwise."""
        return np.dtype(np.float16) if self.mode == 12 else np.dtype(np.float32)

    @property
    def expected_size(self) -> int:
        """Bytes the header promises: header + extended header + every image."""
        return self.data_offset + self.n_images * self.height * self.width * self.dtype.itemsize


def read_stack_header(
    path: str | os.PathLike[str],
    *,
    referenced_by: str | os.PathLike[str] | None = None,
    check_size: bool = True,
) -> StackHeader:
    """Read and check the header of the MRC stack at ``path``.

    Parameters
    ----------
    path
        The ``.mrcs`` / ``.mrc`` file.
    referenced_by
        The metadata file that points to it, named in errors.
    check_size
        Compare the file size with what the header promises (turn off only to learn box and
        voxel size from a stack that may still be growing).

    Raises
    ------
    MissingStackError
        No such file.
    IncompleteStackError
        The file is shorter than its header promises (truncated, or still being written).
    InputError
        Empty file, not an MRC file, or an unsupported mode.
    """
    path = Path(path)
    where = f" (referenced by {referenced_by})" if referenced_by is not None else ""
    if not path.is_file():
        raise MissingStackError(path, f"stack not found{where}")
    file_size = path.stat().st_size
    if file_size == 0:
        raise InputError(path, f"empty file{where}")
    if file_size < HEADER_BYTES:
        raise IncompleteStackError(
            path, f"only {file_size} bytes: shorter than the {HEADER_BYTES}-byte MRC header{where}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                header = mrc.header.copy()
                nsymbt = int(header.nsymbt)
                voxel_x = float(mrc.voxel_size.x)
    except (ValueError, OSError) as exc:
        raise InputError(path, f"not a readable MRC file ({exc}){where}") from None
    mode = int(header.mode)
    if mode not in SUPPORTED_MODES:
        raise InputError(path, f"unsupported MRC mode {mode} (supported: {SUPPORTED_MODES}){where}")
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if nx <= 0 or ny <= 0 or nz <= 0 or nsymbt < 0:
        raise InputError(path, f"not a valid MRC header (nx={nx}, ny={ny}, nz={nz}, nsymbt={nsymbt}){where}")
    dtype = np.dtype(mrcfile.utils.data_dtype_from_header(header))
    stack = StackHeader(
        path=path,
        n_images=nz,
        height=ny,
        width=nx,
        mode=mode,
        dtype=dtype,
        data_offset=HEADER_BYTES + nsymbt,
        voxel_size_angstrom=voxel_x if np.isfinite(voxel_x) and voxel_x > 0 else 0.0,
        file_size=file_size,
    )
    if check_size and file_size < stack.expected_size:
        image_bytes = nx * ny * dtype.itemsize
        complete = max(0, (file_size - stack.data_offset) // image_bytes)
        raise IncompleteStackError(
            path,
            f"header claims {nz} images of {nx}x{ny} (mode {mode}, {stack.expected_size} bytes) "
            f"but the file holds {file_size} bytes ({complete} complete image(s)): "
            f"truncated or still being written{where}",
        )
    return stack


def read_images(
    header: StackHeader, indices: npt.ArrayLike, *, referenced_by: str | os.PathLike[str] | None = None
) -> np.ndarray:
    """Read the images at 1-based ``indices`` of a checked stack.

    Parameters
    ----------
    header
        From :func:`read_stack_header`.
    indices
        ``(m,)`` 1-based image numbers, any order, repeats allowed.
    referenced_by
        The metadata file that asked for them, named in errors.

    Returns
    -------
    numpy.ndarray
        ``(m, height, width)``, float16 for mode 12 and float32 otherwise, native byte order.

    Raises
    ------
    IndexOutOfRangeError
        An index below 1 or above ``n_images``.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    bad = (idx < 1) | (idx > header.n_images)
    if bad.any():
        first = int(idx[np.flatnonzero(bad)[0]])
        where = f"; referenced by {referenced_by}" if referenced_by is not None else ""
        raise IndexOutOfRangeError(
            header.path,
            f"image index {first} is out of range: the stack holds {header.n_images} image(s){where}",
        )
    out = np.empty((len(idx), header.height, header.width), dtype=header.image_dtype)
    if len(idx) == 0:
        return out
    data = np.memmap(
        header.path,
        dtype=header.dtype,
        mode="r",
        offset=header.data_offset,
        shape=(header.n_images, header.height, header.width),
    )
    try:
        order = np.argsort(idx, kind="stable")
        out[order] = data[idx[order] - 1]
    finally:
        del data
    return out


def read_stack_images(path: str | os.PathLike[str], indices: npt.ArrayLike | None = None) -> np.ndarray:
    """Read a bare image stack (no metadata): all images, or those at 1-based ``indices``.

    Returns
    -------
    numpy.ndarray
        ``(m, height, width)`` float16 (mode 12) or float32.
    """
    header = read_stack_header(path)
    wanted = np.arange(1, header.n_images + 1) if indices is None else indices
    return read_images(header, wanted)


__all__ = ["SUPPORTED_MODES", "StackHeader", "read_images", "read_stack_header", "read_stack_images"]
