"""Where a per-micrograph ``_extract.star`` gets its optics (kV, Cs, Q0, pixel size) from.

An ``_extract.star`` has no ``data_optics`` (formats.md §1): the optics come from the Extract
job's ``particles.star`` (``Extract/jobNNN/particles.star``, above the ``Movies/`` tree), which
RELION writes after the first pass — possibly after the first ``_extract.star`` appeared. That
file holds every particle of the job, so instead of parsing all of it for each micrograph the
``data_optics`` block is copied (as text, up to the next ``data_`` block) into a small cache file
that the readers are pointed at with ``optics_from=``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from otf2d.core.durable import write_text_atomic

_JOB_DIR = re.compile(r"^job\d+$")
_MAX_OPTICS_BYTES = 1 << 20


def find_job_particles_star(extract_star: Path, roots: list[Path]) -> Path | None:
    """The ``particles.star`` of the job that wrote ``extract_star``, if it exists yet.

    Looks in each ancestor directory of ``extract_star``, nearest first, stopping after the
    first RELION job directory (``jobNNN``) or a watched root.
    """
    resolved_roots = {r.resolve() for r in roots}
    for directory in extract_star.resolve().parents:
        candidate = directory / "particles.star"
        if candidate.is_file():
            return candidate
        if _JOB_DIR.match(directory.name) or directory in resolved_roots or directory.parent == directory:
            return None
    return None


def optics_block_text(star: Path) -> str | None:
    """The text of the ``data_optics`` block of ``star`` (read up to the next block), or ``None``.

    Only the start of the file is read, however many particles follow.
    """
    lines: list[str] = []
    inside = False
    size = 0
    try:
        with star.open("r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                stripped = line.strip()
                if stripped.startswith("data_"):
                    if inside:
                        break
                    inside = stripped == "data_optics"
                if inside:
                    lines.append(line)
                    size += len(line)
                    if size > _MAX_OPTICS_BYTES:
                        return None
    except OSError:
        return None
    text = "".join(lines)
    return text if "loop_" in text else None


class OpticsCache:
    """Small ``data_optics``-only copies of ``particles.star`` files, kept in ``directory``.

    Parameters
    ----------
    directory
        Where the copies go (created when needed), e.g. next to the ledger.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._known: dict[Path, tuple[int, int, Path]] = {}

    def optics_file(self, particles_star: Path) -> Path | None:
        """A STAR file holding only the ``data_optics`` of ``particles_star``, or ``None`` if it has none."""
        try:
            st = particles_star.stat()
        except OSError:
            return None
        known = self._known.get(particles_star)
        if known is not None and known[:2] == (st.st_size, st.st_mtime_ns):
            return known[2]
        text = optics_block_text(particles_star)
        if text is None:
            return None
        name = hashlib.sha1(os.fsencode(particles_star.resolve())).hexdigest()[:16]  # any file name, UTF-8 or not
        target = self.directory / f"optics-{name}.star"
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_text_atomic(target, text)
        self._known[particles_star] = (st.st_size, st.st_mtime_ns, target)
        return target


__all__ = ["OpticsCache", "find_job_particles_star", "optics_block_text"]
