"""RELION Class2D output from a :class:`~otf2d.core.snapshot.ClassSnapshot` (RELION 3.1 layout).

For one iteration ``NNN`` this writes, in RELION's own order (``ml_optimiser.cpp``), each file
atomically:

``<root>_itNNN_classes.mrcs``
    ``(K, h, w)`` float32 image stack (``ispg = 0``), one slice per class, pixel size in the header.
``<root>_itNNN_model.star``
    ``data_model_general`` (key/value) and ``data_model_classes`` (one row per class).
``<root>_itNNN_data.star``
    ``data_optics`` and ``data_particles`` (every particle's latest class and alignment).
``<root>_itNNN_otf2d.json``
    Provenance: otf2d version, time, parameters, particle count and a digest of the particle set.

Every STAR block is preceded by ``# version 30001`` as RELION 3.1 writes it; floats are written
with their shortest exact representation, so a float64 read back is identical.

Values otf2d does not compute are written as neutral, documented constants:

- ``rlnNormCorrection`` = ``rlnNormCorrectionAverage`` = 1 (no per-particle norm correction);
- ``rlnGroupNumber`` = 1 and ``rlnNrGroups`` = 1 (one noise group);
- ``rlnClassPriorOffsetX/Y`` = 0 (classes are re-centred; no per-class prior offset is tracked);
- ``rlnOtf2dJunkScore``: otf2d's per-particle junk score (:mod:`otf2d.monitoring.particle_junk`), a label
  RELION does not know and keeps;
- a resolution or accuracy that is unknown (``inf``/NaN in the snapshot) is written as
  :data:`UNKNOWN_RESOLUTION_ANGSTROM` (999 Å), RELION's and CTFFIND's "no estimate" convention;
- ``rlnOverallFourierCompleteness`` = 1 for a class with a resolution estimate, else 0.

Class quality: when the snapshot is scored (``ClassSnapshot.junk_score`` set, see
``otf2d.monitoring.snapshots.class_quality``), ``data_model_classes`` gets one more column,
``rlnPredictedClassScore`` = 1 − junk score. It is the label RELION ≥ 4 gives the class ranker's
predicted merit of a 2D class (``relion_class_ranker``, "2D class merit scores predicted by RELION
model"): a *goodness* in [0, 1], higher is better, and the Subset-selection job keeps classes at or
above 0.5 by default — the same cut as our junk threshold, so a class flagged junk (score > 0.5) has
``rlnPredictedClassScore`` < 0.5. A user override shows as 0 (marked junk) or 1 (marked good).
RELION 3.1.3 does not know the label; it warns "will ignore (but maintain) values for the unknown
label" and reads the rest of the table (checked with ``relion_refine --ref``).

``rlnNrOpticsGroups`` (written by RELION ≥ 4) is unknown to RELION 3.1.3, which ignores it with a
warning. Checked with Debian's RELION 3.1.3: ``relion_star_handler`` loads ``_data.star`` as a 3.1
file (optics table found, no "previous version" conversion), ``relion_image_handler --stats``
reads the classes stack with its pixel size, and ``relion_refine --ref <_model.star>`` starts
from our classes through ``data_model_classes``/``rlnReferenceImage``.

Model-level values taken from ``snapshot.parameters`` when present (else the fallback in
brackets): ``tau2_fudge`` (1.0), ``current_resolution_angstrom`` (best finite class resolution),
``sigma_offsets_angstrom`` (the RMS per-axis origin of the particles, RELION's M-step estimate).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pandas as pd

from otf2d import core
from otf2d.core.durable import write_json_atomic
from otf2d.core.errors import InputError
from otf2d.core.snapshot import ClassSnapshot
from otf2d.monitoring.particle_junk import RELION_LABEL as PARTICLE_JUNK_LABEL
from otf2d.monitoring.particle_junk import particle_junk_scores
from otf2d.monitoring.snapshots.atomic import write_mrc_atomic, write_star_atomic
from otf2d.monitoring.snapshots.class_quality import class_quality_columns
from otf2d.monitoring.snapshots.passthrough import merge_star_columns, relion_optics_extra, relion_particle_extra
from otf2d.monitoring.snapshots.validation import check_snapshot

#: Written where a resolution (or an accuracy) is unknown; RELION's ``rlnCtfMaxResolution`` and
#: CTFFIND use 999 Å the same way.
UNKNOWN_RESOLUTION_ANGSTROM = 999.0
#: ``_model.star`` column of a scored snapshot: 1 − junk score (RELION ≥ 4's class-ranker label).
PREDICTED_CLASS_SCORE = "rlnPredictedClassScore"


def iteration_root(root: str, iteration: int) -> str:
    """RELION's per-iteration file root: ``run`` + 7 → ``run_it007`` (at least 3 digits)."""
    if iteration < 0:
        raise InputError(None, f"snapshot iteration must be >= 0, got {iteration}")
    return f"{root}_it{iteration:03d}"


def star_path(path: str | os.PathLike[str], project_dir: str | os.PathLike[str] | None) -> str:
    """``path`` as written in a STAR file: relative to ``project_dir`` when given, ``/``-separated.

    Parameters
    ----------
    path
        A file (need not exist yet).
    project_dir
        RELION's project directory (where ``relion`` runs); ``None`` keeps ``path`` as given.
    """
    if project_dir is None:
        return PurePath(path).as_posix()
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(project_dir))
    return PurePath(rel).as_posix()


def _known(values: np.ndarray) -> np.ndarray:
    """float64 copy with non-finite entries replaced by :data:`UNKNOWN_RESOLUTION_ANGSTROM`."""
    out = np.asarray(values, dtype=np.float64).copy()
    out[~np.isfinite(out)] = UNKNOWN_RESOLUTION_ANGSTROM
    return out


def _float_parameter(snapshot: ClassSnapshot, key: str, default: float) -> float:
    value = snapshot.parameters.get(key, default)
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(None, f"snapshot parameter {key!r} must be a number, got {value!r}") from exc
    return out if math.isfinite(out) else default


def model_star_blocks(snapshot: ClassSnapshot, classes_stack: str) -> dict[str, Any]:
    """The ``data_model_general`` and ``data_model_classes`` blocks of ``_model.star``.

    Parameters
    ----------
    snapshot
        The classes and assignments.
    classes_stack
        The classes stack as it should appear in ``rlnReferenceImage`` (already made relative
        to the project directory if wanted).

    Returns
    -------
    dict
        ``{"model_general": dict, "model_classes": DataFrame}`` (K rows, 1-based image indices;
        with ``rlnPredictedClassScore`` = 1 − junk score when the snapshot is scored).

    Raises
    ------
    InputError
        A junk score that is not ``(K,)`` values in [0, 1] (``class_quality_columns``).
    """
    parts = snapshot.particles
    k = snapshot.n_classes
    resolution = np.asarray(snapshot.resolution_angstrom, dtype=np.float64)
    finite_res = resolution[np.isfinite(resolution) & (resolution > 0)]
    best = float(finite_res.min()) if finite_res.size else UNKNOWN_RESOLUTION_ANGSTROM
    n = len(parts)
    if n:
        ox = np.asarray(parts.origin_x_angstrom, dtype=np.float64)
        oy = np.asarray(parts.origin_y_angstrom, dtype=np.float64)
        sigma_offsets = float(np.sqrt(np.mean(ox**2 + oy**2) / 2.0))
    else:
        sigma_offsets = 0.0
    general: dict[str, Any] = {
        "rlnReferenceDimensionality": 2,
        "rlnOriginalImageSize": int(snapshot.original_image_size),
        "rlnCurrentResolution": _float_parameter(snapshot, "current_resolution_angstrom", best),
        "rlnPixelSize": float(snapshot.pixel_size_angstrom),
        "rlnNrClasses": k,
        "rlnNrGroups": 1,
        "rlnNrOpticsGroups": len(snapshot.optics),
        "rlnTau2FudgeFactor": _float_parameter(snapshot, "tau2_fudge", 1.0),
        "rlnNormCorrectionAverage": 1.0,
        "rlnSigmaOffsetsAngst": _float_parameter(snapshot, "sigma_offsets_angstrom", sigma_offsets),
        "rlnLogLikelihood": float(np.sum(np.asarray(parts.log_likelihood, dtype=np.float64))),
        "rlnAveragePmax": float(np.mean(np.asarray(parts.pmax, dtype=np.float64))) if n else 0.0,
    }
    has_resolution = np.isfinite(resolution) & (resolution > 0)
    classes = pd.DataFrame(
        {
            "rlnReferenceImage": [f"{i + 1:06d}@{classes_stack}" for i in range(k)],
            "rlnClassDistribution": snapshot.class_distribution,
            "rlnAccuracyRotations": _known(snapshot.accuracy_rotations_degrees),
            "rlnAccuracyTranslationsAngst": _known(snapshot.accuracy_translations_angstrom),
            "rlnEstimatedResolution": _known(resolution),
            "rlnOverallFourierCompleteness": has_resolution.astype(np.float64),
            "rlnClassPriorOffsetX": np.zeros(k),
            "rlnClassPriorOffsetY": np.zeros(k),
        }
    )
    quality = class_quality_columns(snapshot)
    if quality is not None:
        classes[PREDICTED_CLASS_SCORE] = 1.0 - quality.junk_score
    return {"model_general": general, "model_classes": classes}


def data_star_blocks(snapshot: ClassSnapshot) -> dict[str, pd.DataFrame]:
    """The ``data_optics`` and ``data_particles`` blocks of ``_data.star``.

    Voltage, Cs and amplitude contrast live in the optics table; where a particle's own value
    differs from its optics group's, that column is added to the particle table too (RELION
    looks in the particle row first). Every column of the input's particle and optics rows
    (``snapshot.particles.extra``) is written back, as :mod:`otf2d.monitoring.snapshots.passthrough` says.

    Returns
    -------
    dict
        ``{"optics": DataFrame, "particles": DataFrame}``; integer columns are int64.
    """
    parts = snapshot.particles
    lookup = check_snapshot(snapshot)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": np.array([g.number for g in snapshot.optics], dtype=np.int64),
            "rlnOpticsGroupName": pd.array([g.name for g in snapshot.optics], dtype=object),
            "rlnVoltage": np.array([g.voltage_kv for g in snapshot.optics], dtype=np.float64),
            "rlnSphericalAberration": np.array([g.spherical_aberration_mm for g in snapshot.optics], dtype=np.float64),
            "rlnAmplitudeContrast": np.array([g.amplitude_contrast for g in snapshot.optics], dtype=np.float64),
            "rlnImagePixelSize": np.array([g.image_pixel_size_angstrom for g in snapshot.optics], dtype=np.float64),
            "rlnImageSize": np.array([g.image_size for g in snapshot.optics], dtype=np.int64),
            "rlnImageDimensionality": np.full(len(snapshot.optics), 2, dtype=np.int64),
        }
    )
    n = len(parts)
    group_numbers = np.asarray(parts.optics_groups, dtype=np.int64)
    rows = np.array([lookup[int(g)] for g in group_numbers], dtype=np.int64)
    ctf = parts.ctf
    columns: dict[str, Any] = {"rlnImageName": pd.array(parts.image_names(), dtype=object)}
    if parts.micrograph_names is not None:
        columns["rlnMicrographName"] = pd.array([str(m) for m in parts.micrograph_names], dtype=object)
    columns["rlnOpticsGroup"] = group_numbers
    columns["rlnDefocusU"] = ctf.defocus_u_angstrom
    columns["rlnDefocusV"] = ctf.defocus_v_angstrom
    columns["rlnDefocusAngle"] = ctf.defocus_angle_degrees
    columns["rlnPhaseShift"] = ctf.phase_shift_degrees
    columns["rlnCtfBfactor"] = ctf.bfactor_angstrom2
    columns["rlnCtfScalefactor"] = ctf.scale
    for label, values in (
        ("rlnVoltage", ctf.voltage_kv),
        ("rlnSphericalAberration", ctf.spherical_aberration_mm),
        ("rlnAmplitudeContrast", ctf.amplitude_contrast),
    ):
        group_values = optics[label].to_numpy()[rows] if n else np.zeros(0)
        if not np.array_equal(values, group_values):
            columns[label] = values
    columns["rlnClassNumber"] = np.asarray(parts.class_index, dtype=np.int64) + 1
    columns["rlnAnglePsi"] = np.asarray(parts.psi_degrees, dtype=np.float64)
    columns["rlnOriginXAngst"] = np.asarray(parts.origin_x_angstrom, dtype=np.float64)
    columns["rlnOriginYAngst"] = np.asarray(parts.origin_y_angstrom, dtype=np.float64)
    columns["rlnMaxValueProbDistribution"] = np.asarray(parts.pmax, dtype=np.float64)
    columns["rlnNrOfSignificantSamples"] = np.asarray(parts.n_significant, dtype=np.int64)
    columns["rlnLogLikeliContribution"] = np.asarray(parts.log_likelihood, dtype=np.float64)
    columns["rlnGroupNumber"] = np.ones(n, dtype=np.int64)
    columns["rlnNormCorrection"] = np.ones(n, dtype=np.float64)
    columns[PARTICLE_JUNK_LABEL] = particle_junk_scores(snapshot)
    particles = merge_star_columns(columns, relion_particle_extra(parts.extra))
    numbers = [g.number for g in snapshot.optics]
    optics_extra = relion_optics_extra(parts.extra, group_numbers, numbers)
    if optics_extra:
        optics = pd.DataFrame(merge_star_columns({c: optics[c].to_numpy() for c in optics.columns}, optics_extra))
        optics = optics[["rlnOpticsGroup", *(c for c in optics.columns if c != "rlnOpticsGroup")]]
    return {"optics": optics, "particles": pd.DataFrame(particles)}


def particle_set_digest(snapshot: ClassSnapshot) -> str:
    """SHA-256 of the sorted ``rlnImageName`` list: equal digests ⇔ the same particles."""
    h = hashlib.sha256()
    for name in sorted(snapshot.particles.image_names()):
        h.update(name.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON types (NumPy → Python, paths → str, non-finite floats → strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def provenance_record(snapshot: ClassSnapshot, files: dict[str, str]) -> dict[str, Any]:
    """What ``_otf2d.json`` holds: enough to tell which run, version and particles made a snapshot."""
    return {
        "otf2d_version": core.__version__,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "iteration": int(snapshot.iteration),
        "n_particles": len(snapshot.particles),
        "n_classes": snapshot.n_classes,
        "pixel_size_angstrom": float(snapshot.pixel_size_angstrom),
        "original_image_size": int(snapshot.original_image_size),
        "particle_set_sha256": particle_set_digest(snapshot),
        "parameters": json_safe(snapshot.recorded_parameters()),
        "files": files,
    }


def write_relion_class2d(
    snapshot: ClassSnapshot,
    out_dir: str | os.PathLike[str],
    *,
    root: str = "run",
    project_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Path]:
    """Write one iteration of RELION Class2D output (classes stack, model, data, provenance).

    Parameters
    ----------
    snapshot
        The classes and every particle's assignment.
    out_dir
        The job directory (created if missing), e.g. ``<project>/Class2D/otf2d``.
    root
        File root inside ``out_dir``; files are ``<root>_itNNN_*``.
    project_dir
        When given, ``rlnReferenceImage`` names the classes stack relative to it (as RELION
        expects); otherwise the stack path is written as ``out_dir / name`` as given.

    Returns
    -------
    dict[str, Path]
        ``{"classes": …mrcs, "model": …_model.star, "data": …_data.star, "provenance": …json}``.

    Raises
    ------
    InputError
        If particles refer to an optics group missing from ``snapshot.optics``, or carry
        NaN/Inf (``NonFiniteError``); nothing is written then.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = iteration_root(root, snapshot.iteration)
    paths = {
        "classes": out / f"{base}_classes.mrcs",
        "model": out / f"{base}_model.star",
        "data": out / f"{base}_data.star",
        "provenance": out / f"{base}_otf2d.json",
    }
    # Build every table before writing anything, so bad input leaves no partial iteration.
    data_blocks = data_star_blocks(snapshot)
    model_blocks = model_star_blocks(snapshot, star_path(paths["classes"], project_dir))
    write_mrc_atomic(paths["classes"], snapshot.averages, voxel_size_angstrom=snapshot.pixel_size_angstrom)
    write_star_atomic(paths["model"], model_blocks)
    write_star_atomic(paths["data"], data_blocks)
    files = {key: p.name for key, p in paths.items()}
    write_json_atomic(paths["provenance"], provenance_record(snapshot, files))
    return paths


__all__ = [
    "PREDICTED_CLASS_SCORE",
    "UNKNOWN_RESOLUTION_ANGSTROM",
    "data_star_blocks",
    "iteration_root",
    "json_safe",
    "model_star_blocks",
    "particle_set_digest",
    "provenance_record",
    "star_path",
    "write_relion_class2d",
]
