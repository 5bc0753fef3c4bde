"""Writing the input's own columns back (issue 14): every particle output keeps every input column.

The snapshot writers build their own columns (identity, CTF, optics, the 2D results) and hand them
here with the particles' :class:`~otf2d.core.extra_columns.ExtraColumns`. The rule, for each input column:

- a **2D result** (:data:`RELION_RESULT_LABELS`, ``alignments2D/*``) is replaced by otf2d's value,
  or dropped when otf2d writes no such column (an old ``rlnOriginX`` in pixels, an old
  ``alignments2D/error``): a previous job's answer must not pass for this one's;
- a column otf2d also writes from the input (``rlnDefocusU``, :data:`CS_DERIVED_FIELDS`) keeps
  the input's value and dtype unless otf2d's differs (a user's explicit override of voltage or
  pixel size), in which case otf2d's is written;
- a ``.cs`` field otf2d writes with a default (``uid``, ``blob/sign``, ``blob/import_sig``,
  ``ctf/type``, the higher-order CTF terms) is always the input's (cryoSPARC joins on ``uid``);
- every other column is written unchanged, in input order, before the columns otf2d adds.

Across formats: a STAR input's coordinates become cryoSPARC ``location/*`` (:func:`location_fields`)
and a ``.cs`` input's ``location/*`` become ``rlnMicrographName`` / ``rlnCoordinateX/Y``
(:func:`relion_location_columns`), with pyem's ``csparc2star`` convention: ``micrograph_shape`` is
``[ny, nx]``, ``center_x_frac = X / nx``, ``center_y_frac = 1 − Y / ny`` (cryoSPARC's Y origin is at the
bottom). When a micrograph's shape cannot be read (the micrograph is not under the project
directory), ``location/micrograph_path`` is written and the RELION coordinates are carried as
``relion/rlnCoordinateX`` / ``relion/rlnCoordinateY`` (pixels of the micrograph) instead of fractions.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd

from otf2d.core.extra_columns import ExtraColumns

#: RELION labels that are results of a 2D classification: replaced by otf2d's, never passed through.
RELION_RESULT_LABELS: frozenset[str] = frozenset(
    {
        "rlnClassNumber",
        "rlnAnglePsi",
        "rlnOriginXAngst",
        "rlnOriginYAngst",
        "rlnOriginX",
        "rlnOriginY",
        "rlnMaxValueProbDistribution",
        "rlnNrOfSignificantSamples",
        "rlnLogLikeliContribution",
        "rlnGroupNumber",
        "rlnNormCorrection",
        "rlnOtf2dJunkScore",
    }
)
#: cryoSPARC field prefixes that are results of a 2D classification.
CS_RESULT_PREFIXES: tuple[str, ...] = ("alignments2D/", "otf2d/")
#: ``.cs`` fields otf2d derives from the input's values (and a user's explicit overrides): the input's
#: value is written unless otf2d's differs. Every other non-result field is the input's, always.
CS_DERIVED_FIELDS: frozenset[str] = frozenset(
    {
        "blob/path",
        "blob/idx",
        "blob/shape",
        "blob/psize_A",
        "ctf/exp_group_id",
        "ctf/accel_kv",
        "ctf/cs_mm",
        "ctf/amp_contrast",
        "ctf/df1_A",
        "ctf/df2_A",
        "ctf/df_angle_rad",
        "ctf/phase_shift_rad",
        "ctf/scale",
        "ctf/bfactor",
    }
)
#: Prefix of RELION columns carried into a ``.cs`` file.
RELION_IN_CS_PREFIX = "relion/"


def _as_text(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "S":
        return np.char.lstrip(np.char.decode(values, "utf-8", errors="replace"), ">")
    return np.char.lstrip(values.astype(str), ">")


def same_values(ours: Any, theirs: np.ndarray) -> bool:
    """Whether otf2d's column equals the input's (float32 rounding and a leading ``>`` aside)."""
    a, b = np.asarray(ours), np.asarray(theirs)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "SUO" or b.dtype.kind in "SUO":
        if a.dtype.kind not in "SUO" or b.dtype.kind not in "SUO":
            return False
        return bool(np.array_equal(_as_text(a), _as_text(b)))
    try:
        return bool(np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=1e-5, atol=1e-6, equal_nan=True))
    except (TypeError, ValueError):
        return False


def _star_values(values: np.ndarray) -> Any:
    if values.dtype.kind == "S":
        return pd.array(np.char.decode(values, "utf-8", errors="replace").tolist(), dtype=object)
    if values.dtype.kind in "UO":
        return pd.array([str(v) for v in values.tolist()], dtype=object)
    return values


def merge_star_columns(ours: Mapping[str, Any], extra: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The particle (or optics) columns of a STAR block: input columns first, by the module's rule."""
    out: dict[str, Any] = {}
    for name, values in extra.items():
        if name in RELION_RESULT_LABELS:
            if name in ours:
                out[name] = ours[name]
            continue
        mine = ours.get(name)
        out[name] = _star_values(values) if mine is None or same_values(mine, values) else mine
    for name, values in ours.items():
        out.setdefault(name, values)
    return out


def relion_particle_extra(extra: ExtraColumns | None) -> dict[str, np.ndarray]:
    """The input columns to merge into ``data_particles`` (from a ``.cs``: its location as RELION's)."""
    if extra is None:
        return {}
    if extra.origin == "relion":
        return extra.particle_columns()
    return relion_location_columns(extra)


def relion_optics_extra(extra: ExtraColumns | None, groups: np.ndarray, numbers: list[int]) -> dict[str, np.ndarray]:
    """Per optics group (``numbers``, in table order) the input's optics columns, from each group's
    first particle; ``{}`` when a group has no particle (its values are not known here)."""
    if extra is None or extra.origin != "relion":
        return {}
    columns = extra.optics_columns()
    if not columns:
        return {}
    first = []
    for number in numbers:
        members = np.flatnonzero(groups == number)
        if len(members) == 0:
            return {}
        first.append(int(members[0]))
    return {label: values[first] for label, values in columns.items()}


def relion_location_columns(extra: ExtraColumns) -> dict[str, np.ndarray]:
    """``rlnMicrographName``, ``rlnCoordinateX/Y`` (pixels) from a ``.cs`` file's ``location/*``."""
    path = extra.get("location/micrograph_path")
    if path is None:
        return {}
    out: dict[str, np.ndarray] = {"rlnMicrographName": _as_text(np.asarray(path))}
    fx, fy, shape = (extra.get(f"location/{k}") for k in ("center_x_frac", "center_y_frac", "micrograph_shape"))
    if fx is not None and fy is not None and shape is not None and shape.ndim == 2 and shape.shape[1] == 2:
        ny, nx = shape[:, 0].astype(np.float64), shape[:, 1].astype(np.float64)
        out["rlnCoordinateX"] = np.round(fx.astype(np.float64) * nx)
        out["rlnCoordinateY"] = np.round((1.0 - fy.astype(np.float64)) * ny)
    return out


def _fixed_bytes(strings: list[str]) -> np.ndarray:
    encoded = [s.encode("utf-8") for s in strings]
    return np.array(encoded, dtype=f"S{max([1, *(len(e) for e in encoded)])}")


def micrograph_shapes(names: np.ndarray, project_dir: str | os.PathLike[str] | None) -> np.ndarray | None:
    """``(n, 2)`` ``[ny, nx]`` of each particle's micrograph from its MRC header, or ``None`` when
    one cannot be read (not under ``project_dir``, not an MRC file, or no ``project_dir``)."""
    if project_dir is None or len(names) == 0:
        return None
    unique, inverse = np.unique(names, return_inverse=True)
    shapes = np.empty((len(unique), 2), dtype=np.uint32)
    for i, name in enumerate(unique.tolist()):
        path = Path(project_dir) / str(name)
        if not path.is_file():
            return None
        try:
            with mrcfile.open(path, header_only=True, permissive=True) as mrc:
                shapes[i] = (int(mrc.header.ny), int(mrc.header.nx))
        except (OSError, ValueError):
            return None
    return shapes[inverse.reshape(-1)]


def location_fields(
    extra: ExtraColumns | None,
    micrographs: np.ndarray | None,
    groups: np.ndarray,
    project_dir: str | os.PathLike[str] | None,
) -> dict[str, np.ndarray]:
    """cryoSPARC ``location/*`` for particles from a STAR file (see the module docstring)."""
    if micrographs is None or extra is None or extra.origin != "relion":
        return {}
    raw = np.asarray(micrographs)
    names = np.char.decode(raw, "utf-8", errors="replace") if raw.dtype.kind == "S" else raw.astype(str)
    uids = np.array(
        [int.from_bytes(hashlib.blake2b(m.encode(), digest_size=8).digest(), "little") for m in names.tolist()],
        dtype="<u8",
    )
    fields: dict[str, np.ndarray] = {
        "location/micrograph_uid": uids,
        "location/exp_group_id": (np.asarray(groups, dtype=np.int64) - 1).astype("<u4"),
        "location/micrograph_path": _fixed_bytes(names.tolist()),
    }
    x, y = extra.get("rlnCoordinateX"), extra.get("rlnCoordinateY")
    if x is None or y is None or x.dtype.kind not in "iuf" or y.dtype.kind not in "iuf":
        return fields
    shapes = micrograph_shapes(names, project_dir)
    if shapes is None:
        fields[RELION_IN_CS_PREFIX + "rlnCoordinateX"] = x.astype("<f4")
        fields[RELION_IN_CS_PREFIX + "rlnCoordinateY"] = y.astype("<f4")
        return fields
    fields["location/micrograph_shape"] = shapes.astype("<u4")
    fields["location/center_x_frac"] = (x.astype(np.float64) / shapes[:, 1]).astype("<f4")
    fields["location/center_y_frac"] = (1.0 - y.astype(np.float64) / shapes[:, 0]).astype("<f4")
    return fields


def merge_cs_fields(ours: np.ndarray, extra: ExtraColumns | None, added: Mapping[str, np.ndarray]) -> np.ndarray:
    """otf2d's structured array ``ours`` with the input's ``.cs`` fields (module rule) and ``added``."""
    columns: dict[str, np.ndarray] = {}
    if extra is not None and extra.origin == "cryosparc":
        for name, values in extra.columns.items():
            if name.startswith(CS_RESULT_PREFIXES):
                continue
            mine = ours[name] if name in (ours.dtype.names or ()) else None
            keep_input = name not in CS_DERIVED_FIELDS or mine is None or same_values(mine, values)
            columns[name] = values if keep_input or mine is None else mine
    for name in ours.dtype.names or ():
        columns.setdefault(name, ours[name])
    for name, values in added.items():
        columns.setdefault(name, values)
    dtype = np.dtype([(name, v.dtype.str, v.shape[1:]) for name, v in columns.items()])
    out = np.zeros(len(ours), dtype=dtype)
    for name, values in columns.items():
        out[name] = values
    return out


__all__ = [
    "CS_DERIVED_FIELDS",
    "CS_RESULT_PREFIXES",
    "RELION_IN_CS_PREFIX",
    "RELION_RESULT_LABELS",
    "location_fields",
    "merge_cs_fields",
    "merge_star_columns",
    "micrograph_shapes",
    "relion_location_columns",
    "relion_optics_extra",
    "relion_particle_extra",
    "same_values",
]
