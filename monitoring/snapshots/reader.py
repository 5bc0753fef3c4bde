"""Read a classification snapshot back from disk as a :class:`~otf2d.core.snapshot.ClassSnapshot`.

What :func:`find_snapshot` accepts (the first that applies):

- a job directory with ``latest.json`` (``otf2d classify --out``, an engine session's
  ``snapshots/``): the snapshot the pointer names (``otf2d.monitoring.snapshots.read_latest``);
- an engine session folder (``<data>/sessions/<name>/``): its ``snapshots/latest.json``;
- a directory without a pointer: its newest ``run_itNNN_data.star`` (RELION Class2D output too);
- any file of one snapshot (``run_it007_data.star``, ``_model.star``, ``_classes.mrcs``, ...):
  that iteration.

:func:`read_snapshot` reads ``_model.star`` (classes: resolution, accuracies, pixel size),
``_classes.mrcs`` (averages), ``_data.star`` (every particle's class and 2D alignment, through
``otf2d.core.readers``), and when present ``_otf2d.json`` (the classification parameters) and
``_particles.cs`` (class posterior and ESS, and the E-step statistics ``alpha``, ``image_pow``,
``cross_cor``, ``slice_pow`` where written, which only the ``.cs`` carries). A scored snapshot's
``rlnPredictedClassScore`` column (1 − junk score, overrides applied; also RELION ≥ 4's class-ranker
merit) becomes ``ClassSnapshot.junk_score``. Values RELION's own
Class2D output lacks get neutral values: ``class_posterior`` = ``rlnMaxValueProbDistribution``,
``class_ess`` = 1, ``rlnMaxValueProbDistribution`` 1, ``rlnNrOfSignificantSamples`` 1,
``rlnLogLikeliContribution`` 0. A resolution or accuracy written as 999 Å ("unknown") reads as
``inf``. Particle counts are recounted from the particles' classes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np

from otf2d.core.errors import InputError
from otf2d.core.readers.cryosparc import decode_strings, load_cs
from otf2d.core.readers.relion import read_relion_table
from otf2d.core.readers.star import float_column, int_column, loop_blocks, read_star_blocks, require_columns
from otf2d.core.readers.table import ParticleTable
from otf2d.core.snapshot import JUNK_THRESHOLD_PARAMETER, ClassSnapshot, ParticleAssignments, junk_threshold
from otf2d.monitoring.snapshots import LATEST_POINTER, SnapshotPaths, read_latest
from otf2d.monitoring.snapshots.relion import PREDICTED_CLASS_SCORE, UNKNOWN_RESOLUTION_ANGSTROM

#: A file of one snapshot: ``<root>_itNNN_<role>``.
_SNAPSHOT_FILE = re.compile(
    r"^(?P<base>.+_it(?P<iteration>\d{3,}))_(?P<role>data\.star|model\.star|classes\.mrcs|otf2d\.json|"
    r"particles\.cs|class_averages\.cs|gallery\.png|optimiser\.star|sampling\.star)$"
)
#: The engine's session folder keeps its snapshots here (``otf2d.engine.serving.session``).
SESSION_SNAPSHOT_DIR = "snapshots"


@dataclass(frozen=True)
class LoadedSnapshot:
    """A snapshot read from disk, with where it came from.

    Attributes
    ----------
    snapshot
        Classes and every particle, in ``_data.star`` order.
    paths
        The snapshot's files (some may be absent, e.g. ``particles_cs`` for RELION output).
    project_dir
        The directory the particles' stack paths are relative to.
    particles_cs
        The ``(n,)`` rows of ``_particles.cs`` in the same order as the particles, or ``None`` when
        that file is absent or does not list the same particles.
    session
        Session name of the particle keys (the project directory's name unless known better).
    provenance
        The snapshot's ``_otf2d.json`` (empty when absent).
    stacks_found
        Whether the first particle's stack exists under ``project_dir`` (else the project
        directory is a guess: pass it explicitly).
    """

    snapshot: ClassSnapshot
    paths: SnapshotPaths
    project_dir: Path
    particles_cs: np.ndarray | None = None
    session: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    stacks_found: bool = True

    @property
    def directory(self) -> Path:
        """The folder holding the snapshot's files."""
        return self.paths.data_star.parent


def paths_for_root(directory: Path, base: str) -> SnapshotPaths:
    """The files of snapshot ``base`` (e.g. ``run_it007``) in ``directory``, named as ``write_snapshot`` names them."""
    match = re.search(r"_it(\d+)$", base)
    if match is None:
        raise InputError(directory / base, "not a snapshot root (expected <root>_itNNN)")
    return SnapshotPaths(
        iteration=int(match.group(1)),
        classes_mrcs=directory / f"{base}_classes.mrcs",
        model_star=directory / f"{base}_model.star",
        data_star=directory / f"{base}_data.star",
        provenance_json=directory / f"{base}_otf2d.json",
        particles_cs=directory / f"{base}_particles.cs",
        class_averages_cs=directory / f"{base}_class_averages.cs",
        gallery_png=directory / f"{base}_gallery.png",
        **{
            role: directory / f"{base}_{stem}.csg"
            for role, stem in (("particles_csg", "particles"), ("class_averages_csg", "class_averages"))
            if (directory / f"{base}_{stem}.csg").is_file()
        },
    )


def _newest_in(directory: Path) -> SnapshotPaths | None:
    found: list[tuple[int, str]] = []
    for path in directory.glob("*_it*_data.star"):
        match = _SNAPSHOT_FILE.match(path.name)
        if match is not None:
            found.append((int(match.group("iteration")), match.group("base")))
    if not found:
        return None
    return paths_for_root(directory, max(found)[1])


def find_snapshot(path: str | os.PathLike[str]) -> SnapshotPaths:
    """Where the snapshot named by ``path`` is (see the module docstring for what ``path`` may be).

    Raises
    ------
    InputError
        ``path`` does not exist, or holds no snapshot (the message says what was looked for).
    """
    target = Path(path)
    if target.is_dir():
        for directory in (target, target / SESSION_SNAPSHOT_DIR):
            if (directory / LATEST_POINTER).is_file():
                latest = read_latest(directory)
                if latest is not None:
                    return latest
        for directory in (target, target / SESSION_SNAPSHOT_DIR):
            newest = _newest_in(directory) if directory.is_dir() else None
            if newest is not None:
                return newest
        raise InputError(
            target,
            f"no snapshot here: expected {LATEST_POINTER} (written by otf2d classify and the engine), "
            f"a {SESSION_SNAPSHOT_DIR}/ folder with one, or run_itNNN_data.star files",
        )
    if target.is_file():
        match = _SNAPSHOT_FILE.match(target.name)
        if match is None:
            raise InputError(
                target, "not a file of a snapshot (expected <root>_itNNN_data.star, _model.star, _classes.mrcs, ...)"
            )
        return paths_for_root(target.parent, match.group("base"))
    raise InputError(target, "does not exist (expected a snapshot directory, a session folder or a run_itNNN file)")


def _model_blocks(path: Path) -> tuple[dict[str, Any], Any]:
    blocks = read_star_blocks(path)
    general = blocks.get("model_general")
    classes = loop_blocks(blocks).get("model_classes")
    if not isinstance(general, dict) or classes is None:
        raise InputError(path, "not a Class2D _model.star: data_model_general or data_model_classes is missing")
    require_columns(path, classes, ["rlnReferenceImage"], "model_classes")
    return general, classes


def _general_number(path: Path, general: dict[str, Any], label: str, default: float) -> float:
    value = general.get(label, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(path, f"{label} is {value!r}, not a number") from None


def _unknown_as_inf(values: np.ndarray) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64).copy()
    out[(out >= UNKNOWN_RESOLUTION_ANGSTROM) | ~np.isfinite(out)] = np.inf
    return out


def _class_column(path: Path, classes: Any, label: str, k: int) -> np.ndarray:
    if label not in classes.columns:
        return np.full(k, np.inf)
    return _unknown_as_inf(float_column(path, classes, label))


def _read_averages(path: Path) -> tuple[np.ndarray, float]:
    if not path.is_file():
        raise InputError(path, "class averages stack not found")
    try:
        with mrcfile.open(path, permissive=False) as mrc:
            data = np.asarray(mrc.data, dtype=np.float32)
            voxel = float(mrc.voxel_size.x)
    except (ValueError, OSError) as exc:
        raise InputError(path, f"cannot read as an MRC stack ({exc})") from None
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise InputError(path, f"expected a stack of class averages (K, h, w), got shape {data.shape}")
    return data, voxel


def _read_provenance(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read the snapshot's provenance ({exc})") from None
    if not isinstance(record, dict):
        raise InputError(path, "not a snapshot provenance file (expected a JSON object)")
    return record


def _recorded_parameters(path: Path, provenance: dict[str, Any]) -> dict[str, Any]:
    """The provenance's ``parameters`` (``ClassSnapshot`` takes its typed fields out of them), checked."""
    parameters = provenance.get("parameters")
    if not isinstance(parameters, dict):
        return {}
    if JUNK_THRESHOLD_PARAMETER in parameters:
        try:
            junk_threshold(parameters[JUNK_THRESHOLD_PARAMETER])
        except InputError as exc:
            raise InputError(path, exc.what) from None
    return dict(parameters)


def _stored_junk_scores(path: Path, classes: Any) -> np.ndarray | None:
    """``(K,)`` junk scores ``1 − rlnPredictedClassScore`` when the model has that column, else ``None``."""
    if PREDICTED_CLASS_SCORE not in classes.columns:
        return None
    merit = float_column(path, classes, PREDICTED_CLASS_SCORE)
    if not (np.isfinite(merit).all() and (merit >= 0).all() and (merit <= 1).all()):
        raise InputError(path, f"{PREDICTED_CLASS_SCORE} must hold values in [0, 1]")
    return np.asarray(1.0 - merit, dtype=np.float64)


def _has_stack(project_dir: Path, stack_path: str | None) -> bool:
    if stack_path is None:
        return False
    path = Path(stack_path)
    return (path if path.is_absolute() else project_dir / path).is_file()


def _optional_column(path: Path, table: Any, label: str, default: float, n: int) -> np.ndarray:
    return float_column(path, table, label) if label in table.columns else np.full(n, default)


def _matching_cs(path: Path, stack_paths: np.ndarray, indices: np.ndarray) -> np.ndarray | None:
    """The ``.cs`` rows when the file lists exactly these particles in this order, else ``None``."""
    if not path.is_file():
        return None
    records = load_cs(path)
    names = records.dtype.names or ()
    if len(records) != len(indices) or "blob/idx" not in names or "blob/path" not in names:
        return None
    cs_paths = np.char.lstrip(decode_strings(path, records["blob/path"], "blob/path"), ">")
    same = np.array_equal(records["blob/idx"].astype(np.int64) + 1, indices) and np.array_equal(
        cs_paths, np.asarray(stack_paths, dtype=str)
    )
    return records if same else None


#: ``ParticleAssignments`` statistics and the ``.cs`` fields they are read from.
_CS_STATISTICS: dict[str, str] = {
    "scale": "alignments2D/alpha",
    "image_power": "alignments2D/image_pow",
    "cross_term": "alignments2D/cross_cor",
    "norm_term": "alignments2D/slice_pow",
}


def _cs_statistics(cs: np.ndarray | None) -> dict[str, np.ndarray | None]:
    """The E-step statistics a particle ``.cs`` has (``None`` for those it lacks)."""
    names = () if cs is None else (cs.dtype.names or ())
    return {
        field: cs[name].astype(np.float64) if cs is not None and name in names else None
        for field, name in _CS_STATISTICS.items()
    }


def read_snapshot(
    source: str | os.PathLike[str] | SnapshotPaths,
    *,
    project_dir: str | os.PathLike[str] | None = None,
) -> LoadedSnapshot:
    """Read one snapshot (see the module docstring) into memory.

    Parameters
    ----------
    source
        Anything :func:`find_snapshot` accepts, or the paths it returned.
    project_dir
        Directory the stack paths are relative to; default: found from ``_data.star``'s location
        (the first ancestor where the first stack exists, as ``otf2d.core.readers`` does).

    Returns
    -------
    LoadedSnapshot
        The snapshot, its files, project directory and (when present) its ``.cs`` rows.

    Raises
    ------
    InputError
        A missing or unreadable file, or files that disagree (class count, class numbers); the
        message names the file.
    """
    paths = source if isinstance(source, SnapshotPaths) else find_snapshot(source)
    for required in (paths.data_star, paths.model_star, paths.classes_mrcs):
        if not required.is_file():
            raise InputError(required, "file of the snapshot not found (was the snapshot pruned or moved?)")
    model = _read_model(paths)
    table = read_relion_table(paths.data_star, project_dir=project_dir)
    particles, cs = _read_assignments(paths, table, model.n_classes)
    first_stack = str(table.stack_paths[0]) if len(table) else None
    project = Path(project_dir) if project_dir is not None else table.project_dir
    provenance = _read_provenance(paths.provenance_json)
    snapshot = ClassSnapshot(
        averages=model.averages,
        pixel_size_angstrom=model.pixel_size,
        particle_counts=np.bincount(particles.class_index, minlength=model.n_classes).astype(np.int64),
        resolution_angstrom=model.class_column("rlnEstimatedResolution"),
        accuracy_rotations_degrees=model.class_column("rlnAccuracyRotations"),
        accuracy_translations_angstrom=model.class_column("rlnAccuracyTranslationsAngst"),
        iteration=paths.iteration,
        optics=list(table.optics),
        particles=particles,
        original_image_size=int(
            _general_number(paths.model_star, model.general, "rlnOriginalImageSize", model.averages.shape[-1])
        ),
        parameters=_recorded_parameters(paths.provenance_json, provenance),
        junk_score=_stored_junk_scores(paths.model_star, model.classes),
    )
    return LoadedSnapshot(
        snapshot=snapshot,
        paths=paths,
        project_dir=project,
        particles_cs=cs,
        session=table.session,
        provenance=provenance,
        stacks_found=_has_stack(project, first_stack),
    )


@dataclass(frozen=True)
class _Model:
    """A snapshot's ``_model.star`` (its ``model_general`` and ``model_classes``) with its averages."""

    path: Path
    general: dict[str, Any]
    classes: Any
    averages: np.ndarray
    pixel_size: float

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def class_column(self, label: str) -> np.ndarray:
        return _class_column(self.path, self.classes, label, self.n_classes)


def _read_model(paths: SnapshotPaths) -> _Model:
    """Step 1 of :func:`read_snapshot`: the classes (``_model.star``) and their averages, which must agree."""
    general, classes = _model_blocks(paths.model_star)
    averages, voxel = _read_averages(paths.classes_mrcs)
    k = len(classes)
    if averages.shape[0] != k:
        raise InputError(
            paths.classes_mrcs,
            f"holds {averages.shape[0]} class averages but {paths.model_star.name} lists {k} classes",
        )
    pixel_size = _general_number(paths.model_star, general, "rlnPixelSize", voxel) or voxel
    if not pixel_size > 0:
        raise InputError(paths.model_star, "no pixel size (rlnPixelSize) and none in the classes stack header")
    return _Model(paths.model_star, general, classes, averages, pixel_size)


def _read_assignments(
    paths: SnapshotPaths, table: ParticleTable, k: int
) -> tuple[ParticleAssignments, np.ndarray | None]:
    """Step 2: every particle's class and alignment (``_data.star``), and the scores RELION's output may lack.

    Class posterior and ESS come from the ``_particles.cs`` when it lists the same particles and has them
    (else ``rlnMaxValueProbDistribution`` and 1), as do the E-step statistics. Returns the ``.cs`` rows too.
    """
    data_star = paths.data_star
    if table.alignments is None or table.alignments.class_index is None:
        raise InputError(data_star, "no rlnClassNumber/rlnAnglePsi: not the particles of a 2D classification")
    class_index = np.asarray(table.alignments.class_index, dtype=np.int64)
    if len(class_index) and (class_index.min() < 0 or class_index.max() >= k):
        raise InputError(
            data_star, f"particles name classes {class_index.min() + 1}..{class_index.max() + 1}, model has {k}"
        )
    raw = loop_blocks(read_star_blocks(data_star))
    particles_block = raw.get("particles", next(iter(raw.values())))
    n = len(table)
    pmax = _optional_column(data_star, particles_block, "rlnMaxValueProbDistribution", 1.0, n)
    n_significant = (
        int_column(data_star, particles_block, "rlnNrOfSignificantSamples")
        if "rlnNrOfSignificantSamples" in particles_block.columns
        else np.ones(n, dtype=np.int64)
    )
    log_likelihood = _optional_column(data_star, particles_block, "rlnLogLikeliContribution", 0.0, n)
    cs = _matching_cs(paths.particles_cs, table.stack_paths, table.indices)
    if cs is not None and "alignments2D/class_posterior" in (cs.dtype.names or ()):
        class_posterior = cs["alignments2D/class_posterior"].astype(np.float64)
        class_ess = cs["alignments2D/class_ess"].astype(np.float64)
    else:
        class_posterior, class_ess = pmax.copy(), np.ones(n)
    particles = ParticleAssignments(
        stack_paths=np.asarray(table.stack_paths, dtype=object),
        indices=table.indices,
        optics_groups=table.optics_groups,
        ctf=table.ctf,
        class_index=class_index,
        psi_degrees=table.alignments.psi_degrees,
        origin_x_angstrom=table.alignments.origin_x_angstrom,
        origin_y_angstrom=table.alignments.origin_y_angstrom,
        pmax=pmax,
        class_posterior=class_posterior,
        class_ess=class_ess,
        n_significant=n_significant,
        log_likelihood=log_likelihood,
        micrograph_names=None if table.micrograph_names is None else np.asarray(table.micrograph_names, dtype=object),
        extra=table.extra,
        **_cs_statistics(cs),
    )
    return particles, cs


__all__ = [
    "SESSION_SNAPSHOT_DIR",
    "LoadedSnapshot",
    "find_snapshot",
    "paths_for_root",
    "read_snapshot",
]
