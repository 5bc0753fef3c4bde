"""Prometheus collectors of the monitoring state: names, labels, values, and promtool's linter."""

from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pytest
from monitoring_truth import good_grid, junk_grid, monitor_with_grids
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from otf2d.monitoring.metrics import MonitoringCollector, exported_names, register_monitoring
from otf2d.monitoring.verdict import VERDICT_STATES

NOW = 1_700_000_000.0
PER_HOUR = 20000.0  # more than a grid's particles: each session's history rises from 0 over the hour


@pytest.fixture(scope="module")
def monitor():
    return monitor_with_grids({"grid1": good_grid(), "grid2": junk_grid()}, now=NOW, particles_per_hour=PER_HOUR)


@pytest.fixture(scope="module")
def exposition(monitor) -> str:
    registry = CollectorRegistry()
    register_monitoring(monitor.states, registry, clock=lambda: NOW + 8.0)
    return generate_latest(registry).decode()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(found: dict, name: str, **labels: str) -> float:
    matches = [v for lab, v in found[name] if all(lab.get(k) == want for k, want in labels.items())]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


def test_every_documented_name_is_exported_with_bounded_labels(exposition: str) -> None:
    found = samples(exposition)
    assert set(exported_names()) <= set(found), set(exported_names()) - set(found)
    for name, rows in found.items():
        assert name.startswith("otf2d_")
        for labels, _ in rows:
            assert set(labels) <= {"session", "class", "verdict"}, (name, labels)
    classes = {lab["class"] for lab, _ in found["otf2d_class_particles"]}
    assert classes == {str(k) for k in range(1, len(good_grid()) + 1)}


def test_values_match_the_state(monitor, exposition: str) -> None:
    found = samples(exposition)
    for name, state in monitor.states().items():
        counts = np.asarray(state.snapshot.particle_counts)
        junk = state.quality.junk
        # Independent float64 recomputation from the snapshot's counts and the junk flags.
        assert value(found, "otf2d_junk_fraction_ratio", session=name) == pytest.approx(
            counts[junk].sum() / counts.sum(), rel=1e-12
        )
        p = counts[counts > 0] / counts.sum()
        h = -(p * np.log(p)).sum()
        assert value(found, "otf2d_class_distribution_entropy_ratio", session=name) == pytest.approx(
            h / math.log(len(counts)), rel=1e-12
        )
        assert value(found, "otf2d_effective_classes", session=name) == pytest.approx(math.exp(h), rel=1e-12)
        for k, n in enumerate(counts):
            assert value(found, "otf2d_class_particles", session=name, **{"class": str(k + 1)}) == n
            assert value(found, "otf2d_class_junk", session=name, **{"class": str(k + 1)}) == float(junk[k])
        assert value(found, "otf2d_distinct_views", session=name) == state.views.n_views
        assert value(found, "otf2d_session_snapshot_age_seconds", session=name) == pytest.approx(50.0)
        assert value(found, "otf2d_session_snapshot_timestamp_seconds", session=name) == pytest.approx(NOW - 42.0)
        rate = value(found, "otf2d_good_particles_per_second", session=name)
        assert rate == pytest.approx(counts.sum() / 3600 * (1 - counts[junk].sum() / counts.sum()), rel=1e-9)
        forecast = value(found, "otf2d_target_forecast_seconds", session=name)
        assert forecast == pytest.approx((100000 - state.good_particles) / rate, rel=1e-9)
        flags = {v: value(found, "otf2d_verdict", session=name, verdict=v) for v in VERDICT_STATES}
        assert sum(flags.values()) == 1.0
        assert flags[state.verdict.state] == 1.0
        assert value(found, "otf2d_verdict_confidence_ratio", session=name) == pytest.approx(state.verdict.confidence)
    assert value(found, "otf2d_verdict", session="grid1", verdict="collect") == 1.0
    assert value(found, "otf2d_verdict", session="grid2", verdict="abandon") == 1.0


def test_unknown_resolution_is_left_out_not_exported_as_inf(monitor) -> None:
    import dataclasses

    state = monitor.states()["grid1"]
    resolution = np.array(state.snapshot.resolution_angstrom, dtype=np.float64)
    resolution[0] = np.inf
    changed = dataclasses.replace(state, snapshot=dataclasses.replace(state.snapshot, resolution_angstrom=resolution))
    registry = CollectorRegistry()
    register_monitoring(lambda: {"grid1": changed}, registry)
    found = samples(generate_latest(registry).decode())
    classes = {lab["class"] for lab, _ in found["otf2d_class_resolution_angstroms"]}
    assert "1" not in classes and "2" in classes


def test_a_failing_provider_does_not_break_the_scrape() -> None:
    def broken() -> dict:
        raise RuntimeError("engine state unavailable")

    registry = CollectorRegistry()
    registry.register(MonitoringCollector(broken))
    text = generate_latest(registry).decode()
    assert "# TYPE otf2d_junk_fraction_ratio gauge" in text
    assert "otf2d_junk_fraction_ratio{" not in text


def test_collector_lives_beside_the_engine_metrics_in_one_registry(monitor) -> None:
    from otf2d.engine.serving.metrics import EngineMetrics

    engine = EngineMetrics()
    register_monitoring(monitor.states, engine.registry)  # no duplicated names
    found = samples(generate_latest(engine.registry).decode())
    assert "otf2d_particles_classified_total" in found
    assert "otf2d_junk_fraction_ratio" in found


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
def test_promtool_check_metrics_passes(exposition: str) -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr
