"""Chosen particles as a RELION ``particles.star`` and a cryoSPARC ``.cs``, each written atomically.

``particles.star`` is the ``_data.star`` of the snapshot restricted to the chosen particles
(``otf2d.monitoring.snapshots.relion.data_star_blocks``): RELION 3.1 layout, ``data_optics`` then
``data_particles``, image names pointing at the original stacks (relative to the project
directory, as RELION writes them, or absolute with ``absolute_paths``), the 2D alignment kept
(``rlnClassNumber`` as in the snapshot, ``rlnAnglePsi``, ``rlnOriginXAngst/YAngst``, Pmax). The
``.cs`` is ``otf2d.monitoring.snapshots.cryosparc.particles_cs_array`` of the same particles,
keeping every field of the snapshot's own ``_particles.cs`` rows (``uid``, ``location/*``, a ``.cs``
input's fields) when it has one; the STAR keeps every column of the snapshot's ``_data.star``.
``particles.csg`` is the ``.cs`` file's cryoSPARC result group (its description names the directory
the ``blob/path`` values are relative to). A small JSON record says where the particles came from
and how they were chosen.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import numpy.typing as npt

from otf2d import core
from otf2d.core.durable import write_json_atomic
from otf2d.core.errors import InputError
from otf2d.core.extra_columns import from_records
from otf2d.core.snapshot import ClassSnapshot
from otf2d.monitoring.particle_junk import CS_FIELD, RELION_LABEL, particle_junk_scores
from otf2d.monitoring.snapshots.atomic import write_npy_atomic, write_star_atomic
from otf2d.monitoring.snapshots.cryosparc import particles_cs_array
from otf2d.monitoring.snapshots.reader import LoadedSnapshot
from otf2d.monitoring.snapshots.relion import data_star_blocks, json_safe
from otf2d.monitoring.snapshots.result_group import write_result_group

#: Names of the files written into the output folder.
PARTICLES_STAR = "particles.star"
PARTICLES_CS = "particles.cs"
PARTICLES_CSG = "particles.csg"


@dataclasses.dataclass(frozen=True)
class SelectionFiles:
    """The files of one selection.

    Attributes
    ----------
    particles_star, particles_cs, particles_csg, record_json
        RELION particles, cryoSPARC particles and their result group, and the JSON record of the selection.
    n_particles
        Particles written.
    """

    particles_star: Path
    particles_cs: Path
    record_json: Path
    n_particles: int
    particles_csg: Path


def subset_snapshot(snapshot: ClassSnapshot, index: npt.ArrayLike) -> ClassSnapshot:
    """``snapshot`` with only the particles at ``index`` (classes unchanged, counts recounted).

    Parameters
    ----------
    snapshot
        The full snapshot.
    index
        ``(m,)`` integer positions of the particles to keep, in the order to write them.
    """
    particles = snapshot.particles.take(index)
    counts = np.bincount(np.asarray(particles.class_index, dtype=np.int64), minlength=snapshot.n_classes)
    return dataclasses.replace(snapshot, particles=particles, particle_counts=counts.astype(np.int64))


def absolute_stack_paths(stack_paths: npt.ArrayLike, project_dir: str | os.PathLike[str]) -> np.ndarray:
    """Each relative stack path joined to ``project_dir`` (absolute ones unchanged), ``/``-separated."""
    root = Path(project_dir).resolve()
    out = [
        str(p) if PurePath(str(p)).is_absolute() else (root / str(p)).as_posix()
        for p in np.asarray(stack_paths, dtype=object)
    ]
    return np.asarray(out, dtype=object)


def selection_record(loaded: LoadedSnapshot, files: dict[str, Path], details: dict[str, Any]) -> dict[str, Any]:
    """What the JSON record of a selection holds: source snapshot, version, time, how chosen."""
    return json_safe(
        {
            "otf2d_version": core.__version__,
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": {
                "data_star": loaded.paths.data_star,
                "model_star": loaded.paths.model_star,
                "iteration": loaded.snapshot.iteration,
                "n_particles": len(loaded.snapshot.particles),
                "n_classes": loaded.snapshot.n_classes,
            },
            "project_dir": loaded.project_dir,
            "files": {role: path.name for role, path in files.items()},
            **details,
        }
    )


def write_selection(
    loaded: LoadedSnapshot,
    index: npt.ArrayLike,
    out_dir: str | os.PathLike[str],
    *,
    record_name: str = "selection.json",
    details: dict[str, Any] | None = None,
    absolute_paths: bool = False,
) -> SelectionFiles:
    """Write the particles at ``index`` of ``loaded`` as ``particles.star`` + ``particles.cs`` (+ a record).

    Parameters
    ----------
    loaded
        The snapshot the particles come from.
    index
        ``(m,)`` positions of the particles to write (snapshot order).
    out_dir
        Output folder (created if missing).
    record_name
        File name of the JSON record.
    details
        Extra fields of the record (how the particles were chosen).
    absolute_paths
        Write absolute stack paths instead of paths relative to the project directory.

    Returns
    -------
    SelectionFiles
        The three files and the number of particles.

    Raises
    ------
    InputError
        No particle to write, or invalid snapshot content (nothing is written then).
    """
    idx = np.asarray(index, dtype=np.int64)
    if idx.size == 0:
        raise InputError(loaded.paths.data_star, "no particle to write: the chosen classes hold none")
    subset = subset_snapshot(loaded.snapshot, idx)
    if absolute_paths:
        particles = dataclasses.replace(
            subset.particles, stack_paths=absolute_stack_paths(subset.particles.stack_paths, loaded.project_dir)
        )
        subset = dataclasses.replace(subset, particles=particles)
    # Build both tables before writing anything, so bad input leaves no partial selection.
    blocks = data_star_blocks(subset)
    cs_subset = subset
    if loaded.particles_cs is not None:
        # The snapshot's own .cs rows carry what a .cs input had (uid, location/*, pick_stats/*, ...).
        cs_rows = from_records(loaded.particles_cs[idx])
        cs_subset = dataclasses.replace(subset, particles=dataclasses.replace(subset.particles, extra=cs_rows))
    cs = particles_cs_array(cs_subset, session=loaded.session, project_dir=loaded.project_dir)
    # The junk scores that chose the particles, not scores recomputed among the kept ones alone.
    scores = particle_junk_scores(loaded.snapshot)[idx]
    blocks["particles"][RELION_LABEL] = scores
    if CS_FIELD in (cs.dtype.names or ()):
        cs[CS_FIELD] = scores
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "particles_star": out / PARTICLES_STAR,
        "particles_cs": out / PARTICLES_CS,
        "particles_csg": out / PARTICLES_CSG,
    }
    write_star_atomic(files["particles_star"], blocks)
    write_npy_atomic(files["particles_cs"], cs)
    write_result_group(
        files["particles_csg"],
        cs,
        files["particles_cs"],
        group_type="particle",
        name="particles_selected",
        title=f"otf2d {(details or {}).get('command', 'selection')}: {int(idx.size)} particles",
        root=None if absolute_paths else loaded.project_dir,
    )
    record_path = out / record_name
    record = selection_record(loaded, files, {"n_particles": int(idx.size), **(details or {})})
    write_json_atomic(record_path, record)
    return SelectionFiles(
        particles_star=files["particles_star"],
        particles_cs=files["particles_cs"],
        record_json=record_path,
        n_particles=int(idx.size),
        particles_csg=files["particles_csg"],
    )


__all__ = [
    "PARTICLES_CS",
    "PARTICLES_CSG",
    "PARTICLES_STAR",
    "SelectionFiles",
    "absolute_stack_paths",
    "selection_record",
    "subset_snapshot",
    "write_selection",
]
