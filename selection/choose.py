"""Which classes to keep: named by number, or chosen by their junk scores, then filtered.

Class numbers are RELION's (1-based, as the gallery and ``_model.star`` number them). With
``auto`` a class is kept when its effective junk score is at most the threshold — the same flags
the status page, the gallery and ``/metrics`` show. The scores are those stored in the snapshot
(``ClassSnapshot.junk_score``, read from ``rlnPredictedClassScore``) when it has them, otherwise
they are computed from the class averages (``otf2d.monitoring.quality.score_classes``). User overrides
go on top: a snapshot of an engine session honours those set on the session
(``<session>/class_overrides.json``, keyed by the engine's own class numbers and translated with
the snapshot's ``engine_class_of_snapshot_class``).

Then ``min_particles`` drops classes with fewer particles and ``max_resolution_angstrom`` drops
classes whose resolution is worse (a larger number, or unknown). Empty classes are never kept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError
from otf2d.core.snapshot import ClassSnapshot
from otf2d.monitoring.quality import (
    JUNK_SCORE_THRESHOLD,
    OVERRIDE_VALUES,
    SESSION_OVERRIDES_FILE,
    load_overrides,
    overrides_for_snapshot,
    score_classes,
)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ClassChoice:
    """The classes kept and why the others were not.

    Attributes
    ----------
    kept
        RELION class numbers (1-based) kept, ascending.
    dropped
        Class number → the reason it was not kept (every class not in ``kept``).
    dropped_kind
        Class number → the kind of reason: ``not asked for``, ``junk``, ``empty``,
        ``too few particles`` or ``resolution too poor``.
    junk_scores
        ``(K,)`` effective junk scores when they were used (``auto``), else ``None``.
    overrides
        Class number → ``"good"``/``"junk"``: the user overrides that applied.
    """

    kept: list[int]
    dropped: dict[int, str]
    dropped_kind: dict[int, str] = field(default_factory=dict)
    junk_scores: FloatArray | None = None
    overrides: dict[int, str] = field(default_factory=dict)

    def class_mask(self, n_classes: int) -> BoolArray:
        """``(K,)`` True for the kept classes."""
        mask = np.zeros(n_classes, dtype=bool)
        mask[np.asarray(self.kept, dtype=np.int64) - 1] = True
        return mask

    def particle_index(self, snapshot: ClassSnapshot) -> IntArray:
        """``(m,)`` positions (in snapshot order) of the particles in the kept classes."""
        mask = self.class_mask(snapshot.n_classes)
        return np.flatnonzero(mask[np.asarray(snapshot.particles.class_index, dtype=np.int64)]).astype(np.int64)


def parse_class_numbers(text: str) -> list[int]:
    """``"1,4,7"`` or ``"3-6,9"`` → sorted unique class numbers.

    Raises
    ------
    InputError
        Anything that is not a comma-separated list of positive integers or ranges ``a-b``.
    """
    numbers: set[int] = set()
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise InputError(None, f"--classes: {part!r} is not a class number or a range like 3-6") from None
        if low < 1 or high < low:
            raise InputError(None, f"--classes: {part!r} is not a class number (1, 2, ...) or a range low-high")
        numbers.update(range(low, high + 1))
    if not numbers:
        raise InputError(None, "--classes: no class numbers given (e.g. --classes 1,4,7)")
    return sorted(numbers)


def engine_overrides_for_snapshot(engine_overrides: Mapping[int, str], snapshot: ClassSnapshot) -> dict[int, str]:
    """Overrides keyed by the engine's class number (1-based) → keyed by the snapshot's class number.

    The engine's own translation (:func:`otf2d.monitoring.quality.overrides_for_snapshot` with
    :meth:`otf2d.core.snapshot.ClassSnapshot.engine_class_order`).
    """
    return overrides_for_snapshot(engine_overrides, snapshot.engine_class_order())


def session_overrides(snapshot_dir: str | os.PathLike[str], snapshot: ClassSnapshot) -> dict[int, str]:
    """The user overrides of the engine session a snapshot folder belongs to, in snapshot numbering.

    ``<snapshot_dir>/../class_overrides.json``; none when that file does not exist.

    Raises
    ------
    InputError
        The overrides file exists but is invalid (the message names it).
    """
    path = Path(snapshot_dir).parent / SESSION_OVERRIDES_FILE
    return engine_overrides_for_snapshot(load_overrides(path), snapshot) if path.is_file() else {}


def _junk_scores(
    snapshot: ClassSnapshot, overrides: Mapping[int, str], threshold: float
) -> tuple[FloatArray, dict[int, str], dict[int, str]]:
    """Effective ``(K,)`` scores, the overrides applied, and the main reason per junk class."""
    if snapshot.junk_score is None:
        report = score_classes(snapshot, overrides, threshold=threshold)
        reasons = {c: r[0] for c in range(1, snapshot.n_classes + 1) if (r := report.reasons(c - 1))}
        return report.effective_scores, dict(report.overrides), reasons
    scores = np.asarray(snapshot.junk_score, dtype=np.float64).copy()
    applied: dict[int, str] = {}
    for number, value in overrides.items():
        if value not in OVERRIDE_VALUES:
            raise InputError(None, f"override of class {number} is {value!r}, not one of {OVERRIDE_VALUES}")
        if 1 <= int(number) <= snapshot.n_classes:
            scores[int(number) - 1] = 1.0 if value == "junk" else 0.0
            applied[int(number)] = value
    reasons = {c: f"marked {v} by a user" for c, v in applied.items()}
    return scores, applied, {**dict.fromkeys(range(1, snapshot.n_classes + 1), "as stored in the snapshot"), **reasons}


def choose_classes(
    snapshot: ClassSnapshot,
    *,
    classes: Sequence[int] | None = None,
    auto: bool = False,
    min_particles: int = 1,
    max_resolution_angstrom: float | None = None,
    junk_threshold: float = JUNK_SCORE_THRESHOLD,
    overrides: Mapping[int, str] | None = None,
    source: str | os.PathLike[str] | None = None,
) -> ClassChoice:
    """Choose the classes to keep (see the module docstring).

    Parameters
    ----------
    snapshot
        Classes ``(K, h, w)`` with their particles.
    classes
        RELION class numbers (1-based) to keep; exclusive with ``auto``.
    auto
        Keep the classes whose effective junk score is at most ``junk_threshold``.
    min_particles
        Drop classes with fewer particles (empty classes are always dropped).
    max_resolution_angstrom
        Drop classes whose resolution is worse than this (Å), or unknown.
    junk_threshold
        Score above which a class is junk (``auto``).
    overrides
        Class number → ``"good"``/``"junk"``, applied on top of the scores (``auto``).
    source
        The file named in error messages (the snapshot's ``_model.star``).

    Returns
    -------
    ClassChoice
        The classes kept, with a reason for every other one.

    Raises
    ------
    InputError
        Both or neither of ``classes``/``auto``, a class number the snapshot does not have, or no
        class left after the filters (the message says which filter removed which classes).
    """
    k = snapshot.n_classes
    if (classes is None) == (not auto):
        raise InputError(source, "choose the classes either by number (--classes) or by junk score (--auto)")
    counts = np.bincount(np.asarray(snapshot.particles.class_index, dtype=np.int64), minlength=k)
    dropped: dict[int, str] = {}
    kinds: dict[int, str] = {}
    scores: FloatArray | None = None
    applied: dict[int, str] = {}
    if classes is not None:
        unknown = sorted({int(c) for c in classes if not 1 <= int(c) <= k})
        if unknown:
            raise InputError(source, f"class(es) {unknown} do not exist: this snapshot has classes 1..{k}")
        wanted = {int(c) for c in classes}
        for c in range(1, k + 1):
            if c not in wanted:
                dropped[c], kinds[c] = "not asked for", "not asked for"
    else:
        scores, applied, reasons = _junk_scores(snapshot, overrides or {}, junk_threshold)
        for c in range(1, k + 1):
            if scores[c - 1] > junk_threshold:
                dropped[c] = f"junk (score {scores[c - 1]:.2f}" + (f": {reasons[c]})" if c in reasons else ")")
                kinds[c] = "junk"
    resolution = np.asarray(snapshot.resolution_angstrom, dtype=np.float64)
    for c in range(1, k + 1):
        if c in dropped:
            continue
        n = int(counts[c - 1])
        if n == 0:
            dropped[c], kinds[c] = "empty", "empty"
        elif n < min_particles:
            dropped[c] = f"{n} particles < --min-particles {min_particles}"
            kinds[c] = "too few particles"
        elif max_resolution_angstrom is not None and not resolution[c - 1] <= max_resolution_angstrom:
            shown = f"{resolution[c - 1]:.1f} Å" if np.isfinite(resolution[c - 1]) else "unknown"
            dropped[c] = f"resolution {shown} worse than --max-resolution {max_resolution_angstrom:g} Å"
            kinds[c] = "resolution too poor"
    kept = [c for c in range(1, k + 1) if c not in dropped]
    if not kept:
        listed = [f"class {c}: {reason}" for c, reason in sorted(dropped.items())]
        more = f"; and {len(listed) - 8} more" if len(listed) > 8 else ""
        raise InputError(source, f"no class left to select ({'; '.join(listed[:8])}{more})")
    return ClassChoice(kept=kept, dropped=dropped, dropped_kind=kinds, junk_scores=scores, overrides=applied)


__all__ = [
    "SESSION_OVERRIDES_FILE",
    "ClassChoice",
    "choose_classes",
    "engine_overrides_for_snapshot",
    "parse_class_numbers",
    "session_overrides",
]
