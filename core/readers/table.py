"""The metadata-level particle table: everything about a set of particles except their pixels.

A ``ParticleTable`` is what every reader returns (RELION STAR, cryoSPARC ``.cs``); images are read
later, in chunks, by :mod:`otf2d.core.readers.loader`. Values are in RELION's units and conventions:
1-based indices and optics groups, CTF in Å / degrees / kV / mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError, MissingStackError
from otf2d.core.particles import CtfParams, ParticleKey
from otf2d.core.snapshot import OpticsGroup

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class Alignments2D:
    """2D alignments found in the input (RELION conventions), arrays of shape ``(n,)``.

    Attributes
    ----------
    psi_degrees
        In-plane angle (``rlnAnglePsi``; cryoSPARC ``alignments2D/pose`` converted from radians).
    origin_x_angstrom, origin_y_angstrom
        ``rlnOriginXAngst`` / ``rlnOriginYAngst`` (RELION 3.0 ``rlnOriginX/Y`` in pixels and cryoSPARC
        ``alignments2D/shift`` in pixels are multiplied by the pixel size). cryoSPARC shifts follow
        pyem's ``csparc2star`` mapping (same sign); that sign is not pinned here against images.
    class_index
        0-based class (``rlnClassNumber`` − 1, or cryoSPARC ``alignments2D/class``), or ``None``.
    """

    psi_degrees: FloatArray
    origin_x_angstrom: FloatArray
    origin_y_angstrom: FloatArray
    class_index: IntArray | None = None

    def take(self, index: npt.ArrayLike) -> Alignments2D:
        """The alignments of the particles at ``index``."""
        idx = np.asarray(index)
        return Alignments2D(
            psi_degrees=self.psi_degrees[idx],
            origin_x_angstrom=self.origin_x_angstrom[idx],
            origin_y_angstrom=self.origin_y_angstrom[idx],
            class_index=None if self.class_index is None else self.class_index[idx],
        )


@dataclass(frozen=True, eq=False)
class ParticleTable:
    """``n`` particles described by a metadata file, without their images.

    Attributes
    ----------
    source
        The metadata file that was read.
    project_dir
        Directory that ``stack_paths`` are relative to.
    session
        Session name used in particle keys (default: the project directory's name).
    stack_paths
        ``(n,)`` str: each particle's stack, as written in the file (RELION ``NNNNNN@path`` → ``path``;
        cryoSPARC ``blob/path`` without its leading ``>``).
    indices
        ``(n,)`` int64, 1-based index in the stack.
    ctf
        Per-particle CTF (RELION units), after RELION's lookup rule and any explicit overrides.
    optics_groups
        ``(n,)`` int64, 1-based optics group of each particle (a number in ``optics``).
    optics
        One entry per optics group.
    pixel_size_angstrom
        Å per pixel of the images (that of the first particle's optics group when groups differ;
        see ``pixel_sizes_angstrom``).
    box_size
        Image side in pixels; 0 when the metadata does not say and no stack could be opened.
    micrograph_names
        ``(n,)`` str, or ``None`` when the file records none.
    alignments
        2D alignments present in the input, or ``None``.
    has_ctf
        ``False`` when the file holds no defocus at all (e.g. noise-free projections); ``ctf`` then
        holds defocus 0 and RELION's defaults.
    format
        Which reader produced the table: ``relion``, ``relion30``, ``relion-extract`` or ``cryosparc``.
    stack_search_dirs
        Further directories where a stack is looked up by its base name when
        ``project_dir / stack_path`` does not exist (cryoSPARC: the ``.cs`` file's directory).
    """

    source: Path
    project_dir: Path
    session: str
    stack_paths: np.ndarray
    indices: IntArray
    ctf: CtfParams
    optics_groups: IntArray
    optics: list[OpticsGroup]
    pixel_size_angstrom: float
    box_size: int
    micrograph_names: np.ndarray | None = None
    alignments: Alignments2D | None = None
    has_ctf: bool = True
    format: str = "relion"
    stack_search_dirs: tuple[Path, ...] = field(default=())

    def __post_init__(self) -> None:
        stack_paths = np.asarray(self.stack_paths, dtype=str)
        indices = np.asarray(self.indices, dtype=np.int64)
        groups = np.asarray(self.optics_groups, dtype=np.int64)
        n = len(indices)
        lengths = {"stack_paths": len(stack_paths), "ctf": len(self.ctf), "optics_groups": len(groups)}
        if self.micrograph_names is not None:
            lengths["micrograph_names"] = len(self.micrograph_names)
        for name, length in lengths.items():
            if length != n:
                raise InputError(self.source, f"{name} has {length} entries for {n} particles")
        if n and indices.min() < 1:
            raise InputError(self.source, "particle indices are 1-based; found an index below 1")
        known = {g.number for g in self.optics}
        unknown = sorted(set(np.unique(groups).tolist()) - known)
        if unknown:
            raise InputError(self.source, f"particles refer to optics groups {unknown} that are not defined")
        object.__setattr__(self, "stack_paths", stack_paths)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "optics_groups", groups)
        if self.micrograph_names is not None:
            object.__setattr__(self, "micrograph_names", np.asarray(self.micrograph_names, dtype=str))

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def take(self, index: npt.ArrayLike | slice) -> ParticleTable:
        """A table of the particles at ``index`` (integer array, boolean mask or slice)."""
        idx = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(
            stack_paths=self.stack_paths[idx],
            indices=self.indices[idx],
            ctf=self.ctf.take(idx),
            optics_groups=self.optics_groups[idx],
            micrograph_names=None if self.micrograph_names is None else self.micrograph_names[idx],
            alignments=None if self.alignments is None else self.alignments.take(idx),
        )
        return ParticleTable(**values)

    def optics_group(self, number: int) -> OpticsGroup:
        """The optics group numbered ``number`` (1-based)."""
        for group in self.optics:
            if group.number == number:
                return group
        raise InputError(self.source, f"no optics group {number}")

    @property
    def pixel_sizes_angstrom(self) -> FloatArray:
        """``(n,)`` pixel size of each particle's images, from its optics group (Å)."""
        lookup = {g.number: g.image_pixel_size_angstrom for g in self.optics}
        return np.array([lookup[int(g)] for g in self.optics_groups], dtype=np.float64)

    def keys(self) -> list[ParticleKey]:
        """The stable key ``(session, stack path, 1-based index)`` of every particle."""
        return [ParticleKey(self.session, str(p), int(i)) for p, i in zip(self.stack_paths, self.indices, strict=True)]

    def image_names(self) -> list[str]:
        """RELION ``rlnImageName`` of every particle: ``NNNNNN@stack``."""
        return [f"{int(i):06d}@{p}" for p, i in zip(self.stack_paths, self.indices, strict=True)]

    def candidate_paths(self, stack_path: str) -> list[Path]:
        """Where ``stack_path`` is looked for, in order."""
        candidates = [self.project_dir / stack_path]
        name = Path(stack_path).name
        candidates += [d / name for d in self.stack_search_dirs if d / name not in candidates]
        return candidates

    def find_stack(self, stack_path: str) -> Path | None:
        """The file holding ``stack_path``, or ``None`` when it exists nowhere we look."""
        for candidate in self.candidate_paths(stack_path):
            if candidate.is_file():
                return candidate
        return None

    def resolve_stack(self, stack_path: str) -> Path:
        """The file holding ``stack_path``.

        Raises
        ------
        MissingStackError
            Naming the stack, this table's metadata file and every place looked in.
        """
        found = self.find_stack(stack_path)
        if found is None:
            looked = ", ".join(str(c) for c in self.candidate_paths(stack_path))
            raise MissingStackError(
                self.source,
                f"stack {stack_path!r} referenced by this file was not found (looked at {looked})",
            )
        return found


__all__ = ["Alignments2D", "ParticleTable"]
