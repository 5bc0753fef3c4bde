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
================================  ==============================================================

Fields otf2d does not compute get neutral values: ``split`` 0 (no half-sets), ``alpha`` 1 and
``alpha_min`` 1 (no per-particle scale), and ``error``, ``error_min``, ``resid_pow``,
``slice_pow``, ``image_pow``, ``cross_cor``, ``weight``, ``pose_ess``, ``shift_ess`` 0 (not
computed, as in the real J2 file for ``weight`` and the ``*_ess``). The higher-order CTF terms
(``ctf/shift_A``, ``tilt_A``, ``trefoil_A``, ``tetra_A``, ``anisomag``) and ``scale_const`` are 0,
as in the J2 file; ``ctf/type`` is ``b"imported"`` (the CTF came from upstream); ``blob/sign`` is
−1 by default, as in the J2 file for particles imported from RELION (override with ``blob_sign``).

The class-average companion (:func:`write_class_averages_cs`) has ``uid``, ``blob/path``,
``blob/idx``, ``blob/shape``, ``blob/psize_A``, ``blob/res_A`` (per-class resolution, 999 Å when
unknown) and ``alignments2D/class``, pointing at the RELION ``_classes.mrcs`` stack. When the
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

from otf2d.core.snapshot import ClassSnapshot
from otf2d.monitoring.snapshots.atomic import write_npy_atomic
from otf2d.monitoring.snapshots.class_quality import class_quality_columns
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


def _fixed_bytes(strings: Sequence[str] | np.ndarray) -> np.ndarray:
    """UTF-8 fixed-width bytes (``|S<max>``, at least 1 wide), as cryoSPARC stores strings."""
    encoded = [str(s).encode("utf-8") for s in strings]
    width = max([1, *(len(e) for e in encoded)])
    return np.array(encoded, dtype=f"S{width}")


def particles_cs_array(snapshot: ClassSnapshot, *, session: str = "", blob_sign: float = -1.0) -> np.ndarray:
    """The particles of ``snapshot`` as a cryoSPARC-style structured array (see module docstring).

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

    dtype = np.dtype(
        [
            ("uid", "<u8"),
            ("blob/path", paths.dtype.str),
            ("blob/idx", "<u4"),
            ("blob/shape", "<u4", (2,)),
            ("blob/psize_A", "<f4"),
            ("blob/sign", "<f4"),
            *_CTF_FIELDS,
            *ALIGNMENTS2D_FIELDS,
        ]
    )
    cs = np.zeros(n, dtype=dtype)
    cs["uid"] = particle_uids(parts.stack_paths, indices, session)
    cs["blob/path"] = paths
    cs["blob/idx"] = indices - 1
    cs["blob/shape"] = np.stack([size, size], axis=1) if n else np.zeros((0, 2))
    cs["blob/psize_A"] = psize
    cs["blob/sign"] = blob_sign
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
    cs["alignments2D/alpha"] = 1.0
    cs["alignments2D/alpha_min"] = 1.0
    cs["alignments2D/class_posterior"] = parts.class_posterior
    cs["alignments2D/class"] = np.asarray(parts.class_index, dtype=np.int64)
    cs["alignments2D/class_ess"] = parts.class_ess
    return cs


def write_cryosparc_cs(
    snapshot: ClassSnapshot,
    path: str | os.PathLike[str],
    *,
    session: str = "",
    blob_sign: float = -1.0,
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

    Returns
    -------
    Path
        ``path``.
    """
    return write_npy_atomic(path, particles_cs_array(snapshot, session=session, blob_sign=blob_sign))


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
    "CLASS_QUALITY_FIELDS",
    "class_averages_cs_array",
    "particle_uids",
    "particles_cs_array",
    "write_class_averages_cs",
    "write_cryosparc_cs",
]
