"""Pieces the readers share: RELION's CTF labels, explicit overrides, and header fallbacks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError, PixelSizeError
from otf2d.core.readers.stacks import StackHeader, read_stack_header

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: CtfParams field → RELION label, in the order RELION's ``CTF::read`` looks them up.
CTF_LABELS: dict[str, str] = {
    "defocus_u_angstrom": "rlnDefocusU",
    "defocus_v_angstrom": "rlnDefocusV",
    "defocus_angle_degrees": "rlnDefocusAngle",
    "voltage_kv": "rlnVoltage",
    "spherical_aberration_mm": "rlnSphericalAberration",
    "amplitude_contrast": "rlnAmplitudeContrast",
    "phase_shift_degrees": "rlnPhaseShift",
    "bfactor_angstrom2": "rlnCtfBfactor",
    "scale": "rlnCtfScalefactor",
}
#: The values a per-micrograph ``_extract.star`` cannot supply itself.
OPTICS_FIELDS = ("voltage_kv", "spherical_aberration_mm", "amplitude_contrast")


@dataclass(frozen=True)
class OpticsOverrides:
    """Values given explicitly by the caller; each one, when set, wins over the file for every particle."""

    pixel_size_angstrom: float | None = None
    voltage_kv: float | None = None
    spherical_aberration_mm: float | None = None
    amplitude_contrast: float | None = None

    def __post_init__(self) -> None:
        px = self.pixel_size_angstrom
        if px is not None and not (np.isfinite(px) and px > 0):
            raise PixelSizeError(None, f"pixel_size_angstrom must be > 0, got {px}")
        for name, value in self.ctf_values().items():
            if not np.isfinite(value) or (name == "voltage_kv" and value <= 0):
                raise InputError(None, f"{name} must be a finite number{' > 0' * (name == 'voltage_kv')}, got {value}")

    def ctf_values(self) -> dict[str, float]:
        """The CTF fields that are set."""
        return {name: float(getattr(self, name)) for name in OPTICS_FIELDS if getattr(self, name) is not None}

    def apply(self, source: Path, values: dict[str, FloatArray]) -> None:
        """Overwrite the CTF arrays in ``values`` (by field name) with the set overrides, in place."""
        for name, value in self.ctf_values().items():
            current = values[name]
            if len(current) and not np.allclose(current, value, rtol=1e-4):
                log.warning(
                    "%s: %s=%g given explicitly overrides the file's %s",
                    source,
                    name,
                    value,
                    np.unique(current),
                )
            values[name] = np.full(len(current), value, dtype=np.float64)


def first_header(candidates: list[Path], referenced_by: Path, *, limit: int = 8) -> StackHeader | None:
    """Header of the first existing, readable stack among ``candidates`` (at most ``limit`` tried).

    Used for box and pixel size only, so the file size is not checked: a stack still being written
    already has a usable header. Loading checks it.
    """
    for path in candidates[:limit]:
        if not path.is_file():
            continue
        try:
            return read_stack_header(path, referenced_by=referenced_by, check_size=False)
        except InputError as exc:
            log.debug("cannot use %s for header fallbacks: %s", path, exc)
    return None


def resolve_pixel_size(
    source: Path,
    from_metadata: float | None,
    override: float | None,
    header: StackHeader | None,
    *,
    what: str,
) -> float:
    """Pick the pixel size: explicit value, else metadata, else a non-zero header value.

    Raises
    ------
    PixelSizeError
        When none of them gives a value > 0; the message says where it looked.
    """
    meta = from_metadata if from_metadata is not None and np.isfinite(from_metadata) and from_metadata > 0 else None
    if override is not None:
        if meta is not None and not np.isclose(meta, override, rtol=1e-3):
            log.warning("%s: pixel size %g Å given explicitly overrides the file's %g Å", source, override, meta)
        return float(override)
    if meta is not None:
        return float(meta)
    if header is not None and header.voxel_size_angstrom > 0:
        log.info("%s: pixel size %g Å taken from the header of %s", source, header.voxel_size_angstrom, header.path)
        return header.voxel_size_angstrom
    header_note = (
        f"the header of {header.path} has voxel size 0" if header is not None else "no stack header could be read"
    )
    raise PixelSizeError(
        source,
        f"no pixel size for {what}: not in the metadata, {header_note}; "
        "pass pixel_size_angstrom (--pixel-size on the command line)",
    )


__all__ = ["CTF_LABELS", "OPTICS_FIELDS", "OpticsOverrides", "first_header", "resolve_pixel_size"]
