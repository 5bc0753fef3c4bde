"""The grid verdict: collect / marginal / abandon (or pending), with a confidence and reasons in words.

The people at the microscope have to decide whether a grid is worth the microscope's time. The
verdict combines four criteria, each judged against two thresholds of
:class:`otf2d.core.config.VerdictConfig` (the ``[verdict]`` section of the configuration):

=================  ==========================================  ==============================
criterion          value                                       marginal / abandon at or above
=================  ==========================================  ==============================
junk               fraction of particles in junk classes       0.4 / 0.7
views              share of good particles in the largest      0.6 / 0.85 (and fewer than
                   view (and the number of distinct views)     ``min_views`` views: marginal)
rate               forecast hours to ``target_good_particles`` 24 h / 72 h
resolution         best resolution of a good class             30 Å / 50 Å
=================  ==========================================  ==============================

The verdict is the worst criterion (abandon > marginal > collect); a criterion that cannot be
judged yet (no rate before a minute of history, no resolution) is skipped and lowers the
confidence. Below ``min_particles`` classified particles the verdict is ``pending``.

Confidence (0–1) is the product of three factors, each explained in :func:`grid_verdict`:
the sample size (0.5 at ``min_particles`` → 1 at ``confident_particles``), the margin of the
deciding criteria from their thresholds (0.5 on a threshold → 1 well clear of it) and 0.9 per
criterion that could not be judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from otf2d.core.config import VerdictConfig
from otf2d.core.durations import format_in_words

#: Verdict states, in the order of the ``otf2d_verdict`` metric.
VERDICT_STATES: tuple[str, ...] = ("pending", "collect", "marginal", "abandon")
#: Criterion status → verdict it leads to.
_STATUS_VERDICT = {"ok": "collect", "marginal": "marginal", "bad": "abandon"}
_SEVERITY = {"bad": 3, "marginal": 2, "ok": 1, "unknown": 0}
#: Confidence factor per criterion that could not be judged.
UNKNOWN_FACTOR = 0.9


@dataclass(frozen=True)
class GridNumbers:
    """The numbers a verdict is computed from (all from one monitoring state).

    Attributes
    ----------
    particles
        Particles classified so far.
    junk_fraction
        Fraction of particles in junk classes, in [0, 1].
    good_particles
        Particles in good classes.
    good_per_second
        Good particles per second over the recent window; ``None`` when not known yet.
    distinct_views
        Number of distinct views among the good classes.
    largest_view_share
        Fraction of good particles in the most populated view, in [0, 1].
    best_resolution_angstrom
        Best resolution of a good class; ``None`` when unknown.
    """

    particles: int
    junk_fraction: float
    good_particles: int
    good_per_second: float | None
    distinct_views: int
    largest_view_share: float
    best_resolution_angstrom: float | None = None


@dataclass(frozen=True)
class Criterion:
    """One criterion as judged: ``status`` ∈ ok / marginal / bad / unknown, with its reason in words.

    ``margin`` in [0, 1] says how clearly the value sits inside its band (0 = on a threshold).
    """

    name: str
    status: str
    value: float | None
    margin: float
    reason: str


@dataclass(frozen=True)
class Verdict:
    """The grid verdict.

    Attributes
    ----------
    state
        ``pending``, ``collect``, ``marginal`` or ``abandon``.
    confidence
        In [0, 1].
    reasons
        Reasons in words, the deciding ones first.
    criteria
        Every criterion as judged.
    """

    state: str
    confidence: float
    reasons: list[str]
    criteria: list[Criterion] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON."""
        return {
            "state": self.state,
            "confidence": round(self.confidence, 4),
            "reasons": list(self.reasons),
            "criteria": [
                {
                    "name": c.name,
                    "status": c.status,
                    "value": c.value if c.value is None or math.isfinite(c.value) else None,
                    "margin": round(c.margin, 4),
                    "reason": c.reason,
                }
                for c in self.criteria
            ],
        }


def forecast_seconds(good_particles: int, good_per_second: float | None, target: int) -> float:
    """Seconds until ``target`` good particles at the current rate.

    Returns
    -------
    float
        0 once the target is reached; ``inf`` when the rate is unknown or not positive.
    """
    missing = target - good_particles
    if missing <= 0:
        return 0.0
    if good_per_second is None or not good_per_second > 0:
        return math.inf
    return missing / good_per_second


def _band(value: float, marginal: float, bad: float, scale: float) -> tuple[str, float]:
    """Status of ``value`` against thresholds where larger is worse, and its margin in [0, 1]."""
    if value >= bad:
        status, distance = "bad", value - bad
    elif value >= marginal:
        status, distance = "marginal", min(value - marginal, bad - value)
    else:
        status, distance = "ok", marginal - value
    return status, float(min(1.0, distance / scale)) if scale > 0 else 1.0


def _junk(numbers: GridNumbers, cfg: VerdictConfig) -> Criterion:
    status, margin = _band(numbers.junk_fraction, cfg.junk_fraction_marginal, cfg.junk_fraction_abandon, 0.15)
    return Criterion("junk", status, numbers.junk_fraction, margin, f"{numbers.junk_fraction:.0%} junk")


def _views(numbers: GridNumbers, cfg: VerdictConfig) -> Criterion:
    v, share = numbers.distinct_views, numbers.largest_view_share
    if v == 0:
        return Criterion("views", "bad", 0.0, 1.0, "no good view yet")
    status, margin = _band(share, cfg.largest_view_share_marginal, cfg.largest_view_share_abandon, 0.15)
    if v < cfg.min_views and status == "ok":
        status = "marginal"
        margin = (cfg.min_views - v) / (cfg.min_views - 1) if cfg.min_views > 1 else 1.0
    if v == 1:
        reason = "1 view holds all good particles"
    else:
        reason = f"{v} distinct views, one holds {share:.0%} of good particles"
    return Criterion("views", status, share, margin, reason)


def _rate(numbers: GridNumbers, cfg: VerdictConfig) -> Criterion:
    target = cfg.target_good_particles
    if numbers.good_per_second is None:
        return Criterion("rate", "unknown", None, 0.0, "good-particle rate not known yet")
    seconds = forecast_seconds(numbers.good_particles, numbers.good_per_second, target)
    per_hour = numbers.good_per_second * 3600.0
    if seconds == 0.0:
        return Criterion("rate", "ok", 0.0, 1.0, f"good particles at {per_hour:,.0f}/h: {target:,} reached")
    hours = seconds / 3600.0
    status, margin = _band(hours, cfg.target_hours_marginal, cfg.target_hours_abandon, cfg.target_hours_marginal / 2)
    reason = f"good particles at {per_hour:,.0f}/h: {target:,} in {format_in_words(seconds)}"
    return Criterion("rate", status, hours, margin, reason)


def _resolution(numbers: GridNumbers, cfg: VerdictConfig) -> Criterion:
    res = numbers.best_resolution_angstrom
    if res is None or not math.isfinite(res):
        return Criterion("resolution", "unknown", None, 0.0, "class resolution not known yet")
    status, margin = _band(res, cfg.resolution_marginal_angstrom, cfg.resolution_abandon_angstrom, 5.0)
    return Criterion("resolution", status, res, margin, f"best good class at {res:.0f} Å")


def sample_factor(particles: int, cfg: VerdictConfig) -> float:
    """Confidence factor from the sample size: 0.5 at ``min_particles``, linear to 1 at ``confident_particles``."""
    span = cfg.confident_particles - cfg.min_particles
    fraction = 1.0 if span <= 0 else (particles - cfg.min_particles) / span
    return 0.5 + 0.5 * min(1.0, max(0.0, fraction))


def grid_verdict(numbers: GridNumbers, cfg: VerdictConfig | None = None) -> Verdict:
    """Judge a grid from its monitoring numbers.

    Parameters
    ----------
    numbers
        Junk fraction, good-particle rate, views and resolution (see :class:`GridNumbers`).
    cfg
        Thresholds (default :class:`VerdictConfig`).

    Returns
    -------
    Verdict
        ``pending`` below ``min_particles`` (confidence = the fraction of them reached); else the
        worst criterion. Confidence = sample factor (:func:`sample_factor`) × margin factor ×
        0.9 per criterion that could not be judged, where the margin factor is ``0.5 + 0.5·m``
        with ``m`` the largest margin among the criteria that decide an abandon (one clear reason
        is enough), or the smallest among those that decide a collect or a marginal (every one
        must hold).
    """
    cfg = cfg if cfg is not None else VerdictConfig()
    if numbers.particles < cfg.min_particles:
        reason = f"{numbers.particles:,} particles classified; the verdict needs {cfg.min_particles:,}"
        return Verdict("pending", min(1.0, max(0.0, numbers.particles / cfg.min_particles)), [reason])
    criteria = [_junk(numbers, cfg), _views(numbers, cfg), _rate(numbers, cfg), _resolution(numbers, cfg)]
    judged = [c for c in criteria if c.status != "unknown"]
    worst = max((_SEVERITY[c.status] for c in judged), default=_SEVERITY["ok"])
    status = next(s for s, v in _SEVERITY.items() if v == worst)
    deciding = [c for c in judged if c.status == status]
    margins = [c.margin for c in deciding]
    margin = max(margins) if status == "bad" else min(margins)
    unknown = len(criteria) - len(judged)
    confidence = sample_factor(numbers.particles, cfg) * (0.5 + 0.5 * margin) * UNKNOWN_FACTOR**unknown
    ordered = sorted(criteria, key=lambda c: -_SEVERITY[c.status])
    return Verdict(
        state=_STATUS_VERDICT[status],
        confidence=float(min(1.0, max(0.0, confidence))),
        reasons=[c.reason for c in ordered],
        criteria=criteria,
    )


__all__ = [
    "VERDICT_STATES",
    "Criterion",
    "GridNumbers",
    "Verdict",
    "VerdictConfig",
    "forecast_seconds",
    "grid_verdict",
    "sample_factor",
]
