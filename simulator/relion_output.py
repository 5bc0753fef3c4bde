"""Writing what RELION's Extract job writes, plus the ground-truth table.

Per micrograph ``mic_NNNNN`` (``NNNNN`` 1-based, 5 digits), in this order:

1. ``Extract/job005/Movies/mic_NNNNN.mrcs``: float32 image stack, pixel size in the header
   (written to ``….mrcs.tmp`` and renamed; or grown in place one image at a time, like RELION,
   with ``stack_growth="append"``);
2. ``Extract/job005/Movies/mic_NNNNN_extract.star``: one ``data_images`` loop, no optics table,
   written to ``….star.tmp`` and renamed (RELION's ``MetaDataTable::write``);
3. ``Extract/job005/particles.star``: optics + all particles so far, rewritten through a ``.tmp``
   and a rename after each micrograph (RELION's ``ObservationModel::saveNew``);
4. ``truth.csv``: the micrograph's rows appended in one write.

Paths inside STAR files are relative to the project directory (the output directory).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import numpy.typing as npt
import pandas as pd
import starfile

from otf2d.core.durable import atomic_output

#: Columns of ``truth.csv``: RELION labels where RELION has one, so that a classifier's
#: ``_data.star`` can be compared column by column.
TRUTH_COLUMNS: tuple[str, ...] = (
    "rlnImageName",
    "rlnMicrographName",
    "is_junk",
    "junk_type",
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnAnglePsi",
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
)


def write_stack(
    path: Path, images: npt.NDArray[np.float32], pixel_size_angstrom: float, *, growth: str = "atomic"
) -> None:
    """Write an MRC image stack (mode 2, ``ispg`` 0, voxel size = pixel size).

    Parameters
    ----------
    path
        Destination ``.mrcs``.
    images
        ``(n, box, box)`` float32.
    pixel_size_angstrom
        Written into the header.
    growth
        ``"atomic"``: write ``path.tmp`` then rename. ``"append"``: like RELION, create the file
        with the first image and grow it one image at a time (readers see a valid, short stack
        until the end; this costs O(n²) bytes written).
    """
    data = np.ascontiguousarray(images, dtype=np.float32)
    if growth == "atomic":
        with as_relion_does(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.set_image_stack()
            mrc.voxel_size = pixel_size_angstrom
            _set_fixed_label(mrc)
        return
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data[:1])
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size_angstrom
        _set_fixed_label(mrc)
    for k in range(2, data.shape[0] + 1):
        with mrcfile.open(path, mode="r+") as mrc:
            mrc.set_data(data[:k])
            mrc.set_image_stack()
            mrc.voxel_size = pixel_size_angstrom
            _set_fixed_label(mrc)


def _set_fixed_label(mrc: Any) -> None:
    """Replace mrcfile's time-stamped label, so equal seeds give bit-identical stacks."""
    mrc.header.label[0] = b"otf2d simulator"
    mrc.header.nlabl = 1


def as_relion_does(path: Path) -> AbstractContextManager[Path]:
    """RELION's atomic write (``MetaDataTable::write``): ``<path>.tmp``, then a rename; no ``fsync``."""
    return atomic_output(path, temporary=path.with_name(path.name + ".tmp"), fsync=False)


def write_star(path: Path, blocks: dict[str, pd.DataFrame]) -> None:
    """Write STAR blocks atomically: ``path.tmp`` then rename (as RELION does)."""
    with as_relion_does(path) as tmp:
        starfile.write(blocks, tmp)


def optics_table(
    *,
    pixel_size_angstrom: float,
    micrograph_pixel_size_angstrom: float,
    box: int,
    voltage_kv: float,
    spherical_aberration_mm: float,
    amplitude_contrast: float,
) -> pd.DataFrame:
    """RELION 3.1 ``data_optics`` with one optics group."""
    return pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnMicrographOriginalPixelSize": [micrograph_pixel_size_angstrom],
            "rlnVoltage": [voltage_kv],
            "rlnSphericalAberration": [spherical_aberration_mm],
            "rlnAmplitudeContrast": [amplitude_contrast],
            "rlnImagePixelSize": [pixel_size_angstrom],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
        }
    )


def extract_table(
    *,
    stack_path: str,
    micrograph_name: str,
    coordinates_x: npt.ArrayLike,
    coordinates_y: npt.ArrayLike,
    defocus_u_angstrom: float,
    defocus_v_angstrom: float,
    defocus_angle_degrees: float,
    ctf_max_resolution_angstrom: float,
    ctf_figure_of_merit: float,
) -> pd.DataFrame:
    """The ``data_images`` rows of one micrograph's ``_extract.star`` (RELION 3.1 columns).

    ``rlnImageName`` is ``NNNNNN@stack_path`` with a 1-based, 6-digit index.
    """
    x = np.asarray(coordinates_x, dtype=np.float64)
    n = x.shape[0]
    return pd.DataFrame(
        {
            "rlnCoordinateX": x,
            "rlnCoordinateY": np.asarray(coordinates_y, dtype=np.float64),
            "rlnImageName": [f"{i:06d}@{stack_path}" for i in range(1, n + 1)],
            "rlnMicrographName": [micrograph_name] * n,
            "rlnOpticsGroup": np.ones(n, dtype=np.int64),
            "rlnCtfMaxResolution": np.full(n, ctf_max_resolution_angstrom),
            "rlnCtfFigureOfMerit": np.full(n, ctf_figure_of_merit),
            "rlnDefocusU": np.full(n, defocus_u_angstrom),
            "rlnDefocusV": np.full(n, defocus_v_angstrom),
            "rlnDefocusAngle": np.full(n, defocus_angle_degrees),
            "rlnCtfBfactor": np.zeros(n),
            "rlnCtfScalefactor": np.ones(n),
            "rlnPhaseShift": np.zeros(n),
        }
    )


def start_truth(path: Path) -> None:
    """Create ``truth.csv`` with its header only (atomically)."""
    with as_relion_does(path) as tmp:
        tmp.write_text(",".join(TRUTH_COLUMNS) + "\n", encoding="utf-8")


def append_truth(path: Path, rows: pd.DataFrame) -> None:
    """Append one micrograph's rows to ``truth.csv`` in a single write (NaN → empty field)."""
    text = rows.loc[:, list(TRUTH_COLUMNS)].to_csv(header=False, index=False, float_format="%.6f", na_rep="")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()


__all__ = [
    "TRUTH_COLUMNS",
    "append_truth",
    "as_relion_does",
    "extract_table",
    "optics_table",
    "start_truth",
    "write_stack",
    "write_star",
]
