"""cryoSPARC-style ``.cs`` files (plain NumPy structured arrays) from a ClassSnapshot.

The particle file mirrors the fields of a real cryoSPARC 2D Classification output
(``cryosparc_J2_particles_exported.cs``: same names, same dtypes) and reads back with
``np.load(path, allow_pickle=False)``. Conventions, pinned by a round-trip test against the
RELION writer and matching pyem's ``csparc2star`` (``pyem/metadata/cryosparc2.py``):

================================  ==============================================================
cryoSPARC field                   from the snapshot (RELION label)
================================  ==============================================================
``uid``                           :func:`particle_uids`: stable 64-bit hash of the particle key
``blob/path``                     stack path relative to the project (fixed-width UTF-8 bytes)
``blob/idx``                      ``index − 1`` (0-based; RELION's ``NNNNNN@`` is 1-based)
``blob/shape``                    ``[image_size, image_size]`` of the particle's optics group
``blob/psize_A``                  ``rlnImagePixelSize`` of the optics group
``ctf/df1_A``, ``ctf/df2_A``      ``rlnDefocusU``, ``rlnDefocusV`` (Å)
``ctf/df_angle_rad``              ``deg2rad(rlnDefocusAngle)``
``ctf/phase_shift_rad``           ``deg2rad(rlnPhaseShift)``
``ctf/exp_group_id``              ``rlnOpticsGroup − 1``
``alignments2D/pose``             ``deg2rad(rlnAnglePsi)`` wrapped to [0, 2π); pyem: ``rad2deg``
``alignments2D/shift``            ``(rlnOriginXAngst, rlnOriginYAngst) / psize_A`` in **pixels**;
                                  pyem: ``shift`` → ``rlnOriginX/Y``, × ``psize_A`` → ``…Angst``
``alignments2D/psize_A``          ``blob/psize_A`` (the pixels ``shift`` is measured in)
``alignments2D/class``            ``rlnClassNumber − 1`` (0-based)
``alignments2D/class_posterior``  posterior of the chosen class
``alignments2D/class_ess``        effective number of classes ``1 / Σ p_k²``
``otf2d/junk_score``              the particle's junk score (:mod:`otf2d.monitoring.particle_junk`)
``alignments2D/error``            ``−rlnLogLikeliContribution``: the negative log-likelihood of the
                                  particle under its best (class, pose), in otf2d's noise model:
                                  ``image_pow − alpha·cross_cor + alpha²·slice_pow``
``alignments2D/image_pow``        ``‖X‖²_ω``: the particle's power, whitened (ring weights ``ω``)
``alignments2D/cross_cor``        ``2·Re⟨X, C·A⟩_ω`` at the best (class, pose), scale 1
``alignments2D/slice_pow``        ``‖C·A‖²_ω``: the CTF-modulated class at that pose, scale 1
``alignments2D/alpha``            the per-particle scale used (1 when it is off)
``alignments2D/alpha_min``        ``cross_cor / (2·slice_pow)``: the least-squares scale
``blob/import_sig``               BLAKE2b-64 of ``"otf2d:" + session``: one signature per imported set,
                                  as cryoSPARC gives every particle of one import the same value
================================  ==============================================================

**Statistics are real or absent.** ``alignments2D/class_posterior`` is clipped to [0, 1] (float
rounding of a sum of posteriors reaches 1.0000007). Of cryoSPARC's 18 ``alignments2D/*`` fields,
those otf2d does not compute are **left out** (:data:`ALIGNMENTS2D_OMITTED`), rather than written as
zeros or ones that cryoSPARC's subset-by-statistic filters would read as values; ``split`` is 0 (no
half-sets). Each omission, and why nothing otf2d keeps per particle (``AssignmentRecord``: class,
pose, ``pmax``, ``class_posterior``, ``class_ess``, ``n_significant``, log-likelihood and the four
E-step terms) gives it:

``alignments2D/pose_ess``, ``alignments2D/shift_ess``
    Effective numbers of in-plane angles and of shifts, ``1 / Σ p²`` over each marginal of the pose
    posterior. That needs the whole posterior over (ψ, t) of the chosen class, which only the E-step
    holds and does not keep: ``pmax`` (its largest entry) and ``n_significant`` (entries above
    0.1 % of ``pmax``) bound it but do not give it. The real J2 file (which by algorithm.md §3.3
    maximised over poses) has 0 in every row.
``alignments2D/weight``
    The particle's weight in cryoSPARC's reconstruction of its class; otf2d's M-step weights
    (``engine/em``) are not kept per particle, and what cryoSPARC puts there is not documented
    (0 in every row of J2).
``alignments2D/error_min``, ``alignments2D/resid_pow``
    Undocumented, and 0 in every row of J2 although ``alpha_min`` is set there: the obvious readings
    (the error at ``alpha_min``; the residual power ``‖X − C·A‖²``, which is ``error``) would not be
    0, so the file does not pin their meaning and otf2d writes no guess of them.

E-step statistics (:data:`ALIGNMENTS2D_STATISTICS`) are written only when the snapshot
(``ParticleAssignments``) knows them for every particle (:func:`alignment_statistics`); the
identities ``error = image_pow − cross_cor + slice_pow`` (at ``alpha`` = 1) and ``alpha_min =
cross_cor / (2·slice_pow)`` are those of the real J2 file (``algorithm.md`` §12). The higher-order
CTF terms (``ctf/shift_A``, ``tilt_A``, ``trefoil_A``,
``tetra_A``, ``anisomag``) and ``scale_const`` are 0, as in the J2 file; ``ctf/type`` is
``b"imported"`` (the CTF came from upstream); ``blob/sign`` is −1 by default, as in the J2 file for
particles imported from RELION (override with ``blob_sign``); a ``.cs`` input's own values of these
(and of every other field it has) are written back (:mod:`otf2d.monitoring.snapshots.passthrough`).

The class-average companion (:func:`write_class_averages_cs`) has ``uid``, ``blob/path``,
``blob/idx``, ``blob/shape``, ``blob/psize_A``, ``blob/sign``, ``blob/res_A`` (per-class resolution,
999 Å when unknown) and ``alignments2D/class``, pointing at the RELION ``_classes.mrcs`` stack. The
averages are in the particles' own contrast, so their ``blob/sign`` is the particles' (a ``.cs``
input's ``blob/sign`` when all its particles share one, else the default −1). When the
snapshot is scored (``ClassSnapshot.junk_score`` set, see ``otf2d.monitoring.snapshots.class_quality``) it
also has, under otf2d's own prefix (a ``.cs`` reader such as cryosparc-tools keeps fields it does
not know):

``otf2d/junk_score`` (``<f4``)
    The effective junk score in [0, 1] (user overrides applied: 1 marked junk, 0 marked good).
``otf2d/is_junk`` (``u1``)
    1 when the class is flagged junk (score above the snapshot's junk threshold), else 0.
``otf2d/override`` (``S4``)
    The user's override: ``b"good"``, ``b"junk"``, or ``b""`` for none.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from otf2d.core.snapshot import ClassSnapshot, ParticleAssignments
from otf2d.monitoring.particle_junk import CS_FIELD as PARTICLE_JUNK_FIELD
from otf2d.monitoring.particle_junk import particle_junk_scores
from otf2d.monitoring.snapshots.atomic import write_npy_atomic
from otf2d.monitoring.snapshots.class_quality import class_quality_columns
from otf2d.monitoring.snapshots.passthrough import location_fields, merge_cs_fields
from otf2d.monitoring.snapshots.relion import UNKNOWN_RESOLUTION_ANGSTROM
from otf2d.monitoring.snapshots.validation import check_snapshot

UIntArray = npt.NDArray[np.uint64]

#: Names and dtypes of ``alignments2D/*`` in a real cryoSPARC 2D Classification output.
ALIGNMENTS2D_FIELDS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("alignments2D/split", "<u4", ()),
    ("alignments2D/shift", "<f4", (2,)),
    ("alignments2D/pose", "<f4", ()),
    ("alignments2D/psize_A", "<f4", ()),
    ("alignments2D/error", "<f4", ()),
    ("alignments2D/error_min", "<f4", ()),
    ("alignments2D/resid_pow", "<f4", ()),
    ("alignments2D/slice_pow", "<f4", ()),
    ("alignments2D/image_pow", "<f4", ()),
    ("alignments2D/cross_cor", "<f4", ()),
    ("alignments2D/alpha", "<f4", ()),
    ("alignments2D/alpha_min", "<f4", ()),
    ("alignments2D/weight", "<f4", ()),
    ("alignments2D/pose_ess", "<f4", ()),
    ("alignments2D/shift_ess", "<f4", ()),
    ("alignments2D/class_posterior", "<f4", ()),
    ("alignments2D/class", "<u4", ()),
    ("alignments2D/class_ess", "<f4", ()),
)

#: cryoSPARC ``alignments2D/*`` fields otf2d does not compute, and so does not write.
ALIGNMENTS2D_OMITTED: frozenset[str] = frozenset(
    f"alignments2D/{name}" for name in ("error_min", "resid_pow", "weight", "pose_ess", "shift_ess")
)
#: The E-step's statistics, written when the snapshot knows them for every particle
#: (:func:`alignment_statistics`), else left out.
ALIGNMENTS2D_STATISTICS: frozenset[str] = frozenset(
    f"alignments2D/{name}" for name in ("slice_pow", "image_pow", "cross_cor", "alpha", "alpha_min")
)
#: The ``alignments2D/*`` fields otf2d always writes (cryoSPARC's names, dtypes and order).
ALIGNMENTS2D_WRITTEN = tuple(
    f for f in ALIGNMENTS2D_FIELDS if f[0] not in ALIGNMENTS2D_OMITTED | ALIGNMENTS2D_STATISTICS
)

#: otf2d's class-quality fields of the class-average ``.cs`` of a scored snapshot.
CLASS_QUALITY_FIELDS: tuple[tuple[str, str], ...] = (
    ("otf2d/junk_score", "<f4"),
    ("otf2d/is_junk", "u1"),
    ("otf2d/override", "S4"),
)

_CTF_FIELDS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("ctf/type", "S9", ()),
    ("ctf/exp_group_id", "<u4", ()),
    ("ctf/accel_kv", "<f4", ()),
    ("ctf/cs_mm", "<f4", ()),
    ("ctf/amp_contrast", "<f4", ()),
    ("ctf/df1_A", "<f4", ()),
    ("ctf/df2_A", "<f4", ()),
    ("ctf/df_angle_rad", "<f4", ()),
    ("ctf/phase_shift_rad", "<f4", ()),
    ("ctf/scale", "<f4", ()),
    ("ctf/scale_const", "<f4", ()),
    ("ctf/shift_A", "<f4", (2,)),
    ("ctf/tilt_A", "<f4", (2,)),
    ("ctf/trefoil_A", "<f4", (2,)),
    ("ctf/tetra_A", "<f4", (4,)),
    ("ctf/anisomag", "<f4", (4,)),
    ("ctf/bfactor", "<f4", ()),
)


def particle_uids(stack_paths: Sequence[str] | np.ndarray, indices: npt.ArrayLike, session: str = "") -> UIntArray:
    """Stable 64-bit uid of each particle: BLAKE2b-64 of ``session NUL stack_path NUL index``.

    The same particle key always gives the same uid, across snapshots, runs and machines.

    Parameters
    ----------
    stack_paths
        ``(n,)`` stack path relative to the project.
    indices
        ``(n,)`` 1-based index in the stack.
    session
        Session name, part of the particle key.

    Returns
    -------
    ndarray
        ``(n,)`` ``<u8``.
    """
    idx = np.asarray(indices, dtype=np.int64)
    out = np.empty(len(idx), dtype="<u8")
    for i, (path, index) in enumerate(zip(stack_paths, idx, strict=True)):
        key = f"{session}\0{path}\0{int(index)}".encode()
        out[i] = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return out


def import_signature(session: str) -> int:
    """``blob/import_sig`` of the particles of ``session``: BLAKE2b-64 of ``"otf2d:" + session``."""
    return int.from_bytes(hashlib.blake2b(f"otf2d:{session}".encode(), digest_size=8).digest(), "little")


def particles_blob_sign(snapshot: ClassSnapshot, default: float = -1.0) -> float:
    """The particles' ``blob/sign`` when a ``.cs`` input gave all of them one, else ``default``."""
    extra = snapshot.particles.extra
    signs = None if extra is None or extra.origin != "cryosparc" else extra.get("blob/sign")
    if signs is None or len(signs) == 0 or signs.ndim != 1 or signs.dtype.kind != "f":
        return default
    first = float(signs[0])
    return first if bool(np.all(signs == signs[0])) and first in (-1.0, 1.0) else default


def _fixed_bytes(strings: Sequence[str] | np.ndarray) -> np.ndarray:
    """UTF-8 fixed-width bytes (``|S<max>``, at least 1 wide), as cryoSPARC stores strings."""
    encoded = [str(s).encode("utf-8") for s in strings]
    width = max([1, *(len(e) for e in encoded)])
    return np.array(encoded, dtype=f"S{width}")


def alignment_statistics(parts: ParticleAssignments) -> dict[str, np.ndarray]:
    """The :data:`ALIGNMENTS2D_STATISTICS` known (finite) for every particle, by field name.

    ``image_pow`` = ``‖X‖²_ω``, ``cross_cor`` = ``2·Re⟨X, C·A⟩_ω``, ``slice_pow`` = ``‖C·A‖²_ω`` at
    the chosen (class, pose), at scale 1, as cryoSPARC records them (``algorithm.md`` §12);
    ``alpha`` the scale the classifier used (1 when the per-particle scale is off);
    ``alpha_min = cross_cor / (2·slice_pow)``, the least-squares scale. With them
    ``error = image_pow − alpha·cross_cor + alpha²·slice_pow`` (cryoSPARC's identity at α = 1).
    """
    found = {
        "alignments2D/image_pow": parts.image_power,
        "alignments2D/cross_cor": parts.cross_term,
        "alignments2D/slice_pow": parts.norm_term,
        "alignments2D/alpha": parts.scale,
    }
    known = {
        name: np.asarray(v, dtype=np.float64)
        for name, v in found.items()
        if v is not None and bool(np.all(np.isfinite(np.asarray(v, dtype=np.float64))))
    }
    cross, slice_pow = known.get("alignments2D/cross_cor"), known.get("alignments2D/slice_pow")
    if cross is not None and slice_pow is not None and bool(np.all(slice_pow > 0)):
        known["alignments2D/alpha_min"] = cross / (2.0 * slice_pow)
    return known


def particles_cs_array(
    snapshot: ClassSnapshot,
    *,
    session: str = "",
    blob_sign: float = -1.0,
    project_dir: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """The particles of ``snapshot`` as a cryoSPARC-style structured array (see module docstring).

    Every field of a ``.cs`` input, and ``location/*`` from a STAR input's coordinates (micrograph
    shapes read from the micrographs under ``project_dir``), are written back as
    :mod:`otf2d.monitoring.snapshots.passthrough` says.

    Returns
    -------
    ndarray
        ``(n,)`` structured array with ``uid``, ``blob/*``, ``ctf/*`` and ``alignments2D/*``.

    Raises
    ------
    InputError
        If an index is below 1, a particle's optics group is not in ``snapshot.optics``, or a
        value is NaN/Inf (``NonFiniteError``).
    """
    parts = snapshot.particles
    n = len(parts)
    lookup = check_snapshot(snapshot)
    indices = np.asarray(parts.indices, dtype=np.int64)
    groups = np.asarray(parts.optics_groups, dtype=np.int64)
    rows = np.array([lookup[int(g)] for g in groups], dtype=np.int64)
    psize = np.array([g.image_pixel_size_angstrom for g in snapshot.optics], dtype=np.float64)[rows]
    size = np.array([g.image_size for g in snapshot.optics], dtype=np.int64)[rows]
    paths = _fixed_bytes(parts.stack_paths)
    statistics = alignment_statistics(parts)
    alignments = [f for f in ALIGNMENTS2D_FIELDS if f in ALIGNMENTS2D_WRITTEN or f[0] in statistics]

    dtype = np.dtype(
        [
            ("uid", "<u8"),
            ("blob/path", paths.dtype.str),
            ("blob/idx", "<u4"),
            ("blob/shape", "<u4", (2,)),
            ("blob/psize_A", "<f4"),
            ("blob/sign", "<f4"),
            ("blob/import_sig", "<u8"),
            *_CTF_FIELDS,
            *alignments,
            (PARTICLE_JUNK_FIELD, "<f4"),
        ]
    )
    cs = np.zeros(n, dtype=dtype)
    cs["uid"] = particle_uids(parts.stack_paths, indices, session)
    cs["blob/path"] = paths
    cs["blob/idx"] = indices - 1
    cs["blob/shape"] = np.stack([size, size], axis=1) if n else np.zeros((0, 2))
    cs["blob/psize_A"] = psize
    cs["blob/sign"] = blob_sign
    cs["blob/import_sig"] = import_signature(session)
    ctf = parts.ctf
    cs["ctf/type"] = b"imported"
    cs["ctf/exp_group_id"] = groups - 1
    cs["ctf/accel_kv"] = ctf.voltage_kv
    cs["ctf/cs_mm"] = ctf.spherical_aberration_mm
    cs["ctf/amp_contrast"] = ctf.amplitude_contrast
    cs["ctf/df1_A"] = ctf.defocus_u_angstrom
    cs["ctf/df2_A"] = ctf.defocus_v_angstrom
    cs["ctf/df_angle_rad"] = np.deg2rad(ctf.defocus_angle_degrees)
    cs["ctf/phase_shift_rad"] = np.deg2rad(ctf.phase_shift_degrees)
    cs["ctf/scale"] = ctf.scale
    cs["ctf/bfactor"] = ctf.bfactor_angstrom2

    ox = np.asarray(parts.origin_x_angstrom, dtype=np.float64)
    oy = np.asarray(parts.origin_y_angstrom, dtype=np.float64)
    cs["alignments2D/shift"] = np.stack([ox / psize, oy / psize], axis=1) if n else np.zeros((0, 2))
    pose = np.mod(np.deg2rad(np.asarray(parts.psi_degrees, dtype=np.float64)), 2 * np.pi).astype(np.float32)
    pose[pose >= np.float32(2 * np.pi)] = 0.0  # keep [0, 2π) after rounding to float32
    cs["alignments2D/pose"] = pose
    cs["alignments2D/psize_A"] = psize
    cs["alignments2D/error"] = -np.asarray(parts.log_likelihood, dtype=np.float64)
    cs["alignments2D/class_posterior"] = np.clip(np.asarray(parts.class_posterior, dtype=np.float64), 0.0, 1.0)
    cs["alignments2D/class"] = np.asarray(parts.class_index, dtype=np.int64)
    cs["alignments2D/class_ess"] = parts.class_ess
    for name, values in statistics.items():
        cs[name] = values
    cs[PARTICLE_JUNK_FIELD] = particle_junk_scores(snapshot)
    micrographs = parts.micrograph_names
    if micrographs is None and parts.extra is not None and parts.extra.origin == "relion":
        micrographs = parts.extra.get("rlnMicrographName")
    return merge_cs_fields(cs, parts.extra, location_fields(parts.extra, micrographs, groups, project_dir))


def write_cryosparc_cs(
    snapshot: ClassSnapshot,
    path: str | os.PathLike[str],
    *,
    session: str = "",
    blob_sign: float = -1.0,
    project_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the particles of ``snapshot`` as a cryoSPARC-style ``.cs`` (NumPy format), atomically.

    Parameters
    ----------
    snapshot
        The classes and assignments.
    path
        Target file, e.g. ``run_it007_particles.cs`` (written exactly there).
    session
        Session name, part of each particle's key and so of its ``uid``.
    blob_sign
        cryoSPARC's ``blob/sign`` for every particle.
    project_dir
        Where micrograph paths are relative to (for ``location/micrograph_shape``).

    Returns
    -------
    Path
        ``path``.
    """
    cs = particles_cs_array(snapshot, session=session, blob_sign=blob_sign, project_dir=project_dir)
    return write_npy_atomic(path, cs)


def class_averages_cs_array(snapshot: ClassSnapshot, classes_stack: str) -> np.ndarray:
    """One row per class pointing at slice ``k`` (0-based) of ``classes_stack``.

    Parameters
    ----------
    snapshot
        The classes.
    classes_stack
        Path of the classes stack as it should be stored (relative to the project).

    Returns
    -------
    ndarray
        ``(K,)`` structured array: ``uid``, ``blob/path``, ``blob/idx``, ``blob/shape``,
        ``blob/psize_A``, ``blob/res_A``, ``alignments2D/class``; plus :data:`CLASS_QUALITY_FIELDS`
        when the snapshot is scored.

    Raises
    ------
    InputError
        A junk score that is not ``(K,)`` values in [0, 1] (``class_quality_columns``).
    """
    k = snapshot.n_classes
    h, w = (int(s) for s in snapshot.averages.shape[1:])
    path = _fixed_bytes([classes_stack])
    quality = class_quality_columns(snapshot)
    dtype = np.dtype(
        [
            ("uid", "<u8"),
            ("blob/path", path.dtype.str),
            ("blob/idx", "<u4"),
            ("blob/shape", "<u4", (2,)),
            ("blob/psize_A", "<f4"),
            ("blob/sign", "<f4"),
            ("blob/res_A", "<f4"),
            ("alignments2D/class", "<u4"),
            *(CLASS_QUALITY_FIELDS if quality is not None else ()),
        ]
    )
    cs = np.zeros(k, dtype=dtype)
    cs["uid"] = particle_uids([classes_stack] * k, np.arange(1, k + 1))
    cs["blob/path"] = path[0]
    cs["blob/idx"] = np.arange(k)
    cs["blob/shape"] = [h, w]
    cs["blob/psize_A"] = snapshot.pixel_size_angstrom
    cs["blob/sign"] = particles_blob_sign(snapshot)
    res = np.asarray(snapshot.resolution_angstrom, dtype=np.float64).copy()
    res[~np.isfinite(res)] = UNKNOWN_RESOLUTION_ANGSTROM
    cs["blob/res_A"] = res
    cs["alignments2D/class"] = np.arange(k)
    if quality is not None:
        cs["otf2d/junk_score"] = quality.junk_score
        cs["otf2d/is_junk"] = quality.is_junk
        cs["otf2d/override"] = np.char.encode(quality.override, "ascii")
    return cs


def write_class_averages_cs(snapshot: ClassSnapshot, path: str | os.PathLike[str], *, classes_stack: str) -> Path:
    """Write :func:`class_averages_cs_array` to ``path`` atomically and return ``path``."""
    return write_npy_atomic(path, class_averages_cs_array(snapshot, classes_stack))


__all__ = [
    "ALIGNMENTS2D_FIELDS",
    "ALIGNMENTS2D_OMITTED",
    "ALIGNMENTS2D_STATISTICS",
    "ALIGNMENTS2D_WRITTEN",
    "CLASS_QUALITY_FIELDS",
    "alignment_statistics",
    "class_averages_cs_array",
    "import_signature",
    "particle_uids",
    "particles_blob_sign",
    "particles_cs_array",
    "write_class_averages_cs",
    "write_cryosparc_cs",
]
