"""Class quality as the snapshot files carry it: each class's junk score, junk flag and user override.

A snapshot is *scored* when ``ClassSnapshot.junk_score`` is set: the effective ``(K,)`` scores in
[0, 1] with user overrides applied (1 for a class a user marked junk, 0 for one marked good), as
``otf2d.monitoring.quality.with_junk_scores`` makes it. ``ClassSnapshot.junk_score_threshold`` is the
score above which a class is junk (unrecorded: ``otf2d.core.snapshot.DEFAULT_JUNK_SCORE_THRESHOLD``), and
one entry of ``snapshot.parameters`` completes it (optional, written by ``with_junk_scores``):

``class_overrides`` (:data:`OVERRIDES_PARAMETER`)
    ``{"3": "junk", ...}``: the user overrides, keyed by the snapshot's class number (1-based).

The writers put them in the files (see ``otf2d.monitoring.snapshots.relion`` and
``otf2d.monitoring.snapshots.cryosparc``); an unscored snapshot is written without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from otf2d.core.errors import InputError
from otf2d.core.snapshot import ClassSnapshot

#: ``snapshot.parameters`` key of the user overrides (snapshot class number → ``"good"``/``"junk"``).
OVERRIDES_PARAMETER = "class_overrides"
#: Override values a file can carry: none, or what a user said.
OVERRIDE_LABELS = ("", "good", "junk")


@dataclass(frozen=True)
class ClassQualityColumns:
    """Per-class quality of a scored snapshot.

    Attributes
    ----------
    junk_score
        ``(K,)`` float64 effective junk score in [0, 1] (overrides applied).
    is_junk
        ``(K,)`` bool: score above ``threshold``.
    override
        ``(K,)`` str: ``""`` (no override), ``"good"`` or ``"junk"``.
    threshold
        The junk-score threshold.
    """

    junk_score: npt.NDArray[np.float64]
    is_junk: npt.NDArray[np.bool_]
    override: npt.NDArray[np.str_]
    threshold: float


def _overrides(parameters: Mapping[str, Any], k: int) -> npt.NDArray[np.str_]:
    out = np.full(k, "", dtype="<U4")
    given = parameters.get(OVERRIDES_PARAMETER) or {}
    if not isinstance(given, Mapping):
        raise InputError(None, f"snapshot parameter {OVERRIDES_PARAMETER!r} must map class numbers to good/junk")
    for key, value in given.items():
        try:
            number = int(key)
        except (TypeError, ValueError) as exc:
            raise InputError(None, f"class override key {key!r} is not a class number") from exc
        if value not in OVERRIDE_LABELS[1:]:
            raise InputError(None, f"override of class {number} is {value!r}, not 'good' or 'junk'")
        if 1 <= number <= k:
            out[number - 1] = value
    return out


def class_quality_columns(snapshot: ClassSnapshot) -> ClassQualityColumns | None:
    """The quality columns of a scored snapshot; ``None`` when ``snapshot.junk_score`` is unset.

    Raises
    ------
    InputError
        A junk score that is not ``(K,)`` finite values in [0, 1], or invalid overrides in the parameters.
    """
    if snapshot.junk_score is None:
        return None
    k = snapshot.n_classes
    scores = np.asarray(snapshot.junk_score, dtype=np.float64)
    if scores.shape != (k,):
        raise InputError(None, f"junk_score must have shape ({k},), got {scores.shape}")
    if not (np.isfinite(scores).all() and (scores >= 0.0).all() and (scores <= 1.0).all()):
        raise InputError(None, "junk_score must hold finite values in [0, 1]")
    threshold = snapshot.effective_junk_threshold
    return ClassQualityColumns(
        junk_score=scores,
        is_junk=np.asarray(scores > threshold),
        override=_overrides(snapshot.parameters, k),
        threshold=threshold,
    )


__all__ = [
    "OVERRIDES_PARAMETER",
    "OVERRIDE_LABELS",
    "ClassQualityColumns",
    "class_quality_columns",
]
