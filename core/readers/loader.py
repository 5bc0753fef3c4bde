"""Reading the images of a :class:`ParticleTable` into :class:`ParticleBatch` es, in chunks.

Each stack's header is read and checked once per call (once per iteration for
:func:`iter_batches`); the images are read through a memory map, so only the requested particles'
bytes are touched.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import BoxSizeMismatchError, InputError, PixelSizeError
from otf2d.core.particles import ParticleBatch
from otf2d.core.readers.stacks import StackHeader, read_images, read_stack_header
from otf2d.core.readers.table import ParticleTable


class StackPool:
    """The checked headers of a table's stacks, each read once.

    Parameters
    ----------
    table
        The table whose ``stack_paths`` are resolved (``project_dir``, then ``stack_search_dirs``).
    """

    def __init__(self, table: ParticleTable) -> None:
        self.table = table
        self._headers: dict[str, StackHeader] = {}

    def header(self, stack_path: str) -> StackHeader:
        """Header of ``stack_path`` (as written in the table).

        Raises
        ------
        MissingStackError, IncompleteStackError, InputError
            From :meth:`ParticleTable.resolve_stack` and :func:`read_stack_header`.
        """
        if stack_path not in self._headers:
            path = self.table.resolve_stack(stack_path)
            self._headers[stack_path] = read_stack_header(path, referenced_by=self.table.source)
        return self._headers[stack_path]


def _positions(n: int, index: npt.ArrayLike | slice) -> npt.NDArray[np.int64]:
    if isinstance(index, slice):
        return np.arange(n, dtype=np.int64)[index]
    idx = np.asarray(index)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise InputError(None, f"boolean mask has shape {idx.shape}, table has {n} particles")
        return np.flatnonzero(idx).astype(np.int64)
    idx = idx.astype(np.int64).reshape(-1)
    if len(idx) and (idx.min() < -n or idx.max() >= n):
        raise InputError(None, f"row index out of range for a table of {n} particles")
    return idx % n if n else idx


def load_batch(
    table: ParticleTable,
    index: npt.ArrayLike | slice,
    *,
    check_finite: bool = True,
    pool: StackPool | None = None,
) -> ParticleBatch:
    """The images and metadata of the particles at rows ``index`` of ``table``.

    Parameters
    ----------
    table
        From :func:`otf2d.core.readers.read_particle_table`.
    index
        Row numbers (0-based positions in the table), a boolean mask or a slice.
    check_finite
        Raise ``NonFiniteError`` when an image holds NaN or Inf.
    pool
        Header cache to share between calls (see :func:`iter_batches`).

    Returns
    -------
    ParticleBatch
        ``images`` of shape ``(m, box, box)``: float16 when every stack is mode 12, else float32.

    Raises
    ------
    MissingStackError, IncompleteStackError, IndexOutOfRangeError
        A stack is absent, shorter than its header claims, or shorter than an index.
    BoxSizeMismatchError
        Stacks of different box sizes, or a box that differs from the metadata's.
    PixelSizeError
        The rows span optics groups of different pixel sizes.
    NonFiniteError
        NaN/Inf pixels (when ``check_finite``).
    """
    rows = _positions(len(table), index)
    if len(rows) == 0:
        raise InputError(table.source, "no particles selected")
    pool = pool or StackPool(table)
    sub = table.take(rows)
    pixel_sizes = sub.pixel_sizes_angstrom
    if not np.allclose(pixel_sizes, pixel_sizes[0], rtol=1e-4):
        raise PixelSizeError(
            table.source,
            f"selected particles span optics groups with pixel sizes {np.unique(pixel_sizes).tolist()} Å; "
            "load each optics group separately",
        )
    stacks, first, inverse = np.unique(sub.stack_paths, return_index=True, return_inverse=True)
    order = np.argsort(first)  # stacks in order of first use, for helpful error messages
    headers = {int(k): pool.header(str(stacks[k])) for k in order}
    reference = headers[int(order[0])]
    for header in headers.values():
        if (header.height, header.width) != (reference.height, reference.width):
            raise BoxSizeMismatchError(
                header.path,
                f"images are {header.width}x{header.height} but those of {reference.path} are "
                f"{reference.width}x{reference.height} (both referenced by {table.source})",
            )
        if table.box_size and (header.height, header.width) != (table.box_size, table.box_size):
            raise BoxSizeMismatchError(
                header.path,
                f"images are {header.width}x{header.height} but the box of {table.source} is "
                f"{table.box_size} (its rlnImageSize / blob/shape, else its first stack's header)",
            )
    all_half = all(h.mode == 12 for h in headers.values())
    images = np.empty((len(rows), reference.height, reference.width), dtype=np.float16 if all_half else np.float32)
    grouped = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(stacks)))
    start = 0
    for k, stop in enumerate(bounds):
        members = grouped[start:stop]
        start = int(stop)
        if len(members):
            images[members] = read_images(headers[k], sub.indices[members], referenced_by=table.source)
    batch = ParticleBatch(
        images=images,
        pixel_size_angstrom=float(pixel_sizes[0]),
        ctf=sub.ctf,
        session=sub.session,
        stack_paths=sub.stack_paths,
        indices=sub.indices,
        optics_groups=sub.optics_groups,
    )
    if check_finite:
        batch.check_finite(source=str(table.source))
    return batch


def iter_batches(table: ParticleTable, batch_size: int, *, check_finite: bool = True) -> Iterator[ParticleBatch]:
    """The whole table, in file order, as batches of at most ``batch_size`` particles.

    A batch never spans two pixel sizes: where consecutive particles' optics groups differ in pixel
    size, a new batch starts. Stack headers are read once for the whole iteration.

    Raises
    ------
    InputError
        ``batch_size`` < 1, and everything :func:`load_batch` raises.
    """
    if batch_size < 1:
        raise InputError(None, f"batch_size must be >= 1, got {batch_size}")
    n = len(table)
    pixel_sizes = table.pixel_sizes_angstrom
    changes = np.flatnonzero(~np.isclose(pixel_sizes[1:], pixel_sizes[:-1], rtol=1e-4)) + 1
    run_edges = [0, *changes.tolist(), n]
    pool = StackPool(table)
    for run_start, run_stop in itertools.pairwise(run_edges):
        for start in range(run_start, run_stop, batch_size):
            stop = min(start + batch_size, run_stop)
            yield load_batch(table, slice(start, stop), check_finite=check_finite, pool=pool)


__all__ = ["StackPool", "iter_batches", "load_batch"]
