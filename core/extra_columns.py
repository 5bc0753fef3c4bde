"""The input's own columns, carried through classification unchanged (issue 14).

A particle file holds more than otf2d reads: coordinates, micrograph names, CTF fit statistics,
helical tube ids, a previous job's priors, cryoSPARC's ``location/*`` and ``pick_stats/*``, ...
The readers keep **every** column of the particle rows in an :class:`ExtraColumns`, row-aligned
with the particles; the writers put them back in every particle output (``_data.star``, ``.cs``,
``select``, ``rebalance``, engine snapshots) with the 2D results added or replaced.

``origin`` says which naming the columns follow:

``"relion"``
    STAR labels of the particle block (``rlnCoordinateX``, ...); columns of the particle's row in
    the ``data_optics`` table are kept under ``optics/<label>`` (e.g.
    ``optics/rlnMicrographOriginalPixelSize``) so they travel with each particle and go back into
    the optics table.
``"cryosparc"``
    The ``.cs`` field names (``uid``, ``location/center_x_frac``, ...), with their dtypes.

Values are NumPy arrays of shape ``(n,)`` or ``(n, k)``: numbers (``f``, ``i``, ``u``, ``b``) or
fixed-width UTF-8 bytes (``S``: the readers store RELION's text columns so too, and cryoSPARC's
strings are bytes already); ``str`` (``U``) arrays are accepted. Object arrays are never kept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError

#: Prefix of the columns that came from a particle's row in RELION's ``data_optics`` table.
OPTICS_PREFIX = "optics/"
ORIGINS = ("relion", "cryosparc")
#: Most columns carried (a real cryoSPARC particle file has ~120 fields).
MAX_COLUMNS = 1024
#: Longest column name.
MAX_NAME_CHARS = 160
#: Most values per row of one column (``ctf/tetra_A`` has 4, ``pose`` of 3D alignments 3).
MAX_ROW_VALUES = 64
#: Widest string or bytes value, in characters or bytes.
MAX_STRING_WIDTH = 4096
#: dtype kinds a column may have.
KINDS = frozenset("fiubSU")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./:+\-]*$")


def check_column_name(name: object) -> str:
    """``name`` if it is an acceptable column name, else :class:`InputError`."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS or _NAME.match(name) is None:
        raise InputError(None, f"column name {name!r:.80} is not a plain label (letters, digits, _ . / : + -)")
    return name


def check_column(name: str, values: np.ndarray, n: int) -> np.ndarray:
    """``values`` as a checked column of ``n`` rows (see the module docstring), else :class:`InputError`."""
    arr = np.asarray(values)
    if arr.dtype.kind not in KINDS or arr.dtype.names is not None:
        raise InputError(None, f"column {name}: dtype {arr.dtype} is not a number, str or bytes")
    if arr.ndim not in (1, 2) or arr.shape[0] != n:
        raise InputError(None, f"column {name}: shape {arr.shape} does not have {n} rows")
    if arr.ndim == 2 and not 1 <= arr.shape[1] <= MAX_ROW_VALUES:
        raise InputError(None, f"column {name}: {arr.shape[1]} values per row (at most {MAX_ROW_VALUES})")
    if arr.dtype.kind in "SU" and arr.dtype.itemsize // (4 if arr.dtype.kind == "U" else 1) > MAX_STRING_WIDTH:
        raise InputError(None, f"column {name}: strings wider than {MAX_STRING_WIDTH}")
    return arr


@dataclass(frozen=True, eq=False)
class ExtraColumns:
    """Every column of ``n`` input particle rows, in input order (see the module docstring)."""

    origin: str
    columns: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise InputError(None, f"extra columns: origin must be one of {ORIGINS}, got {self.origin!r:.40}")
        if len(self.columns) > MAX_COLUMNS:
            raise InputError(None, f"extra columns: {len(self.columns)} columns (at most {MAX_COLUMNS})")
        lengths = {len(np.asarray(v)) for v in self.columns.values()}
        if len(lengths) > 1:
            raise InputError(None, f"extra columns: columns of different lengths {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        checked = {check_column_name(k): check_column(k, v, n) for k, v in self.columns.items()}
        object.__setattr__(self, "columns", checked)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def get(self, name: str) -> np.ndarray | None:
        return self.columns.get(name)

    def take(self, index: npt.ArrayLike) -> ExtraColumns:
        """The rows at ``index`` (integer array, boolean mask)."""
        idx = np.asarray(index)
        return ExtraColumns(self.origin, {k: v[idx] for k, v in self.columns.items()})

    def particle_columns(self) -> dict[str, np.ndarray]:
        """The columns of the particle rows (RELION: without the ``optics/`` ones)."""
        return {k: v for k, v in self.columns.items() if not k.startswith(OPTICS_PREFIX)}

    def optics_columns(self) -> dict[str, np.ndarray]:
        """RELION optics-table columns, keyed by their label (``optics/`` removed)."""
        return {k.removeprefix(OPTICS_PREFIX): v for k, v in self.columns.items() if k.startswith(OPTICS_PREFIX)}

    @classmethod
    def concatenate(cls, parts: Sequence[ExtraColumns | None]) -> ExtraColumns | None:
        """Join row-wise. Only columns every part has are kept (a column a file lacks has no value to
        write back); a column whose dtypes cannot be joined (a number in one file, a string in
        another) is dropped. ``None`` when a part is ``None`` or the origins differ."""
        if not parts or any(p is None for p in parts):
            return None
        present = [p for p in parts if p is not None]
        origins = {p.origin for p in present}
        if len(origins) != 1:
            return None
        common = [k for k in present[0].columns if all(k in p.columns for p in present[1:])]
        joined: dict[str, np.ndarray] = {}
        for name in common:
            arrays = [p.columns[name] for p in present]
            kinds = {"S" if a.dtype.kind == "S" else "U" if a.dtype.kind == "U" else "n" for a in arrays}
            shapes = {a.shape[1:] for a in arrays}
            if len(kinds) == 1 and len(shapes) == 1:
                joined[name] = np.concatenate(arrays)
        return cls(origins.pop(), joined)


def from_dataframe(
    table: object, *, optics: object | None = None, optics_rows: np.ndarray | None = None
) -> ExtraColumns:
    """Every column of a RELION particle block (a ``pandas.DataFrame``), plus its optics rows.

    Parameters
    ----------
    table
        The particle block as read by ``starfile``.
    optics
        The ``data_optics`` block, or ``None``.
    optics_rows
        ``(n,)`` row of ``optics`` of each particle (required with ``optics``).
    """
    columns: dict[str, np.ndarray] = {}
    for label in table.columns:  # type: ignore[attr-defined]
        columns[str(label)] = _series_values(table[label])  # type: ignore[index]
    if optics is not None and optics_rows is not None:
        for label in optics.columns:  # type: ignore[attr-defined]
            if str(label) != "rlnOpticsGroup":
                columns[OPTICS_PREFIX + str(label)] = _series_values(optics[label])[optics_rows]  # type: ignore[index]
    return ExtraColumns("relion", _acceptable(columns))


def _acceptable(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The columns that pass :func:`check_column_name` / :func:`check_column` (others are not carried)."""
    n = len(next(iter(columns.values()))) if columns else 0
    kept: dict[str, np.ndarray] = {}
    for name, values in list(columns.items())[:MAX_COLUMNS]:
        try:
            kept[check_column_name(name)] = check_column(name, values, n)
        except InputError:
            continue
    return kept


def _series_values(series: object) -> np.ndarray:
    """A STAR column as int64 / float64 / bool when it is numeric, else as UTF-8 bytes (``S``: a
    quarter of the memory of ``str``, which matters for a million micrograph names)."""
    values = np.asarray(series.to_numpy())  # type: ignore[attr-defined]
    if values.dtype.kind in "iufb":
        return values
    encoded = [str(v).encode("utf-8") for v in values.tolist()]
    return np.array(encoded, dtype=f"S{max([1, *(len(e) for e in encoded)])}")


def from_records(records: np.ndarray) -> ExtraColumns:
    """Every field of a cryoSPARC ``.cs`` structured array, with its own dtype."""
    names = records.dtype.names or ()
    return ExtraColumns("cryosparc", _acceptable({name: np.asarray(records[name]) for name in names}))


__all__ = [
    "KINDS",
    "MAX_COLUMNS",
    "MAX_NAME_CHARS",
    "MAX_ROW_VALUES",
    "MAX_STRING_WIDTH",
    "OPTICS_PREFIX",
    "ExtraColumns",
    "check_column",
    "check_column_name",
    "from_dataframe",
    "from_records",
]
