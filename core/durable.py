"""The one atomic (and by default durable) file write: readers see the old file or the new one, never a part.

:func:`atomic_output` yields a temporary path in the *same directory* as the target (so ``os.replace`` is a
rename within one filesystem); the caller writes the whole file there with any library that takes a file
name. On success the file is ``fsync``-ed, renamed over the target and the directory ``fsync``-ed, so the
rename itself survives a crash; on failure the temporary file is removed and the target is left as it was.

Options, for the writers that need them: ``keep_previous`` renames the current target aside first (the
engine's checkpoints keep one previous generation), ``temporary`` names the temporary file (the simulator
writes ``<name>.tmp`` as RELION does, which the streamer must ignore), ``fsync=False`` only renames (RELION
does not ``fsync`` either, and the simulator should not be slower than the microscope it imitates).

Example::

    write_json_atomic(session_dir / "session.json", record, sort_keys=True)
    with atomic_output(out_dir / "run_it001_classes.mrcs") as tmp:
        library_writer(tmp)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temporary_sibling(path: str | os.PathLike[str]) -> Path:
    """A fresh hidden name next to ``path``: ``<dir>/.<name>.<pid>.<random>.tmp`` (nothing is created)."""
    target = Path(path)
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def fsync_file(path: str | os.PathLike[str]) -> None:
    """``fsync`` the file at ``path`` (its data reaches the disk before a rename makes it visible)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: What ``fsync`` of a directory raises where the filesystem cannot sync directories at all (some
#: network and FUSE filesystems); the rename is still atomic there. PostgreSQL ignores the same two.
DIRECTORY_SYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.EBADF})


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """``fsync`` a directory, so that a file created or renamed in it survives a crash.

    A filesystem that cannot sync directories (``EINVAL``/``EBADF``, :data:`DIRECTORY_SYNC_UNSUPPORTED`)
    is not an error: there is nothing more to do there.

    Raises
    ------
    OSError
        The directory cannot be opened, or the sync failed (an I/O error).
    """
    try:
        fsync_file(directory)
    except OSError as exc:
        if exc.errno not in DIRECTORY_SYNC_UNSUPPORTED:
            raise


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str],
    *,
    temporary: str | os.PathLike[str] | None = None,
    keep_previous: str | os.PathLike[str] | None = None,
    fsync: bool = True,
) -> Iterator[Path]:
    """Yield a temporary path that replaces ``path`` when the block succeeds.

    Parameters
    ----------
    path
        The final target; its directory must exist.
    temporary
        Where to write (default: :func:`temporary_sibling`); must be in the target's directory.
    keep_previous
        When given and the target exists, the target is first renamed to this path.
    fsync
        ``fsync`` the file before the rename and the directory after it (default). ``False``: rename only.

    Yields
    ------
    Path
        Where to write the complete file.
    """
    target = Path(path)
    tmp = Path(temporary) if temporary is not None else temporary_sibling(target)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        if keep_previous is not None and target.exists():
            os.replace(target, keep_previous)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if fsync:
        fsync_directory(target.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes | memoryview, **options: Any) -> Path:
    """Write ``data`` to ``path`` atomically (``options``: those of :func:`atomic_output`); returns ``path``."""
    target = Path(path)
    with atomic_output(target, **options) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
    return target


def write_text_atomic(path: str | os.PathLike[str], text: str, **options: Any) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"), **options)


def write_json_atomic(
    path: str | os.PathLike[str], document: Any, *, sort_keys: bool = False, newline: bool = True, **options: Any
) -> Path:
    """Write ``document`` as indented, strict JSON (no NaN/Infinity) to ``path`` atomically."""
    text = json.dumps(document, indent=2, sort_keys=sort_keys, allow_nan=False)
    return write_text_atomic(path, text + ("\n" if newline else ""), **options)


__all__ = [
    "DIRECTORY_SYNC_UNSUPPORTED",
    "atomic_output",
    "fsync_directory",
    "fsync_file",
    "temporary_sibling",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
