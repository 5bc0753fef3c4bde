"""Per-session monitoring state: class quality, views, rates and the verdict, from a snapshot and counts.

:func:`compute_state` turns one :class:`otf2d.core.snapshot.ClassSnapshot` plus the history of the
session's classified-particle count into a :class:`MonitoringState` — everything the status page,
``/status.json`` and the Prometheus collectors show. :class:`SessionMonitor` keeps the latest
state of every session for them, thread-safely; it is the narrow interface the engine composes::

    monitor = SessionMonitor(config.verdict)
    monitor.record_classified("grid3", particles_classified_total)   # cheap; as often as you like
    state = monitor.publish("grid3", snapshot, overrides=overrides)  # after each snapshot
    monitor.states()                                                  # provider for http / metrics

Rates come from the count history over the trailing ``rate_window_seconds``; the present
(``now``) counts as a sample holding the last count, so a stalled session's rate falls to 0.
Good particles are the classified particles times the good fraction of the snapshot (particles
outside junk classes).

The page shows rates after :data:`SHOWN_RATE_MIN_SPAN_SECONDS` of history (``shown_*`` fields);
the verdict waits for ``min_rate_span_seconds`` (a rate from ten seconds is fine to look at, not
to judge a grid by). Each state appends a :class:`VerdictPoint` to the session's timeline: the
verdict and the numbers the page plots over time (particles, junk fraction, good particles per
hour, best resolution); :func:`point_to_json` / :func:`point_from_json` keep it on disk.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from otf2d.core.config import VerdictConfig
from otf2d.core.errors import InputError
from otf2d.core.snapshot import ClassSnapshot
from otf2d.monitoring.acquisition import AcquisitionSummary
from otf2d.monitoring.quality import QualityReport, mask_radius_pixels, score_classes
from otf2d.monitoring.verdict import VERDICT_STATES, GridNumbers, Verdict, forecast_seconds, grid_verdict
from otf2d.monitoring.views import ViewReport, distribution_entropy, view_distribution

#: Most count samples kept per session.
MAX_HISTORY_SAMPLES = 20000
#: Most verdict timeline points kept per session (older ones are thinned, not dropped).
MAX_TIMELINE_POINTS = 2000
#: History the page needs before it shows a rate, seconds.
SHOWN_RATE_MIN_SPAN_SECONDS = 10.0

#: ``(unix time in seconds, cumulative particles classified)``.
CountSample = tuple[float, float]


def rate_per_second(
    samples: Sequence[CountSample],
    *,
    window_seconds: float,
    min_span_seconds: float,
    now: float | None = None,
) -> float | None:
    """Rate of a cumulative count over the trailing window.

    Parameters
    ----------
    samples
        ``(t, n)`` pairs in time order: unix seconds and the cumulative count at that time.
    window_seconds
        Length of the trailing window.
    min_span_seconds
        Shortest span of history that gives a rate.
    now
        The present (default: the last sample's time); it counts as a sample with the last count.

    Returns
    -------
    float or None
        ``(n_end − n_start) / (t_end − t_start)`` per second, where the start is the last sample
        at or before ``t_end − window`` (else the first sample); ``None`` when the history spans
        less than ``min_span_seconds``. Never negative (a count that went down restarts the window).
    """
    if not samples:
        return None
    times = np.array([s[0] for s in samples], dtype=np.float64)
    counts = np.array([s[1] for s in samples], dtype=np.float64)
    end_time = max(float(times[-1]), float(now) if now is not None else float(times[-1]))
    end_count = float(counts[-1])
    drops = np.flatnonzero(np.diff(counts) < 0)
    first = int(drops[-1]) + 1 if len(drops) else 0
    times, counts = times[first:], counts[first:]
    before = np.flatnonzero(times <= end_time - window_seconds)
    start = int(before[-1]) if len(before) else 0
    span = end_time - float(times[start])
    if span < min_span_seconds or span <= 0:
        return None
    return max(0.0, (end_count - float(counts[start])) / span)


@dataclass(frozen=True)
class VerdictPoint:
    """One point of a session's timeline: the verdict and the numbers plotted over time."""

    unix_time: float
    particles: int
    state: str
    confidence: float
    junk_fraction: float | None = None
    good_particles: int | None = None
    good_per_hour: float | None = None
    best_resolution_angstrom: float | None = None


_POINT_FIELDS = {
    "time": "unix_time",
    "particles": "particles",
    "verdict": "state",
    "confidence": "confidence",
    "junk_fraction": "junk_fraction",
    "good_particles": "good_particles",
    "good_per_hour": "good_per_hour",
    "best_resolution_angstrom": "best_resolution_angstrom",
}


def point_to_json(point: VerdictPoint) -> dict[str, Any]:
    """A timeline point as strict JSON (the keys of ``/status.json``'s ``timeline``)."""
    out: dict[str, Any] = {}
    for key, attr in _POINT_FIELDS.items():
        value = getattr(point, attr)
        out[key] = _finite(value) if isinstance(value, float) else value
    return out


def point_from_json(data: Any, where: str) -> VerdictPoint:
    """A timeline point from :func:`point_to_json`'s output.

    Raises
    ------
    InputError
        Not such a point (``where`` names the file and line).
    """
    if not isinstance(data, dict):
        raise InputError(None, f"{where}: a timeline point must be an object")
    state = data.get("verdict")
    if state not in VERDICT_STATES:
        raise InputError(None, f"{where}: verdict must be one of {list(VERDICT_STATES)}, got {state!r}")
    numbers: dict[str, float | None] = {}
    for key in ("time", "particles", "confidence", "junk_fraction", "good_particles", "good_per_hour"):
        numbers[key] = _number(data.get(key), f"{where}: {key}", required=key in ("time", "particles", "confidence"))
    resolution = _number(data.get("best_resolution_angstrom"), f"{where}: best_resolution_angstrom", required=False)
    good = numbers["good_particles"]
    return VerdictPoint(
        unix_time=float(numbers["time"] or 0.0),
        particles=int(numbers["particles"] or 0),
        state=str(state),
        confidence=float(numbers["confidence"] or 0.0),
        junk_fraction=numbers["junk_fraction"],
        good_particles=None if good is None else int(good),
        good_per_hour=numbers["good_per_hour"],
        best_resolution_angstrom=resolution,
    )


def _number(value: Any, where: str, *, required: bool) -> float | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InputError(None, f"{where} must be a finite number >= 0, got {value!r}")
    return float(value)


#: File of a session's timeline, in its folder: one JSON point per line, appended at each state.
TIMELINE_FILE = "monitoring_timeline.jsonl"


def append_timeline(path: str | os.PathLike[str], point: VerdictPoint) -> None:
    """Append one point to the timeline file ``path`` (created when missing)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(point_to_json(point), allow_nan=False) + "\n")


def load_timeline(path: str | os.PathLike[str]) -> tuple[tuple[VerdictPoint, ...], list[str]]:
    """The points of a timeline file (thinned to :data:`MAX_TIMELINE_POINTS`) and the problems found.

    A line that is not a point (a torn last line after a crash, an edit) is skipped and named in
    the problems (file and line number); a missing file is an empty timeline. When the file holds
    more than twice the points kept, it is rewritten (atomically) with the thinned points.
    """
    from otf2d.core.durable import write_text_atomic

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return (), []
    except (OSError, UnicodeDecodeError) as exc:
        return (), [f"{path}: cannot read the timeline: {exc}"]
    points: list[VerdictPoint] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            points.append(point_from_json(json.loads(line), f"{path}:{number}"))
        except (ValueError, InputError) as exc:
            problems.append(str(exc) if isinstance(exc, InputError) else f"{path}:{number}: not JSON: {exc}")
    points.sort(key=lambda q: q.unix_time)
    kept = thin_timeline(points)
    if len(lines) > 2 * MAX_TIMELINE_POINTS:
        write_text_atomic(path, "".join(json.dumps(point_to_json(q), allow_nan=False) + "\n" for q in kept))
    return kept, problems


def thin_timeline(points: Sequence[VerdictPoint], limit: int = MAX_TIMELINE_POINTS) -> tuple[VerdictPoint, ...]:
    """At most ``limit`` points: the older half is thinned to every other point, the newest kept."""
    kept = list(points)
    while len(kept) > limit:
        half = len(kept) // 2
        kept = kept[:half:2] + kept[half:]
    return tuple(kept)


@dataclass(frozen=True)
class MonitoringState:
    """Everything shown about one session at one moment.

    Attributes
    ----------
    session
        Session name.
    snapshot
        The classes the state was computed from.
    computed_at, snapshot_time
        Unix seconds when the state was computed and when the snapshot was taken.
    quality
        Junk scores and features per class (overrides applied in its flags).
    views
        Distinct views of the good classes and the particles in each.
    verdict
        The grid verdict.
    particles_classified
        Particles classified in the session so far (from the count history, else the snapshot).
    classified_per_second, good_per_second
        Rates over the trailing window (``None`` until known) that the verdict judges.
    shown_classified_per_second, shown_good_per_second
        The same rates as soon as :data:`SHOWN_RATE_MIN_SPAN_SECONDS` of history exist (for the page).
    target_good_particles
        The forecast's target.
    forecast_seconds
        Time to the target at the current good rate (0 once reached, ``inf`` when unknown).
    timeline
        Earlier verdicts, oldest first (including this one).
    acquisition
        Micrographs and CTF of the snapshot's particles (when the publisher had the particle table).
    """

    session: str
    snapshot: ClassSnapshot
    computed_at: float
    snapshot_time: float
    quality: QualityReport
    views: ViewReport
    verdict: Verdict
    particles_classified: int
    classified_per_second: float | None
    good_per_second: float | None
    target_good_particles: int
    forecast_seconds: float
    timeline: tuple[VerdictPoint, ...] = field(default_factory=tuple)
    shown_classified_per_second: float | None = None
    shown_good_per_second: float | None = None
    acquisition: AcquisitionSummary | None = None

    @property
    def class_counts(self) -> np.ndarray:
        """``(K,)`` particles per class in the snapshot."""
        return np.asarray(self.snapshot.particle_counts, dtype=np.int64)

    @property
    def junk_scores(self) -> np.ndarray:
        """``(K,)`` effective junk scores (overrides applied): what snapshots and galleries should carry."""
        return self.quality.effective_scores

    def scored_snapshot(self) -> ClassSnapshot:
        """The snapshot with these junk scores and their threshold (what the galleries draw)."""
        return replace(self.snapshot, junk_score=self.junk_scores, junk_score_threshold=float(self.quality.threshold))

    @property
    def junk_fraction(self) -> float:
        """Fraction of the snapshot's particles in junk classes."""
        counts = self.class_counts
        total = int(counts.sum())
        return float(counts[self.quality.junk].sum() / total) if total > 0 else 0.0

    @property
    def good_particles(self) -> int:
        """Classified particles outside junk classes (estimated with the snapshot's good fraction)."""
        return round(self.particles_classified * (1.0 - self.junk_fraction))

    @property
    def class_entropy_ratio(self) -> float:
        """``H / ln(K)`` of the class distribution (0 for one class)."""
        h = distribution_entropy(self.class_counts)[0]
        k = self.snapshot.n_classes
        return h / math.log(k) if k > 1 else 0.0

    @property
    def effective_classes(self) -> float:
        """``exp(H)`` of the class distribution."""
        return distribution_entropy(self.class_counts)[2]

    def snapshot_age(self, now: float | None = None) -> float:
        """Seconds since the snapshot was taken."""
        return max(0.0, (time.time() if now is None else now) - self.snapshot_time)

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """The state as strict JSON (no NaN/Infinity: unknown numbers are ``null``)."""
        counts = self.class_counts
        total = int(counts.sum())
        quality_rows = self.quality.to_json()
        resolution = np.asarray(self.snapshot.resolution_angstrom, dtype=np.float64)
        classes = []
        for k, row in enumerate(quality_rows):
            classes.append(
                {
                    "class": k + 1,
                    "particles": int(counts[k]),
                    "fraction": float(counts[k] / total) if total > 0 else 0.0,
                    "resolution_angstrom": _finite(resolution[k]),
                    "junk_score": row["effective_score"],
                    "computed_junk_score": row["score"],
                    "junk": row["junk"],
                    "override": row["override"],
                    "view": int(self.views.class_view[k]) + 1 if self.views.class_view[k] >= 0 else None,
                    "reasons": row["reasons"],
                    "features": row["features"],
                }
            )
        return {
            "session": self.session,
            "iteration": int(self.snapshot.iteration),
            "computed_at": self.computed_at,
            "snapshot_time": self.snapshot_time,
            "snapshot_age_seconds": self.snapshot_age(now),
            "particles_classified": self.particles_classified,
            "particles_in_snapshot": len(self.snapshot.particles),
            "n_classes": self.snapshot.n_classes,
            "good_particles": self.good_particles,
            "junk_fraction": self.junk_fraction,
            "junk_classes": int(self.quality.junk.sum()),
            "classified_per_hour": _per_hour(self.shown_classified_per_second),
            "good_per_hour": _per_hour(self.shown_good_per_second),
            "target_good_particles": self.target_good_particles,
            "forecast_seconds": _finite(self.forecast_seconds),
            "class_entropy_ratio": self.class_entropy_ratio,
            "effective_classes": self.effective_classes,
            "views": self.views.to_json(),
            "verdict": self.verdict.to_json(),
            "classes": classes,
            "timeline": [point_to_json(p) for p in self.timeline],
            "acquisition": None if self.acquisition is None else self.acquisition.to_json(),
            "pixel_size_angstrom": float(self.snapshot.pixel_size_angstrom),
            "box_angstrom": float(self.snapshot.averages.shape[-1] * self.snapshot.pixel_size_angstrom),
        }


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _per_hour(rate: float | None) -> float | None:
    return None if rate is None else rate * 3600.0


def best_good_resolution(snapshot: ClassSnapshot, junk: np.ndarray) -> float | None:
    """Best (smallest) finite resolution among the good, non-empty classes, Å; ``None`` if none."""
    res = np.asarray(snapshot.resolution_angstrom, dtype=np.float64)
    keep = ~np.asarray(junk, dtype=bool) & (np.asarray(snapshot.particle_counts) > 0) & np.isfinite(res) & (res > 0)
    return float(res[keep].min()) if keep.any() else None


def compute_state(
    snapshot: ClassSnapshot,
    history: Sequence[CountSample],
    config: VerdictConfig | None = None,
    *,
    session: str = "",
    overrides: Mapping[int, str] | None = None,
    now: float | None = None,
    snapshot_time: float | None = None,
    timeline: Sequence[VerdictPoint] = (),
    acquisition: AcquisitionSummary | None = None,
) -> MonitoringState:
    """Compute a session's monitoring state from a snapshot and its count history.

    Parameters
    ----------
    snapshot
        The classes: averages ``(K, h, w)``, counts, resolutions.
    history
        ``(unix time, cumulative particles classified)`` samples in time order; may be empty.
    config
        Verdict thresholds and analysis settings (default :class:`VerdictConfig`).
    session
        Session name.
    overrides
        User class overrides: RELION class number (1-based) → ``"good"`` / ``"junk"``.
    now
        The present, unix seconds (default ``time.time()``).
    snapshot_time
        When the snapshot was taken (default ``now``).
    timeline
        Earlier verdict points; this state's verdict is appended.
    acquisition
        Micrographs and CTF of the snapshot's particles, kept in the state as given.

    Returns
    -------
    MonitoringState
        Quality, views, rates, forecast and verdict.

    Raises
    ------
    InputError
        Invalid overrides or history.
    """
    cfg = config if config is not None else VerdictConfig()
    now = time.time() if now is None else float(now)
    quality = score_classes(snapshot, overrides, threshold=cfg.junk_score_threshold)
    _, h, w = snapshot.averages.shape
    radius = mask_radius_pixels(snapshot.parameters, max(h, w), snapshot.pixel_size_angstrom)
    junk = quality.junk
    views = view_distribution(
        snapshot.averages, snapshot.particle_counts, ~junk, radius, threshold=cfg.same_view_similarity
    )
    if any(len(sample) != 2 for sample in history):
        raise InputError(None, "history samples must be (unix_time, particles_classified) pairs")
    classified = int(history[-1][1]) if history else len(snapshot.particles)
    classified_rate = rate_per_second(
        history, window_seconds=cfg.rate_window_seconds, min_span_seconds=cfg.min_rate_span_seconds, now=now
    )
    shown_rate = rate_per_second(
        history,
        window_seconds=cfg.rate_window_seconds,
        min_span_seconds=min(SHOWN_RATE_MIN_SPAN_SECONDS, cfg.min_rate_span_seconds),
        now=now,
    )
    counts = np.asarray(snapshot.particle_counts, dtype=np.int64)
    total = int(counts.sum())
    junk_fraction = float(counts[junk].sum() / total) if total > 0 else 0.0
    good_rate = None if classified_rate is None else classified_rate * (1.0 - junk_fraction)
    shown_good = None if shown_rate is None else shown_rate * (1.0 - junk_fraction)
    good = round(classified * (1.0 - junk_fraction))
    numbers = GridNumbers(
        particles=classified,
        junk_fraction=junk_fraction,
        good_particles=good,
        good_per_second=good_rate,
        distinct_views=views.n_views,
        largest_view_share=views.largest_share,
        best_resolution_angstrom=best_good_resolution(snapshot, junk),
    )
    verdict = grid_verdict(numbers, cfg)
    point = VerdictPoint(
        now,
        classified,
        verdict.state,
        verdict.confidence,
        junk_fraction=junk_fraction,
        good_particles=good,
        good_per_hour=_per_hour(shown_good),
        best_resolution_angstrom=numbers.best_resolution_angstrom,
    )
    return MonitoringState(
        session=session,
        snapshot=snapshot,
        computed_at=now,
        snapshot_time=now if snapshot_time is None else float(snapshot_time),
        quality=quality,
        views=views,
        verdict=verdict,
        particles_classified=classified,
        classified_per_second=classified_rate,
        good_per_second=good_rate,
        target_good_particles=cfg.target_good_particles,
        forecast_seconds=forecast_seconds(good, good_rate, cfg.target_good_particles),
        timeline=thin_timeline((*timeline, point)),
        shown_classified_per_second=shown_rate,
        shown_good_per_second=shown_good,
        acquisition=acquisition,
    )


#: What the HTTP server and the collectors call for the latest states: session → state.
StateProvider = Callable[[], Mapping[str, MonitoringState]]


class SessionMonitor:
    """The latest monitoring state of every session, updated by the engine and read by HTTP/metrics.

    Parameters
    ----------
    config
        Verdict thresholds (default :class:`VerdictConfig`).
    clock
        Source of unix time (for tests).
    """

    def __init__(self, config: VerdictConfig | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config if config is not None else VerdictConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._history: dict[str, deque[CountSample]] = {}
        self._timeline: dict[str, list[VerdictPoint]] = {}
        self._states: dict[str, MonitoringState] = {}

    def record_classified(self, session: str, particles_classified: int, at: float | None = None) -> None:
        """Record the session's cumulative classified-particle count (at ``at``, default now)."""
        t = self._clock() if at is None else float(at)
        with self._lock:
            history = self._history.setdefault(session, deque(maxlen=MAX_HISTORY_SAMPLES))
            if history and t < history[-1][0]:
                return  # out of order: the later sample already covers it
            history.append((t, float(particles_classified)))
            keep_after = t - 2.0 * self.config.rate_window_seconds
            while len(history) > 2 and history[1][0] <= keep_after:
                history.popleft()

    def publish(
        self,
        session: str,
        snapshot: ClassSnapshot,
        *,
        overrides: Mapping[int, str] | None = None,
        snapshot_time: float | None = None,
        acquisition: AcquisitionSummary | None = None,
    ) -> MonitoringState:
        """Compute and store the session's state from a new snapshot; returns it.

        ``acquisition`` defaults to the session's previous one (a re-publish after an override).
        """
        now = self._clock()
        with self._lock:
            history = list(self._history.get(session, ()))
            timeline = list(self._timeline.get(session, ()))
            previous = self._states.get(session)
        if acquisition is None and previous is not None:
            acquisition = previous.acquisition
        state = compute_state(
            snapshot,
            history,
            self.config,
            session=session,
            overrides=overrides,
            now=now,
            snapshot_time=snapshot_time,
            timeline=timeline,
            acquisition=acquisition,
        )
        with self._lock:
            self._timeline[session] = list(state.timeline)
            self._states[session] = state
        return state

    def restore_timeline(self, session: str, points: Sequence[VerdictPoint]) -> None:
        """Start the session's timeline from ``points`` (read from disk after a restart)."""
        with self._lock:
            self._timeline[session] = list(thin_timeline(points))

    def remove(self, session: str) -> None:
        """Forget a session (its metrics disappear at the next scrape)."""
        with self._lock:
            self._states.pop(session, None)
            self._history.pop(session, None)
            self._timeline.pop(session, None)

    def states(self) -> dict[str, MonitoringState]:
        """The latest state of every session (a copy of the mapping)."""
        with self._lock:
            return dict(self._states)


__all__ = [
    "MAX_HISTORY_SAMPLES",
    "TIMELINE_FILE",
    "CountSample",
    "MonitoringState",
    "SessionMonitor",
    "StateProvider",
    "VerdictPoint",
    "append_timeline",
    "best_good_resolution",
    "compute_state",
    "load_timeline",
    "point_from_json",
    "point_to_json",
    "rate_per_second",
    "thin_timeline",
]
