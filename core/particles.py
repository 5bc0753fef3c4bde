"""Particles in memory: per-particle CTF parameters, stable keys, and the ``ParticleBatch``.

All CTF values are kept in RELION's units (defocus in Å, angles in degrees, voltage in kV,
Cs in mm, B-factor in Å²); the engine converts once, in its preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import BoxSizeMismatchError, InputError, NonFiniteError, PixelSizeError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: RELION's defaults for CTF values found neither in the particle row nor in its optics group
#: (``CTF::readValue``, ctf.cpp): 200 kV, Cs 0, Q0 0, angle 0, B 0, scale 1, phase shift 0.
#: DefocusV defaults to DefocusU, which the readers apply themselves.
RELION_CTF_DEFAULTS: dict[str, float] = {
    "voltage_kv": 200.0,
    "spherical_aberration_mm": 0.0,
    "amplitude_contrast": 0.0,
    "defocus_angle_degrees": 0.0,
    "bfactor_angstrom2": 0.0,
    "scale": 1.0,
    "phase_shift_degrees": 0.0,
}


@dataclass(frozen=True)
class CtfParams:
    """CTF parameters of ``n`` particles, each field a float64 array of shape ``(n,)``."""

    defocus_u_angstrom: FloatArray
    defocus_v_angstrom: FloatArray
    defocus_angle_degrees: FloatArray
    voltage_kv: FloatArray
    spherical_aberration_mm: FloatArray
    amplitude_contrast: FloatArray
    phase_shift_degrees: FloatArray
    bfactor_angstrom2: FloatArray
    scale: FloatArray

    def __post_init__(self) -> None:
        n = None
        for f in fields(self):
            value = np.ascontiguousarray(getattr(self, f.name), dtype=np.float64)
            if value.ndim != 1:
                raise InputError(None, f"CTF field {f.name} must be 1-D, got shape {value.shape}")
            if n is None:
                n = value.shape[0]
            elif value.shape[0] != n:
                raise InputError(None, f"CTF field {f.name} has {value.shape[0]} values, expected {n}")
            if not np.all(np.isfinite(value)):
                raise NonFiniteError(None, f"CTF field {f.name} contains NaN or Inf")
            object.__setattr__(self, f.name, value)

    def __len__(self) -> int:
        return int(self.defocus_u_angstrom.shape[0])

    @classmethod
    def uniform(cls, n: int, **values: float) -> CtfParams:
        """``n`` particles sharing the same values; unspecified fields take RELION's defaults.

        ``defocus_u_angstrom`` must be given; ``defocus_v_angstrom`` defaults to it.
        """
        if "defocus_u_angstrom" not in values:
            raise InputError(None, "CtfParams.uniform needs defocus_u_angstrom")
        merged = dict(RELION_CTF_DEFAULTS)
        merged["defocus_v_angstrom"] = values["defocus_u_angstrom"]
        merged.update(values)
        unknown = set(merged) - {f.name for f in fields(cls)}
        if unknown:
            raise InputError(None, f"unknown CTF fields: {sorted(unknown)}")
        return cls(**{k: np.full(n, v, dtype=np.float64) for k, v in merged.items()})

    def take(self, index: npt.ArrayLike) -> CtfParams:
        """The CTF parameters of the particles at ``index`` (integer array or slice-like)."""
        idx = np.asarray(index)
        return CtfParams(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @classmethod
    def concatenate(cls, parts: Sequence[CtfParams]) -> CtfParams:
        """Join several parameter sets end to end."""
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})


class ParticleKey(NamedTuple):
    """Stable identity of one particle: dedup on it at both ends of the wire."""

    session: str
    stack_path: str  #: relative to the project directory, as written in ``rlnImageName``
    image_index: int  #: 1-based, as in RELION (``index`` would shadow ``tuple.index``)


@dataclass(frozen=True)
class ParticleBatch:
    """A batch of particle images with everything needed to classify them.

    Attributes
    ----------
    images
        ``(n, h, w)`` float32 or float16, real space, in the stack's own contrast.
    pixel_size_angstrom
        Å per pixel of ``images`` (> 0).
    ctf
        Per-particle CTF parameters (RELION units).
    session
        Name of the collection session the particles belong to.
    stack_paths
        ``(n,)`` str: path of each particle's stack relative to the project directory.
    indices
        ``(n,)`` int64: 1-based index of each particle in its stack.
    optics_groups
        ``(n,)`` int64: 1-based optics group of each particle.
    """

    images: np.ndarray
    pixel_size_angstrom: float
    ctf: CtfParams
    session: str
    stack_paths: np.ndarray
    indices: IntArray
    optics_groups: IntArray

    def __post_init__(self) -> None:
        images = self.images
        if images.ndim != 3:
            raise InputError(None, f"images must be (n, h, w), got shape {images.shape}")
        if images.dtype not in (np.float32, np.float16):
            raise InputError(None, f"images must be float32 or float16, got {images.dtype}")
        n = images.shape[0]
        if not np.isfinite(self.pixel_size_angstrom) or self.pixel_size_angstrom <= 0:
            raise PixelSizeError(None, f"pixel size must be > 0 Å, got {self.pixel_size_angstrom}")
        stack_paths = np.asarray(self.stack_paths, dtype=str)
        indices = np.asarray(self.indices, dtype=np.int64)
        optics = np.asarray(self.optics_groups, dtype=np.int64)
        for name, arr in (("ctf", self.ctf), ("stack_paths", stack_paths), ("indices", indices)):
            if len(arr) != n:
                raise InputError(None, f"{name} has {len(arr)} entries for {n} images")
        if len(optics) != n:
            raise InputError(None, f"optics_groups has {len(optics)} entries for {n} images")
        if n and indices.min() < 1:
            raise InputError(None, "particle indices are 1-based; found an index below 1")
        object.__setattr__(self, "stack_paths", stack_paths)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "optics_groups", optics)
        object.__setattr__(self, "pixel_size_angstrom", float(self.pixel_size_angstrom))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def box_size(self) -> tuple[int, int]:
        """``(h, w)`` in pixels."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def keys(self) -> list[ParticleKey]:
        """The stable key of every particle, in order."""
        return [ParticleKey(self.session, str(p), int(i)) for p, i in zip(self.stack_paths, self.indices, strict=True)]

    def image_names(self) -> list[str]:
        """RELION ``rlnImageName`` of every particle: ``NNNNNN@stack``."""
        return [f"{int(i):06d}@{p}" for p, i in zip(self.stack_paths, self.indices, strict=True)]

    def check_finite(self, source: str | None = None) -> None:
        """Raise ``NonFiniteError`` naming the first bad particle if any pixel is NaN or Inf."""
        flat = self.images.reshape(len(self), -1)
        bad = ~np.isfinite(flat).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise NonFiniteError(
                source or self.stack_paths[i],
                f"image {self.indices[i]} of {self.stack_paths[i]} contains NaN or Inf pixels "
                f"({int(bad.sum())} bad image(s) in this batch)",
            )

    def take(self, index: npt.ArrayLike) -> ParticleBatch:
        """A new batch holding the particles at ``index``."""
        idx = np.asarray(index)
        return ParticleBatch(
            images=self.images[idx],
            pixel_size_angstrom=self.pixel_size_angstrom,
            ctf=self.ctf.take(idx),
            session=self.session,
            stack_paths=self.stack_paths[idx],
            indices=self.indices[idx],
            optics_groups=self.optics_groups[idx],
        )

    @classmethod
    def concatenate(cls, parts: Sequence[ParticleBatch]) -> ParticleBatch:
        """Join batches of one session with equal box and pixel size."""
        if not parts:
            raise InputError(None, "nothing to concatenate")
        first = parts[0]
        for p in parts[1:]:
            if p.box_size != first.box_size:
                raise BoxSizeMismatchError(
                    p.stack_paths[0] if len(p) else None,
                    f"box {p.box_size} differs from {first.box_size} of {first.stack_paths[0]}",
                )
            if not np.isclose(p.pixel_size_angstrom, first.pixel_size_angstrom, rtol=1e-4):
                raise PixelSizeError(
                    p.stack_paths[0] if len(p) else None,
                    f"pixel size {p.pixel_size_angstrom} Å differs from {first.pixel_size_angstrom} Å",
                )
            if p.session != first.session:
                raise InputError(None, f"sessions differ: {p.session!r} vs {first.session!r}")
        return cls(
            images=np.concatenate([p.images for p in parts]),
            pixel_size_angstrom=first.pixel_size_angstrom,
            ctf=CtfParams.concatenate([p.ctf for p in parts]),
            session=first.session,
            stack_paths=np.concatenate([p.stack_paths for p in parts]),
            indices=np.concatenate([p.indices for p in parts]),
            optics_groups=np.concatenate([p.optics_groups for p in parts]),
        )


__all__ = ["RELION_CTF_DEFAULTS", "CtfParams", "ParticleBatch", "ParticleKey"]
