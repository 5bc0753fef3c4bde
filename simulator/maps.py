"""Reading the 3D map to simulate from, and measuring how big the particle in it is."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError, UnsupportedFormatError

FloatArray = npt.NDArray[np.float64]


def read_map(path: str | Path) -> tuple[FloatArray, float | None]:
    """A cubic MRC map and its voxel size from the header.

    Parameters
    ----------
    path
        MRC file holding one cubic volume.

    Returns
    -------
    tuple
        The ``(n, n, n)`` float64 map indexed ``[z, y, x]``, and the header voxel size in Å, or
        ``None`` where the header says 0 (common: the pixel size then lives only in metadata).

    Raises
    ------
    InputError
        If the file is missing, not an MRC file, not a cubic volume, or holds NaN/Inf.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "map file not found")
    try:
        with mrcfile.open(path, permissive=False) as mrc:
            data = np.asarray(mrc.data, dtype=np.float64)
            voxel = float(mrc.voxel_size.x)
    except ValueError as exc:
        raise UnsupportedFormatError(path, f"not a readable MRC map ({exc})") from exc
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(path, f"the map must be a cubic volume, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise InputError(path, "the map contains NaN or Inf voxels")
    return data, (voxel if voxel > 0 else None)


def enclosing_diameter_angstrom(volume: npt.ArrayLike, voxel_size_angstrom: float, fraction: float = 0.95) -> float:
    """Diameter of the sphere about the map centre holding ``fraction`` of the positive density.

    Parameters
    ----------
    volume
        ``(n, n, n)`` map, centre at voxel ``n // 2``.
    voxel_size_angstrom
        Voxel size in Å.
    fraction
        Share of the positive density the sphere must hold.

    Returns
    -------
    float
        The diameter in Å.
    """
    vol = np.clip(np.asarray(volume, dtype=np.float64), 0.0, None)
    n = vol.shape[0]
    axis = np.arange(n, dtype=np.float64) - n // 2
    radius = np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2).ravel()
    order = np.argsort(radius)
    cumulative = np.cumsum(vol.ravel()[order])
    if cumulative[-1] <= 0:
        raise InputError(None, "the map has no positive density")
    r = radius[order][np.searchsorted(cumulative, fraction * cumulative[-1])]
    return float(2.0 * r * voxel_size_angstrom)


__all__ = ["enclosing_diameter_angstrom", "read_map"]
