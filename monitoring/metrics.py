"""Prometheus collectors of the monitoring state, computed at scrape time.

:class:`MonitoringCollector` takes a provider callable returning the latest
:class:`otf2d.monitoring.state.MonitoringState` of every session (and, optionally, the sessions'
lifecycle, :class:`otf2d.monitoring.lifecycle.SessionLifecycle`) and yields metric families from them on
each scrape (a custom collector, not thousands of ``.set()`` calls). Labels are ``session`` and,
for per-class series, ``class``: the **engine's own class number** (1-based), which keeps its
identity across snapshots, so ``otf2d_class_particles{class="7"}`` is the same class over time; the
size rank (the gallery/RELION number of the newest snapshot) is a value,
``otf2d_class_size_rank``. At most K series per family and session. The verdict has one series
per state (label ``verdict``), the lifecycle one per state (label ``state``). Base units: seconds,
ratios in [0, 1], rates per second; resolution in Å (``_angstroms``, the documented exception).

Lifecycle: a *closed* session loses its per-class series at once and every series
``retain_closed_minutes`` after it closed; until then ``otf2d_session_state{state="closed"}`` is 1
so alert rules leave it out.

==================================================  ========  =============================================
``otf2d_session_received_particles_total{session}``  counter   particles journaled in the session
``otf2d_session_classified_particles_total``         counter   particles folded into its classes
``otf2d_session_good_particles``                     gauge     classified particles in good classes
``otf2d_session_state{session,state}``               gauge     1 for open / idle / closed, 0 otherwise
``otf2d_session_last_particle_timestamp_seconds``    gauge     unix time of the session's last new particle
``otf2d_class_particles{session,class}``             gauge     particles assigned to the class
``otf2d_class_size_rank``                            gauge     the class's rank by size (1 = largest)
``otf2d_class_resolution_angstroms``                 gauge     class resolution (only where it is known)
``otf2d_class_junk_score``                           gauge     effective junk score in [0, 1]
``otf2d_class_junk``                                 gauge     1 when the class is flagged junk
``otf2d_junk_fraction_ratio``                        gauge     fraction of particles in junk classes
``otf2d_junk_classes``                               gauge     classes flagged junk
``otf2d_classes``                                    gauge     classes (K)
``otf2d_class_distribution_entropy_ratio``           gauge     H / ln K of the class distribution
``otf2d_effective_classes``                          gauge     exp(H) of the class distribution
``otf2d_distinct_views``                             gauge     distinct views among the good classes
``otf2d_view_entropy_ratio``                         gauge     H / ln V of the good particles over views
``otf2d_effective_views``                            gauge     exp(H) of the view distribution
``otf2d_largest_view_ratio``                         gauge     share of good particles in the largest view
``otf2d_classified_particles_per_second``            gauge     the engine's own rate over its trailing window
``otf2d_good_particles_per_second``                  gauge     good-particle rate over the trailing window
``otf2d_good_particles_target``                      gauge     the forecast's target
``otf2d_target_forecast_seconds``                    gauge     time to the target at the current rate
``otf2d_verdict{session,verdict}``                   gauge     1 for the current verdict, 0 for the others
``otf2d_verdict_confidence_ratio``                   gauge     confidence of the verdict
``otf2d_session_snapshot_timestamp_seconds``         gauge     unix time of the session's snapshot
``otf2d_session_snapshot_age_seconds``               gauge     seconds since it
==================================================  ========  =============================================

Rates and the forecast are omitted for a session until they are known; Grafana should prefer
``rate(otf2d_session_classified_particles_total[5m])``. The engine's own counters, histograms and
gauges (``engine/serving/metrics.py``) live in the same registry.
Rates and the forecast are omitted for a session until they are known. The engine's own
counters, histograms and gauges (``engine/serving/metrics.py``) live in the same registry.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from otf2d.monitoring.lifecycle import CLOSED, LIFECYCLE_STATES, Activity, SessionLifecycle
from otf2d.monitoring.state import MonitoringState, StateProvider
from otf2d.monitoring.verdict import VERDICT_STATES

log = logging.getLogger(__name__)

SESSION = ["session"]
SESSION_CLASS = ["session", "class"]


Family = GaugeMetricFamily | CounterMetricFamily
#: The counters (exposed with ``_total``), by family name.
COUNTERS = {
    "otf2d_session_received_particles": "Particles journaled in the session (duplicates excluded)",
    "otf2d_session_classified_particles": "Particles of the session folded into its classes",
}


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


class MonitoringCollector(Collector):
    """Yields the ``otf2d_…`` monitoring gauges of every session at scrape time.

    Parameters
    ----------
    provider
        Returns the latest state per session (e.g. :meth:`otf2d.monitoring.state.SessionMonitor.states`).
    clock
        Source of unix time for the snapshot age (for tests).
    lifecycle
        The sessions' lifecycle: their counters and states, and which sessions are still exported.
        Without it every session with a state is exported and no counters are.
    """

    def __init__(
        self,
        provider: StateProvider,
        *,
        clock: Callable[[], float] = time.time,
        lifecycle: SessionLifecycle | None = None,
    ) -> None:
        self._provider = provider
        self._clock = clock
        self._lifecycle = lifecycle

    def describe(self) -> list[Metric]:
        """The families (without samples), so registration checks names without a scrape."""
        return list(_families().values())

    def collect(self) -> Iterator[Metric]:
        """One family per metric name, with a sample per session (and class)."""
        families = _families()
        try:
            states = dict(self._provider())
        except Exception:  # a broken provider must not break the whole scrape
            log.exception("monitoring provider failed; exporting no session state")
            states = {}
        now = self._clock()
        activities = self._lifecycle.activities() if self._lifecycle is not None else {}
        config = self._lifecycle.config if self._lifecycle is not None else None
        for name in sorted(set(states) | set(activities)):
            activity = activities.get(name)
            if activity is not None and config is not None:
                if not activity.exported(now, config):
                    continue
                _add_activity(families, name, activity, activity.state(now, config))
            state = states.get(name)
            if state is not None:
                closed = activity is not None and config is not None and activity.state(now, config) == CLOSED
                _add_session(families, name, state, now, per_class=not closed)
        yield from families.values()


def _add_activity(families: dict[str, Family], session: str, activity: Activity, state: str) -> None:
    families["otf2d_session_received_particles"].add_metric([session], float(activity.received))
    families["otf2d_session_classified_particles"].add_metric([session], float(activity.classified))
    families["otf2d_session_last_particle_timestamp_seconds"].add_metric([session], activity.last_particle_time)
    for value in LIFECYCLE_STATES:
        families["otf2d_session_state"].add_metric([session, value], 1.0 if state == value else 0.0)


def _families() -> dict[str, Family]:
    families: dict[str, Family] = {
        name: CounterMetricFamily(name, doc, labels=SESSION) for name, doc in COUNTERS.items()
    }
    specs = [
        ("otf2d_session_state", "Lifecycle of the session: 1 for its state (open, idle, closed)", ["session", "state"]),
        ("otf2d_session_last_particle_timestamp_seconds", "Unix time of the session's last new particle", SESSION),
        ("otf2d_class_size_rank", "Rank of the class by size in the latest snapshot (1 = largest)", SESSION_CLASS),
        ("otf2d_class_particles", "Particles assigned to the class in the latest snapshot", SESSION_CLASS),
        ("otf2d_class_resolution_angstroms", "Resolution of the class average (where known)", SESSION_CLASS),
        ("otf2d_class_junk_score", "Junk score of the class in [0, 1], user overrides applied", SESSION_CLASS),
        (
            "otf2d_class_junk",
            "1 when the class is flagged junk (score above threshold or user override)",
            SESSION_CLASS,
        ),
        ("otf2d_session_good_particles", "Classified particles in good (non-junk) classes", SESSION),
        ("otf2d_junk_fraction_ratio", "Fraction of particles in junk classes", SESSION),
        ("otf2d_junk_classes", "Classes flagged junk", SESSION),
        ("otf2d_classes", "Number of classes", SESSION),
        ("otf2d_class_distribution_entropy_ratio", "Shannon entropy of the class distribution over ln K", SESSION),
        ("otf2d_effective_classes", "Effective number of classes, exp of the class-distribution entropy", SESSION),
        ("otf2d_distinct_views", "Distinct views among the good classes (rotation-invariant clusters)", SESSION),
        ("otf2d_view_entropy_ratio", "Entropy of good particles over distinct views over ln V", SESSION),
        ("otf2d_effective_views", "Effective number of views, exp of the view-distribution entropy", SESSION),
        ("otf2d_largest_view_ratio", "Share of good particles in the most populated view", SESSION),
        ("otf2d_classified_particles_per_second", "Particles classified per second, trailing window", SESSION),
        ("otf2d_good_particles_per_second", "Good particles per second, trailing window", SESSION),
        ("otf2d_good_particles_target", "Target number of good particles of the forecast", SESSION),
        ("otf2d_target_forecast_seconds", "Seconds to reach the good-particle target at the current rate", SESSION),
        ("otf2d_verdict", "Grid verdict: 1 for the current state, 0 for the others", ["session", "verdict"]),
        ("otf2d_verdict_confidence_ratio", "Confidence of the grid verdict in [0, 1]", SESSION),
        ("otf2d_session_snapshot_timestamp_seconds", "Unix time of the session's latest snapshot", SESSION),
        ("otf2d_session_snapshot_age_seconds", "Seconds since the session's latest snapshot", SESSION),
    ]
    families.update({name: _gauge(name, doc, labels) for name, doc, labels in specs})
    return families


def _add_classes(families: dict[str, Family], session: str, state: MonitoringState) -> None:
    """Per-class series labelled by the engine's class number, with the size rank as a value."""
    counts = state.class_counts
    resolution = state.snapshot.resolution_angstrom
    scores = state.junk_scores
    junk = state.quality.junk
    order = state.snapshot.engine_class_order()
    for k in range(state.snapshot.n_classes):
        labels = [session, str(order[k] + 1)]
        families["otf2d_class_particles"].add_metric(labels, float(counts[k]))
        families["otf2d_class_size_rank"].add_metric(labels, float(k + 1))
        if math.isfinite(float(resolution[k])) and float(resolution[k]) > 0:
            families["otf2d_class_resolution_angstroms"].add_metric(labels, float(resolution[k]))
        if math.isfinite(float(scores[k])):
            families["otf2d_class_junk_score"].add_metric(labels, float(scores[k]))
        families["otf2d_class_junk"].add_metric(labels, 1.0 if junk[k] else 0.0)


def _add_session(
    families: dict[str, Family], session: str, state: MonitoringState, now: float, *, per_class: bool = True
) -> None:
    if per_class:
        _add_classes(families, session, state)
    junk = state.quality.junk
    one = [session]
    values: dict[str, float | None] = {
        "otf2d_session_good_particles": float(state.good_particles),
        "otf2d_junk_fraction_ratio": state.junk_fraction,
        "otf2d_junk_classes": float(junk.sum()),
        "otf2d_classes": float(state.snapshot.n_classes),
        "otf2d_class_distribution_entropy_ratio": state.class_entropy_ratio,
        "otf2d_effective_classes": state.effective_classes,
        "otf2d_distinct_views": float(state.views.n_views),
        "otf2d_view_entropy_ratio": state.views.entropy_ratio,
        "otf2d_effective_views": state.views.effective_views,
        "otf2d_largest_view_ratio": state.views.largest_share,
        "otf2d_classified_particles_per_second": state.classified_per_second,
        "otf2d_good_particles_per_second": state.good_per_second,
        "otf2d_good_particles_target": float(state.target_good_particles),
        "otf2d_target_forecast_seconds": None if state.good_per_second is None else state.forecast_seconds,
        "otf2d_verdict_confidence_ratio": state.verdict.confidence,
        "otf2d_session_snapshot_timestamp_seconds": state.snapshot_time,
        "otf2d_session_snapshot_age_seconds": state.snapshot_age(now),
    }
    for name, value in values.items():
        if value is not None:
            families[name].add_metric(one, float(value))
    for verdict in VERDICT_STATES:
        families["otf2d_verdict"].add_metric([session, verdict], 1.0 if state.verdict.state == verdict else 0.0)


def exported_names() -> list[str]:
    """Names of every sample :class:`MonitoringCollector` exports (counters with ``_total``)."""
    return sorted(f"{name}_total" if name in COUNTERS else name for name in _families())


def register_monitoring(
    provider: StateProvider,
    registry: CollectorRegistry,
    *,
    clock: Callable[[], float] = time.time,
    lifecycle: SessionLifecycle | None = None,
) -> MonitoringCollector:
    """Create a :class:`MonitoringCollector` for ``provider`` and register it in ``registry``."""
    collector = MonitoringCollector(provider, clock=clock, lifecycle=lifecycle)
    registry.register(collector)
    return collector


__all__ = ["MonitoringCollector", "exported_names", "register_monitoring"]
