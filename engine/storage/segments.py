"""The particle cache's image store: append-only raw segment files, addressed by (segment, byte offset).

Images are written as raw little-endian bytes (no header, no pickle) to ``<dir>/NNNNNN.seg``;
where each block of images lies, with its dtype and shape, is recorded by the caller (the journal's
SQLite index). A segment rolls over to the next number once it exceeds ``segment_bytes``.

Durability: :meth:`SegmentStore.append` writes and ``fsync``-s before it returns, so the index may
then commit rows pointing at the bytes. Bytes written but never committed (a crash between the two)
are cut off by :meth:`SegmentStore.truncate_to` when the journal reopens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from otf2d.core.durable import fsync_directory

#: Default size at which a segment file rolls over.
DEFAULT_SEGMENT_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class BlockLocation:
    """Where one appended block of bytes lies."""

    segment: int
    offset: int
    nbytes: int


def segment_path(directory: Path, segment: int) -> Path:
    """``<directory>/NNNNNN.seg``."""
    return directory / f"{segment:06d}.seg"


class SegmentStore:
    """Append-only segment files in one directory (one writer thread; any thread may read).

    Parameters
    ----------
    directory
        Where the segments live (created if missing).
    committed_end
        ``(segment, end offset)`` of the last byte the index knows about, or ``None`` for an empty
        store; anything beyond it is a leftover of a crash and is removed.
    segment_bytes
        Size at which a new segment is started.
    """

    def __init__(
        self,
        directory: Path,
        committed_end: tuple[int, int] | None,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = int(segment_bytes)
        segment, end = committed_end if committed_end is not None else (0, 0)
        self.truncate_to(segment, end)
        self._segment = segment
        os.close(os.open(segment_path(self.directory, segment), os.O_WRONLY | os.O_CREAT, 0o644))
        self._end = end
        fsync_directory(self.directory)

    @property
    def position(self) -> tuple[int, int]:
        """``(segment, offset)`` where the next block will start."""
        return self._segment, self._end

    def truncate_to(self, segment: int, end: int) -> None:
        """Cut segment ``segment`` to ``end`` bytes and delete every later segment."""
        for path in sorted(self.directory.glob("*.seg")):
            try:
                number = int(path.stem)
            except ValueError:
                continue
            if number > segment:
                path.unlink()
        path = segment_path(self.directory, segment)
        if path.exists() and path.stat().st_size > end:  # never extended: missing bytes are not zeros
            os.truncate(path, end)
        fsync_directory(self.directory)

    def append(self, data: bytes | memoryview) -> BlockLocation:
        """Write ``data`` durably (written and ``fsync``-ed) and say where it lies.

        Raises
        ------
        OSError
            The write failed (disk full, I/O error); the segment is cut back to where it was.
        """
        view = memoryview(data).cast("B")
        if self._end > 0 and self._end + view.nbytes > self.segment_bytes:
            self._roll_over()
        start = self._end
        # opened for each append and closed after: an idle session holds no file descriptor
        fd = os.open(segment_path(self.directory, self._segment), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            written = 0
            while written < view.nbytes:
                written += os.pwrite(fd, view[written:], start + written)
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, start)
            raise
        finally:
            os.close(fd)
        self._end = start + view.nbytes
        return BlockLocation(self._segment, start, view.nbytes)

    def rollback(self, location: BlockLocation) -> None:
        """Forget a block just appended (its index rows could not be committed)."""
        if location.segment == self._segment and location.offset + location.nbytes == self._end:
            os.truncate(segment_path(self.directory, self._segment), location.offset)
            self._end = location.offset

    def read(self, location: BlockLocation, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """The block at ``location`` as a new array of ``dtype`` and ``shape``."""
        with open(segment_path(self.directory, location.segment), "rb") as handle:
            handle.seek(location.offset)
            raw = handle.read(location.nbytes)
        if len(raw) != location.nbytes:
            raise OSError(f"segment {location.segment} is short: wanted {location.nbytes} bytes at {location.offset}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()

    def close(self) -> None:
        """Nothing to release: segments are open only while a block is written (kept for the callers)."""

    def _roll_over(self) -> None:
        self._segment += 1
        fd = os.open(segment_path(self.directory, self._segment), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)
        self._end = 0
        fsync_directory(self.directory)


__all__ = ["DEFAULT_SEGMENT_BYTES", "BlockLocation", "SegmentStore", "segment_path"]
