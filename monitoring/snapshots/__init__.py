"""Writers of RELION Class2D output, cryoSPARC .cs and PNG galleries.

:func:`write_snapshot` writes everything for one iteration into a job directory, each file
atomically, then moves the ``latest.json`` pointer to it — last, so a reader that follows the
pointer always finds a complete snapshot::

    <out_dir>/run_it007_classes.mrcs        RELION classes stack
    <out_dir>/run_it007_model.star          RELION model
    <out_dir>/run_it007_data.star           RELION particles with their classes
    <out_dir>/run_it007_otf2d.json          provenance (version, parameters, particle digest)
    <out_dir>/run_it007_particles.cs        cryoSPARC-style particles
    <out_dir>/run_it007_class_averages.cs   cryoSPARC-style class averages (→ the .mrcs)
    <out_dir>/run_it007_particles.csg       cryoSPARC result group of the particles .cs
    <out_dir>/run_it007_class_averages.csg  cryoSPARC result group of the class averages .cs
    <out_dir>/run_it007_gallery.png         gallery, largest class first
    <out_dir>/latest.json                   {"iteration": 7, "files": {...}, ...}

Paths in the ``.cs`` files are never absolute (unless a stack path was): the particles' ``blob/path``
is their stack path as read (relative to the project directory), and the class averages'
``blob/path`` is the classes stack relative to :func:`cryosparc_path_root`: the project directory
when the writer is given one (``otf2d classify``: the input's project directory; an engine session
started with a ``project_dir``), else the snapshot directory itself. ``latest.json`` names that
root as ``cryosparc_paths_relative_to``, and each ``.csg`` (cryoSPARC's Import Result Group file,
:mod:`otf2d.monitoring.snapshots.result_group`) states it in its description and names its ``.cs``
relative to itself (``>run_it007_particles.cs``).

The reader is beside the writers: ``otf2d.monitoring.snapshots.reader`` finds a snapshot on disk and reads
it back as a :class:`~otf2d.core.snapshot.ClassSnapshot` (``otf2d select``, ``rebalance``, ``templates``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from otf2d.core.durable import write_json_atomic
from otf2d.core.errors import InputError
from otf2d.core.snapshot import ClassSnapshot
from otf2d.monitoring.snapshots.atomic import write_npy_atomic
from otf2d.monitoring.snapshots.cryosparc import class_averages_cs_array, particles_cs_array
from otf2d.monitoring.snapshots.gallery import render_class_png, render_gallery, write_gallery_png
from otf2d.monitoring.snapshots.relion import iteration_root, star_path, write_relion_class2d
from otf2d.monitoring.snapshots.result_group import write_result_group

#: Name of the pointer file naming the newest complete snapshot in a job directory.
LATEST_POINTER = "latest.json"


@dataclass(frozen=True)
class SnapshotPaths:
    """Where one snapshot's files are (all in the same directory). The result groups (``.csg``) are
    ``None`` for a snapshot written before otf2d wrote them."""

    iteration: int
    classes_mrcs: Path
    model_star: Path
    data_star: Path
    provenance_json: Path
    particles_cs: Path
    class_averages_cs: Path
    gallery_png: Path
    particles_csg: Path | None = None
    class_averages_csg: Path | None = None

    def files(self) -> dict[str, Path]:
        """Every file of the snapshot by role."""
        files = {
            "classes_mrcs": self.classes_mrcs,
            "model_star": self.model_star,
            "data_star": self.data_star,
            "provenance_json": self.provenance_json,
            "particles_cs": self.particles_cs,
            "class_averages_cs": self.class_averages_cs,
            "gallery_png": self.gallery_png,
        }
        for role in _OPTIONAL_ROLES:
            path = getattr(self, role)
            if path is not None:
                files[role] = path
        return files


def cryosparc_path_root(out_dir: str | os.PathLike[str], project_dir: str | os.PathLike[str] | None) -> Path:
    """The directory the ``blob/path`` of the class-average ``.cs`` is relative to: the project
    directory (that of the particles' stack paths) when known, else the snapshot directory."""
    return Path(project_dir) if project_dir is not None else Path(out_dir)


def write_snapshot(
    snapshot: ClassSnapshot,
    out_dir: str | os.PathLike[str],
    *,
    project_dir: str | os.PathLike[str] | None = None,
    root: str = "run",
    session: str = "",
) -> SnapshotPaths:
    """Write every output of one snapshot, then point ``latest.json`` at it.

    Parameters
    ----------
    snapshot
        The classes and every particle's assignment.
    out_dir
        Job directory (created if missing).
    project_dir
        RELION/cryoSPARC project directory; paths to the classes stack are stored relative to it.
    root
        File root (RELION's ``--o`` basename).
    session
        Session name, part of each particle's cryoSPARC ``uid``.

    Returns
    -------
    SnapshotPaths
        The files written.

    Raises
    ------
    InputError
        Invalid snapshot content (checked before anything is written).
    """
    out = Path(out_dir)
    relion = write_relion_class2d(snapshot, out, root=root, project_dir=project_dir)
    base = iteration_root(root, snapshot.iteration)
    paths = SnapshotPaths(
        iteration=int(snapshot.iteration),
        classes_mrcs=relion["classes"],
        model_star=relion["model"],
        data_star=relion["data"],
        provenance_json=relion["provenance"],
        particles_cs=out / f"{base}_particles.cs",
        class_averages_cs=out / f"{base}_class_averages.cs",
        gallery_png=out / f"{base}_gallery.png",
        particles_csg=out / f"{base}_particles.csg",  # as _write_cryosparc names them
        class_averages_csg=out / f"{base}_class_averages.csg",
    )
    cs_root = cryosparc_path_root(out, project_dir)
    _write_cryosparc(snapshot, paths, cs_root, session=session, project_dir=project_dir)
    write_gallery_png(snapshot, paths.gallery_png)
    pointer = {
        "iteration": paths.iteration,
        "root": base,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "n_particles": len(snapshot.particles),
        "n_classes": snapshot.n_classes,
        "files": {role: p.name for role, p in paths.files().items()},
        "cryosparc_paths_relative_to": os.path.abspath(cs_root),
    }
    write_json_atomic(out / LATEST_POINTER, pointer)
    return paths


def _write_cryosparc(
    snapshot: ClassSnapshot,
    paths: SnapshotPaths,
    cs_root: Path,
    *,
    session: str,
    project_dir: str | os.PathLike[str] | None,
) -> None:
    """The particles and class averages ``.cs`` of ``paths``, each with its result group (``.csg``, same name)."""
    particles = particles_cs_array(snapshot, session=session, project_dir=project_dir)
    write_npy_atomic(paths.particles_cs, particles)
    title = f"otf2d particles, snapshot {snapshot.iteration}"
    csg = paths.particles_cs.with_suffix(".csg")
    write_result_group(
        csg, particles, paths.particles_cs, group_type="particle", name="particles", title=title, root=cs_root
    )
    averages = class_averages_cs_array(snapshot, star_path(paths.classes_mrcs, cs_root))
    write_npy_atomic(paths.class_averages_cs, averages)
    title = f"otf2d class averages, snapshot {snapshot.iteration}"
    csg = paths.class_averages_cs.with_suffix(".csg")
    write_result_group(
        csg, averages, paths.class_averages_cs, group_type="template", name="class_averages", title=title, root=cs_root
    )


def read_latest(out_dir: str | os.PathLike[str]) -> SnapshotPaths | None:
    """The snapshot ``latest.json`` in ``out_dir`` points at, or ``None`` if there is none yet.

    Raises
    ------
    InputError
        If the pointer exists but is not a valid pointer file.
    """
    out = Path(out_dir)
    pointer = out / LATEST_POINTER
    try:
        record = json.loads(pointer.read_text(encoding="utf-8"))
        files = record["files"]
        optional = {role: out / files[role] for role in _OPTIONAL_ROLES if role in files}
        return SnapshotPaths(
            iteration=int(record["iteration"]), **{role: out / files[role] for role in _ROLES}, **optional
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(pointer, f"not a valid snapshot pointer ({exc})") from exc


_ROLES = (
    "classes_mrcs",
    "model_star",
    "data_star",
    "provenance_json",
    "particles_cs",
    "class_averages_cs",
    "gallery_png",
)
#: Roles of files a snapshot written before them does not have.
_OPTIONAL_ROLES = ("particles_csg", "class_averages_csg")

__all__ = [
    "LATEST_POINTER",
    "SnapshotPaths",
    "cryosparc_path_root",
    "read_latest",
    "render_class_png",
    "render_gallery",
    "write_snapshot",
]
