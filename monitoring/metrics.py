"""Prometheus collectors of the monitoring state, computed at scrape time.

:class:`MonitoringCollector` takes a provider callable returning the latest
:class:`otf2d.monitoring.state.MonitoringState` of every session and yields gauge families from it on
each scrape (a custom collector, not thousands of ``.set()`` calls). Labels are ``session`` and,
for per-class series, ``class`` (the RELION class number, 1-based: at most K per session); the
verdict has one series per state with the bounded label ``verdict``. Base units: seconds, ratios
in [0, 1], rates per second (dashboards multiply by 3600 for "per hour"); resolution in Å
(``_angstroms``, the documented exception).

==============================================  =================================================
``otf2d_class_particles{session,class}``         particles assigned to the class
``otf2d_class_resolution_angstroms``             class resolution (only classes where it is known)
``otf2d_class_junk_score``                       effective junk score in [0, 1] (overrides applied)
``otf2d_class_junk``                             1 when the class is flagged junk
``otf2d_session_particles{session}``             particles classified in the session
``otf2d_good_particles``                         of which in good classes
``otf2d_junk_fraction_ratio``                    fraction of particles in junk classes
``otf2d_junk_classes``                           classes flagged junk
``otf2d_classes``                                classes (K)
``otf2d_class_distribution_entropy_ratio``       H / ln K of the class distribution
``otf2d_effective_classes``                      exp(H) of the class distribution
``otf2d_distinct_views``                         distinct views among the good classes
``otf2d_view_entropy_ratio``                     H / ln V of the good particles over views
``otf2d_effective_views``                        exp(H) of the view distribution
``otf2d_largest_view_ratio``                     share of good particles in the largest view
``otf2d_classified_particles_per_second``        classification rate over the trailing window
``otf2d_good_particles_per_second``              good-particle rate over the trailing window
``otf2d_good_particles_target``                  the forecast's target
``otf2d_target_forecast_seconds``                time to the target at the current rate (+Inf)
``otf2d_verdict{session,verdict}``               1 for the current verdict, 0 for the others
``otf2d_verdict_confidence_ratio``               confidence of the verdict
``otf2d_session_snapshot_timestamp_seconds``     unix time of the session's snapshot
``otf2d_session_snapshot_age_seconds``           seconds since it
==============================================  =================================================

Rates and the forecast are omitted for a session until they are known. The engine's own
counters, histograms and gauges (``engine/serving/metrics.py``) live in the same registry.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from otf2d.monitoring.state import MonitoringState, StateProvider
from otf2d.monitoring.verdict import VERDICT_STATES

log = logging.getLogger(__name__)

SESSION = ["session"]
SESSION_CLASS = ["session", "class"]


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
    """

    def __init__(self, provider: StateProvider, *, clock: Callable[[], float] = time.time) -> None:
        self._provider = provider
        self._clock = clock

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
        for name in sorted(states):
            _add_session(families, name, states[name], now)
        yield from families.values()


def _families() -> dict[str, GaugeMetricFamily]:
    specs = [
        ("otf2d_class_particles", "Particles assigned to the class in the latest snapshot", SESSION_CLASS),
        ("otf2d_class_resolution_angstroms", "Resolution of the class average (where known)", SESSION_CLASS),
        ("otf2d_class_junk_score", "Junk score of the class in [0, 1], user overrides applied", SESSION_CLASS),
        (
            "otf2d_class_junk",
            "1 when the class is flagged junk (score above threshold or user override)",
            SESSION_CLASS,
        ),
        ("otf2d_session_particles", "Particles classified in the session", SESSION),
        ("otf2d_good_particles", "Classified particles in good (non-junk) classes", SESSION),
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
    return {name: _gauge(name, doc, labels) for name, doc, labels in specs}


def _add_session(families: dict[str, GaugeMetricFamily], session: str, state: MonitoringState, now: float) -> None:
    counts = state.class_counts
    resolution = state.snapshot.resolution_angstrom
    scores = state.junk_scores
    junk = state.quality.junk
    for k in range(state.snapshot.n_classes):
        labels = [session, str(k + 1)]
        families["otf2d_class_particles"].add_metric(labels, float(counts[k]))
        if math.isfinite(float(resolution[k])) and float(resolution[k]) > 0:
            families["otf2d_class_resolution_angstroms"].add_metric(labels, float(resolution[k]))
        if math.isfinite(float(scores[k])):
            families["otf2d_class_junk_score"].add_metric(labels, float(scores[k]))
        families["otf2d_class_junk"].add_metric(labels, 1.0 if junk[k] else 0.0)
    one = [session]
    values: dict[str, float | None] = {
        "otf2d_session_particles": float(state.particles_classified),
        "otf2d_good_particles": float(state.good_particles),
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
    """Names of every metric family :class:`MonitoringCollector` exports (for checks of rules/dashboards)."""
    return sorted(_families())


def register_monitoring(
    provider: StateProvider, registry: CollectorRegistry, *, clock: Callable[[], float] = time.time
) -> MonitoringCollector:
    """Create a :class:`MonitoringCollector` for ``provider`` and register it in ``registry``."""
    collector = MonitoringCollector(provider, clock=clock)
    registry.register(collector)
    return collector


__all__ = ["MonitoringCollector", "exported_names", "register_monitoring"]
