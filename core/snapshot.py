"""Snapshots of the classification state as plain numpy: what the engine hands to ``monitoring``.

The engine turns its tensors into these types; ``otf2d.monitoring.snapshots`` writes them as RELION
Class2D output, a cryoSPARC ``.cs`` and a PNG gallery. Conventions: classes are 0-based here
(writers add 1 where a format is 1-based); angles in degrees; shifts in Å, following RELION's
``rlnOriginXAngst``/``rlnOriginYAngst`` (the shift that centres the particle).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError
from otf2d.core.extra_columns import ExtraColumns
from otf2d.core.particles import CtfParams

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class OpticsGroup:
    """One row of RELION's ``data_optics``."""

    number: int  #: 1-based ``rlnOpticsGroup``
    name: str
    voltage_kv: float
    spherical_aberration_mm: float
    amplitude_contrast: float
    image_pixel_size_angstrom: float
    image_size: int


@dataclass(frozen=True)
class AssignmentRecord:
    """What the classifier says of ``n`` particles, each field ``(n,)``: one record from the E-step (the
    engine's classifier port) through the journal to the snapshot (:class:`ParticleAssignments` is one,
    with the particles' keys).

    ``class_index`` (int64) is 0-based. ``psi_degrees`` is RELION's ``rlnAnglePsi``; ``origin_x_angstrom``
    / ``origin_y_angstrom`` are ``rlnOriginXAngst`` / ``rlnOriginYAngst``. ``pmax`` is the posterior of the
    chosen (class, pose), ``class_posterior`` that of the chosen class, ``class_ess`` the effective number
    of classes ``1 / Σ p_k²``, ``n_significant`` (int64) the samples with at least 0.1 % of ``pmax``,
    ``log_likelihood`` that of the chosen sample.

    The E-step's statistics at the chosen sample, each ``None`` when unknown (NaN entries: unknown
    for that particle): ``scale`` the per-particle scale α (1 when it is off), ``image_power``
    ``‖X‖²_ω``, ``cross_term`` ``2·Re⟨X, C·A⟩_ω`` and ``norm_term`` ``‖C·A‖²_ω`` (whitened units, at
    scale 1), with ``−log_likelihood = image_power − α·cross_term + α²·norm_term``.

    Raises
    ------
    ValueError
        Fields of different lengths.
    """

    class_index: IntArray
    psi_degrees: FloatArray
    origin_x_angstrom: FloatArray
    origin_y_angstrom: FloatArray
    pmax: FloatArray
    class_posterior: FloatArray
    class_ess: FloatArray
    n_significant: IntArray
    log_likelihood: FloatArray
    scale: FloatArray | None = None
    image_power: FloatArray | None = None
    cross_term: FloatArray | None = None
    norm_term: FloatArray | None = None

    def __post_init__(self) -> None:
        n = len(self.class_index)
        for name in ASSIGNMENT_ARRAYS + self.known_optional():
            if len(getattr(self, name)) != n:
                raise ValueError(f"assignments: {name} has {len(getattr(self, name))} entries, not {n}")

    def __len__(self) -> int:
        return len(self.class_index)

    def known_optional(self) -> tuple[str, ...]:
        """The names of :data:`OPTIONAL_PER_PARTICLE_ARRAYS` that are not ``None``."""
        return tuple(name for name in OPTIONAL_PER_PARTICLE_ARRAYS if getattr(self, name) is not None)


#: What the classifier says of each particle: the fields of :class:`AssignmentRecord` that are always
#: known (the journal's assignment columns).
ASSIGNMENT_ARRAYS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(AssignmentRecord) if f.default is dataclasses.MISSING
)
#: The per-particle array fields of :class:`ParticleAssignments` besides ``indices`` (and ``ctf``,
#: ``micrograph_names``): each as long as ``indices``.
PER_PARTICLE_ARRAYS: tuple[str, ...] = ("stack_paths", "optics_groups", *ASSIGNMENT_ARRAYS)

#: The optional fields of :class:`AssignmentRecord` (``None`` when unknown, e.g. in a journal or snapshot
#: written before they existed): the E-step's whitened-unit statistics.
OPTIONAL_PER_PARTICLE_ARRAYS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(AssignmentRecord) if f.default is not dataclasses.MISSING
)


@dataclass(frozen=True, kw_only=True)
class ParticleAssignments(AssignmentRecord):
    """Every particle with its latest class and alignment (arrays of shape ``(n,)``): an
    :class:`AssignmentRecord` with each particle's key (``stack_paths``, ``indices``), optics group and
    CTF, and optionally its micrograph. ``extra`` holds every column of the input's particle rows
    (:mod:`otf2d.core.extra_columns`), written back by the snapshot writers, or ``None``.
    """

    stack_paths: np.ndarray
    indices: IntArray
    optics_groups: IntArray
    ctf: CtfParams
    micrograph_names: np.ndarray | None = None
    extra: ExtraColumns | None = None

    def __post_init__(self) -> None:
        n = len(self.indices)
        for name in PER_PARTICLE_ARRAYS + self.known_optional():
            if len(getattr(self, name)) != n:
                raise InputError(None, f"assignments: {name} has {len(getattr(self, name))} entries, not {n}")
        if len(self.ctf) != n:
            raise InputError(None, f"assignments: ctf has {len(self.ctf)} entries, not {n}")
        if self.extra is not None and len(self.extra) != n:
            raise InputError(None, f"assignments: extra columns have {len(self.extra)} rows, not {n}")

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, index: npt.ArrayLike) -> ParticleAssignments:
        """The particles at positions ``index`` (an integer array), in that order."""
        idx = np.asarray(index, dtype=np.int64)
        names = PER_PARTICLE_ARRAYS + self.known_optional()
        changes: dict[str, Any] = {name: np.asarray(getattr(self, name))[idx] for name in names}
        changes["indices"] = np.asarray(self.indices)[idx]
        changes["ctf"] = self.ctf.take(idx)
        if self.micrograph_names is not None:
            changes["micrograph_names"] = np.asarray(self.micrograph_names)[idx]
        if self.extra is not None:
            changes["extra"] = self.extra.take(idx)
        return dataclasses.replace(self, **changes)

    def image_names(self) -> list[str]:
        """RELION ``rlnImageName`` of every particle."""
        return [f"{int(i):06d}@{p}" for p, i in zip(self.stack_paths, self.indices, strict=True)]


#: ``parameters`` key (and ``_otf2d.json`` key) of :attr:`ClassSnapshot.engine_class_of_snapshot_class`.
ENGINE_ORDER_PARAMETER = "engine_class_of_snapshot_class"
#: ``parameters`` key (and ``_otf2d.json`` key) of :attr:`ClassSnapshot.junk_score_threshold`.
JUNK_THRESHOLD_PARAMETER = "junk_score_threshold"
#: The junk-score threshold of a scored snapshot that does not record one.
DEFAULT_JUNK_SCORE_THRESHOLD = 0.5


def _engine_order(value: Any, k: int) -> tuple[int, ...] | None:
    """A permutation of ``0..k-1`` as a tuple, or ``None`` when ``value`` is not one."""
    if not isinstance(value, list | tuple | np.ndarray) or len(value) != k:
        return None
    try:
        order = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        return None
    return order if sorted(order) == list(range(k)) else None


def junk_threshold(value: Any) -> float:
    """``value`` as a junk-score threshold in [0, 1], or a refusal naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise InputError(
            None, f"snapshot parameter {JUNK_THRESHOLD_PARAMETER!r} must be a number in [0, 1], got {value!r}"
        )
    return float(value)


@dataclass(frozen=True)
class ClassSnapshot:
    """The classes and every particle's assignment at one moment.

    Attributes
    ----------
    averages
        ``(K, h, w)`` float32 class averages, real space, at ``pixel_size_angstrom``.
    particle_counts
        ``(K,)`` particles currently assigned to each class (hard assignment).
    resolution_angstrom
        ``(K,)`` estimated resolution of each class (``inf`` when unknown).
    accuracy_rotations_degrees, accuracy_translations_angstrom
        ``(K,)`` RELION's ``rlnAccuracyRotations`` / ``rlnAccuracyTranslationsAngst``.
    iteration
        Snapshot counter, written as ``run_itNNN``.
    parameters
        The classification parameters (recorded for reproducibility).
    junk_score
        ``(K,)`` effective junk scores in [0, 1] (overrides applied), when class quality has been scored.
    engine_class_of_snapshot_class
        The engine class (0-based) shown as snapshot class ``i + 1`` (snapshot classes are sorted by
        size), a permutation of ``0..K-1``; ``None``: the engine's own order.
    junk_score_threshold
        The score above which a class is junk, recorded with ``junk_score`` (``None``: unrecorded,
        :data:`DEFAULT_JUNK_SCORE_THRESHOLD` applies).

    The last two travelled in ``parameters`` under :data:`ENGINE_ORDER_PARAMETER` and
    :data:`JUNK_THRESHOLD_PARAMETER`, and ``_otf2d.json`` keeps them there: given in ``parameters``, they
    are taken out into the fields at construction (an order that is not a permutation of the classes
    reads as ``None``, as it always did), and :meth:`recorded_parameters` puts them back for writing.
    """

    averages: np.ndarray
    pixel_size_angstrom: float
    particle_counts: IntArray
    resolution_angstrom: FloatArray
    accuracy_rotations_degrees: FloatArray
    accuracy_translations_angstrom: FloatArray
    iteration: int
    optics: list[OpticsGroup]
    particles: ParticleAssignments
    original_image_size: int
    parameters: dict[str, Any] = field(default_factory=dict)
    junk_score: FloatArray | None = None
    engine_class_of_snapshot_class: tuple[int, ...] | None = None
    junk_score_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.averages.ndim != 3:
            raise InputError(None, f"class averages must be (K, h, w), got {self.averages.shape}")
        k = self.averages.shape[0]
        self._take_typed_parameters(k)
        for name in (
            "particle_counts",
            "resolution_angstrom",
            "accuracy_rotations_degrees",
            "accuracy_translations_angstrom",
        ):
            if len(getattr(self, name)) != k:
                raise InputError(None, f"snapshot: {name} has {len(getattr(self, name))} entries, not {k}")
        if len(self.particles) and (self.particles.class_index.min() < 0 or self.particles.class_index.max() >= k):
            raise InputError(None, f"snapshot: a particle's class is outside 0..{k - 1}")

    def _take_typed_parameters(self, k: int) -> None:
        """Move the typed fields' ``parameters`` keys into the fields (a key given there wins) and check them."""
        parameters = dict(self.parameters)
        order = self.engine_class_of_snapshot_class
        if ENGINE_ORDER_PARAMETER in parameters:
            order = _engine_order(parameters.pop(ENGINE_ORDER_PARAMETER), k)
        elif order is not None:
            checked = _engine_order(order, k)
            if checked is None:
                raise InputError(
                    None, f"snapshot: engine_class_of_snapshot_class {order!r} is not a permutation of 0..{k - 1}"
                )
            order = checked
        threshold = self.junk_score_threshold
        if JUNK_THRESHOLD_PARAMETER in parameters:
            threshold = parameters.pop(JUNK_THRESHOLD_PARAMETER)
        threshold = None if threshold is None else junk_threshold(threshold)
        object.__setattr__(self, "parameters", parameters)
        object.__setattr__(self, "engine_class_of_snapshot_class", order)
        object.__setattr__(self, "junk_score_threshold", threshold)

    def recorded_parameters(self) -> dict[str, Any]:
        """``parameters`` with the typed fields under their keys, as ``_otf2d.json`` records them."""
        recorded = dict(self.parameters)
        if self.engine_class_of_snapshot_class is not None:
            recorded[ENGINE_ORDER_PARAMETER] = list(self.engine_class_of_snapshot_class)
        if self.junk_score_threshold is not None:
            recorded[JUNK_THRESHOLD_PARAMETER] = self.junk_score_threshold
        return recorded

    def engine_class_order(self) -> list[int]:
        """Engine class (0-based) of each snapshot class: ``order[i]`` is the engine class shown as ``i + 1``."""
        order = self.engine_class_of_snapshot_class
        return list(order) if order is not None else list(range(self.n_classes))

    @property
    def effective_junk_threshold(self) -> float:
        """:attr:`junk_score_threshold`, or :data:`DEFAULT_JUNK_SCORE_THRESHOLD` when unrecorded."""
        t = self.junk_score_threshold
        return t if t is not None else DEFAULT_JUNK_SCORE_THRESHOLD

    @property
    def n_classes(self) -> int:
        return int(self.averages.shape[0])

    @property
    def class_distribution(self) -> FloatArray:
        """Fraction of particles in each class (RELION's ``rlnClassDistribution``)."""
        counts = np.asarray(self.particle_counts, dtype=np.float64)
        total = counts.sum()
        return counts / total if total > 0 else np.zeros_like(counts)


__all__ = [
    "ASSIGNMENT_ARRAYS",
    "DEFAULT_JUNK_SCORE_THRESHOLD",
    "ENGINE_ORDER_PARAMETER",
    "JUNK_THRESHOLD_PARAMETER",
    "OPTIONAL_PER_PARTICLE_ARRAYS",
    "PER_PARTICLE_ARRAYS",
    "AssignmentRecord",
    "ClassSnapshot",
    "OpticsGroup",
    "ParticleAssignments",
    "junk_threshold",
]
