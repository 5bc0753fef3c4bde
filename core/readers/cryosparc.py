"""cryoSPARC ``.cs`` particle files (NumPy structured arrays), converted to RELION conventions.

``blob/idx`` is 0-based (+1 here), ``blob/path`` may start with ``>`` (stripped), angles are in
radians (→ degrees), ``ctf/exp_group_id`` is 0-based (+1 → optics group). Stack paths are relative
to the cryoSPARC project directory; by default that is taken to be the ``.cs`` file's directory,
and a stack missing there is also looked for by its base name next to the ``.cs`` file
(formats.md §4).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError, MissingColumnError, UnsupportedFormatError
from otf2d.core.particles import RELION_CTF_DEFAULTS, CtfParams
from otf2d.core.readers.optics import OpticsOverrides, first_header, resolve_pixel_size
from otf2d.core.readers.project import default_session
from otf2d.core.readers.table import Alignments2D, ParticleTable
from otf2d.core.snapshot import OpticsGroup

CSDAT_MAGIC = b"\x95CSDAT"
NUMPY_MAGIC = b"\x93NUMPY"

FloatArray = npt.NDArray[np.float64]

#: CtfParams field → (cryoSPARC field, factor to RELION units).
_CTF_FIELDS: dict[str, tuple[str, float]] = {
    "defocus_u_angstrom": ("ctf/df1_A", 1.0),
    "defocus_v_angstrom": ("ctf/df2_A", 1.0),
    "defocus_angle_degrees": ("ctf/df_angle_rad", 180.0 / np.pi),
    "voltage_kv": ("ctf/accel_kv", 1.0),
    "spherical_aberration_mm": ("ctf/cs_mm", 1.0),
    "amplitude_contrast": ("ctf/amp_contrast", 1.0),
    "phase_shift_degrees": ("ctf/phase_shift_rad", 180.0 / np.pi),
    "bfactor_angstrom2": ("ctf/bfactor", 1.0),
    "scale": ("ctf/scale", 1.0),
}


def load_cs(path: Path) -> np.ndarray:
    """The structured array of a ``.cs`` file, read without pickle.

    Raises
    ------
    UnsupportedFormatError
        cryosparc-tools' compressed CSDAT format (magic ``\\x95CSDAT``).
    InputError
        Empty, not a NumPy file, or not a 1-D structured array.
    """
    if not path.is_file():
        raise InputError(path, "file not found")
    with path.open("rb") as fh:
        magic = fh.read(8)
    if not magic:
        raise InputError(path, "empty file")
    if magic.startswith(CSDAT_MAGIC):
        raise UnsupportedFormatError(
            path,
            "compressed cryoSPARC dataset (CSDAT format, magic \\x95CSDAT), which NumPy cannot read: "
            "convert it with cryosparc-tools, `from cryosparc.dataset import Dataset, NUMPY_FORMAT; "
            "Dataset.load(path).save(out_path, format=NUMPY_FORMAT)`, or export the particles from cryoSPARC",
        )
    if not magic.startswith(NUMPY_MAGIC):
        raise InputError(path, "not a cryoSPARC .cs file (no NumPy .npy header)")
    try:
        records = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(path, f"cannot read as a NumPy array ({exc})") from None
    if not isinstance(records, np.ndarray) or records.dtype.names is None or records.ndim != 1:
        raise InputError(path, "not a cryoSPARC .cs file (expected a 1-D structured array)")
    return records


def decode_strings(path: Path, values: np.ndarray, field: str) -> npt.NDArray[np.str_]:
    """Fixed-width bytes (or str) → numpy str array."""
    if values.dtype.kind == "U":
        return values.astype(str)
    if values.dtype.kind != "S":
        raise InputError(path, f"field {field} holds {values.dtype}, not strings")
    try:
        return np.char.decode(values, "utf-8").astype(str)
    except UnicodeDecodeError:
        raise InputError(path, f"field {field} holds bytes that are not UTF-8") from None


def read_cryosparc_table(
    path: str | os.PathLike[str],
    *,
    session: str | None = None,
    project_dir: str | os.PathLike[str] | None = None,
    overrides: OpticsOverrides | None = None,
) -> ParticleTable:
    """Read a cryoSPARC ``.cs`` particle file into a :class:`ParticleTable` (no images are read).

    Raises
    ------
    UnsupportedFormatError
        Compressed CSDAT file.
    MissingColumnError
        No ``blob/path`` or ``blob/idx``.
    PixelSizeError
        No ``blob/psize_A``, keyword or usable stack header.
    """
    path = Path(path)
    overrides = overrides or OpticsOverrides()
    records = load_cs(path)
    fields = set(records.dtype.names or ())
    missing = [f for f in ("blob/path", "blob/idx") if f not in fields]
    if missing:
        raise MissingColumnError(
            path, f"lacks required field(s) {', '.join(missing)}; it has: {', '.join(sorted(fields))}"
        )
    n = len(records)
    if n == 0:
        raise InputError(path, "holds no particles (0 rows)")
    stacks = np.char.lstrip(decode_strings(path, records["blob/path"], "blob/path"), ">")
    indices = _column(path, records, "blob/idx").astype(np.int64) + 1
    values = _ctf_values(path, records)
    overrides.apply(path, values)
    groups = (
        _column(path, records, "ctf/exp_group_id").astype(np.int64) + 1
        if "ctf/exp_group_id" in fields
        else np.ones(n, dtype=np.int64)
    )
    pixel_meta = np.full(n, np.nan)
    for name in ("alignments3D/psize_A", "alignments2D/psize_A", "blob/psize_A"):
        if name in fields:
            pixel_meta = _column(path, records, name)
    pdir = Path(project_dir) if project_dir is not None else path.resolve().parent
    search = (path.resolve().parent,)

    optics: list[OpticsGroup] = []
    for number in np.unique(groups):
        first = int(np.flatnonzero(groups == number)[0])
        header = None
        if "blob/shape" not in fields or (overrides.pixel_size_angstrom is None and not pixel_meta[first] > 0):
            rel = str(stacks[first])
            header = first_header([pdir / rel, *(d / Path(rel).name for d in search)], path)
        meta = float(pixel_meta[first]) if np.isfinite(pixel_meta[first]) else None
        px = resolve_pixel_size(path, meta, overrides.pixel_size_angstrom, header, what=f"exposure group {number - 1}")
        if "blob/shape" in fields:
            box = int(records["blob/shape"][first][-1])
        else:
            box = header.width if header is not None else 0
        optics.append(
            OpticsGroup(
                number=int(number),
                name=f"exp_group_{int(number) - 1}",
                voltage_kv=float(values["voltage_kv"][first]),
                spherical_aberration_mm=float(values["spherical_aberration_mm"][first]),
                amplitude_contrast=float(values["amplitude_contrast"][first]),
                image_pixel_size_angstrom=px,
                image_size=box,
            )
        )
    first_group = next(g for g in optics if g.number == groups[0])
    micrographs = (
        decode_strings(path, records["location/micrograph_path"], "location/micrograph_path")
        if "location/micrograph_path" in fields
        else None
    )
    return ParticleTable(
        source=path,
        project_dir=pdir,
        session=session if session is not None else default_session(pdir, path),
        stack_paths=stacks,
        indices=indices,
        ctf=CtfParams(**values),
        optics_groups=groups,
        optics=optics,
        pixel_size_angstrom=first_group.image_pixel_size_angstrom,
        box_size=first_group.image_size,
        micrograph_names=micrographs,
        alignments=_alignments(path, records, first_group.image_pixel_size_angstrom),
        has_ctf="ctf/df1_A" in fields,
        format="cryosparc",
        stack_search_dirs=search,
    )


def _column(path: Path, records: np.ndarray, name: str) -> FloatArray:
    """A scalar numeric field as float64, checked finite."""
    try:
        values = np.asarray(records[name], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(path, f"field {name} is not numeric ({records.dtype[name]})") from None
    if values.ndim != 1:
        raise InputError(path, f"field {name} has shape {values.shape[1:]} per row; expected a scalar")
    if not np.all(np.isfinite(values)):
        raise InputError(path, f"field {name} holds NaN or Inf (first at row {int(np.argmin(np.isfinite(values)))})")
    return values


def _ctf_values(path: Path, records: np.ndarray) -> dict[str, FloatArray]:
    """CTF in RELION units; absent fields take RELION's defaults (df2 defaults to df1)."""
    n = len(records)
    fields = set(records.dtype.names or ())
    values: dict[str, FloatArray] = {}
    for name, (field, factor) in _CTF_FIELDS.items():
        if field in fields:
            values[name] = _column(path, records, field) * factor
        elif name == "defocus_v_angstrom":
            values[name] = values["defocus_u_angstrom"].copy()
        else:
            default = 0.0 if name == "defocus_u_angstrom" else RELION_CTF_DEFAULTS[name]
            values[name] = np.full(n, default, dtype=np.float64)
    return values


def _alignments(path: Path, records: np.ndarray, pixel_size: float) -> Alignments2D | None:
    """``alignments2D/*`` as RELION-style psi (°), origins (Å) and 0-based classes (pyem's mapping)."""
    fields = set(records.dtype.names or ())
    if "alignments2D/pose" not in fields:
        return None
    n = len(records)
    px = _column(path, records, "alignments2D/psize_A") if "alignments2D/psize_A" in fields else pixel_size
    if "alignments2D/shift" in fields:
        shift = np.asarray(records["alignments2D/shift"], dtype=np.float64).reshape(n, 2)
        ox, oy = shift[:, 0] * px, shift[:, 1] * px
    else:
        ox, oy = np.zeros(n), np.zeros(n)
    classes = _column(path, records, "alignments2D/class").astype(np.int64) if "alignments2D/class" in fields else None
    return Alignments2D(
        psi_degrees=np.rad2deg(_column(path, records, "alignments2D/pose")),
        origin_x_angstrom=ox,
        origin_y_angstrom=oy,
        class_index=classes,
    )


__all__ = ["CSDAT_MAGIC", "NUMPY_MAGIC", "decode_strings", "load_cs", "read_cryosparc_table"]
