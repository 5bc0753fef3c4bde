"""The grid verdict: thresholds, reasons in words, confidence, forecast; end to end on simulated grids."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from monitoring_truth import good_grid, grid_snapshot, junk_grid, preferred_grid

from otf2d.core.config import VerdictConfig, load_config
from otf2d.core.errors import ConfigError
from otf2d.monitoring.state import SessionMonitor, compute_state, rate_per_second
from otf2d.monitoring.verdict import GridNumbers, forecast_seconds, grid_verdict, sample_factor

CFG = VerdictConfig()


def numbers(**changes: object) -> GridNumbers:
    """A healthy grid: 20% junk, 5 views, the largest with 30%, 6,000 good particles/h, 12 Å classes."""
    base = GridNumbers(
        particles=20000,
        junk_fraction=0.2,
        good_particles=16000,
        good_per_second=6000 / 3600,
        distinct_views=5,
        largest_view_share=0.3,
        best_resolution_angstrom=12.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_twenty_percent_junk_and_several_views_says_collect() -> None:
    verdict = grid_verdict(numbers(), CFG)
    assert verdict.state == "collect"
    assert "20% junk" in verdict.reasons
    assert "5 distinct views, one holds 30% of good particles" in verdict.reasons
    assert 0.5 < verdict.confidence <= 1.0


@pytest.mark.parametrize("junk", [0.8, 0.62])
def test_heavy_junk_says_abandon_or_marginal_and_names_the_number(junk: float) -> None:
    verdict = grid_verdict(numbers(junk_fraction=junk, good_particles=int(20000 * (1 - junk))), CFG)
    assert verdict.state == ("abandon" if junk >= CFG.junk_fraction_abandon else "marginal")
    assert verdict.reasons[0] == f"{junk:.0%} junk"


def test_one_view_holding_most_particles_says_abandon_or_marginal() -> None:
    strong = grid_verdict(numbers(distinct_views=3, largest_view_share=0.9), CFG)
    assert strong.state == "abandon"
    assert strong.reasons[0] == "3 distinct views, one holds 90% of good particles"
    mild = grid_verdict(numbers(distinct_views=4, largest_view_share=0.7), CFG)
    assert mild.state == "marginal"
    assert "one holds 70%" in mild.reasons[0]
    single = grid_verdict(numbers(distinct_views=1, largest_view_share=1.0), CFG)
    assert single.state == "abandon"
    assert single.reasons[0] == "1 view holds all good particles"
    few = grid_verdict(numbers(distinct_views=2, largest_view_share=0.55), CFG)
    assert few.state == "marginal"  # fewer than min_views, even if balanced


def test_rate_forecast_reason_and_thresholds() -> None:
    cfg = dataclasses.replace(CFG, target_good_particles=50000)
    verdict = grid_verdict(numbers(good_particles=0, good_per_second=1200 / 3600), cfg)
    hours = 50000 / 1200
    assert "good particles at 1,200/h: 50,000 in 42 h" in verdict.reasons
    assert verdict.state == "marginal"  # 41.7 h is beyond the 24 h marginal threshold
    rate = next(c for c in verdict.criteria if c.name == "rate")
    assert rate.value == pytest.approx(hours)
    slow = grid_verdict(numbers(good_particles=0, good_per_second=500 / 3600), cfg)
    assert slow.state == "abandon"  # 100 h > 72 h


def test_forecast_seconds() -> None:
    assert forecast_seconds(0, 1200 / 3600, 50000) == pytest.approx(50000 / 1200 * 3600)
    assert forecast_seconds(60000, 1.0, 50000) == 0.0
    assert forecast_seconds(10, None, 50000) == math.inf
    assert forecast_seconds(10, 0.0, 50000) == math.inf


def test_pending_below_the_minimum_count() -> None:
    verdict = grid_verdict(numbers(particles=1234), CFG)
    assert verdict.state == "pending"
    assert verdict.reasons == ["1,234 particles classified; the verdict needs 2,000"]
    assert verdict.confidence == pytest.approx(1234 / 2000)


def test_confidence_grows_with_particles_and_margin_and_drops_with_unknowns() -> None:
    few = grid_verdict(numbers(particles=2500), CFG).confidence
    many = grid_verdict(numbers(particles=40000), CFG).confidence
    assert 0 <= few < many <= 1
    near = grid_verdict(numbers(junk_fraction=0.38), CFG).confidence
    far = grid_verdict(numbers(junk_fraction=0.05), CFG).confidence
    assert near < far
    unknown = grid_verdict(numbers(good_per_second=None, best_resolution_angstrom=None), CFG)
    assert unknown.state == "collect"
    # junk 0.2 and view share 0.3 sit ≥ 0.15 inside their bands (margin 1) and 20,000 particles give a
    # sample factor of 1: only the two unjudged criteria lower the confidence, 0.9 each.
    assert unknown.confidence == pytest.approx(0.81, rel=1e-12)
    fast = grid_verdict(numbers(good_per_second=20000 / 3600), CFG)  # 4.2 h to target: margin 1 too
    assert fast.confidence == pytest.approx(1.0, rel=1e-12)
    assert "good-particle rate not known yet" in unknown.reasons
    assert sample_factor(CFG.min_particles, CFG) == 0.5
    assert sample_factor(CFG.confident_particles, CFG) == 1.0


def test_poor_resolution_is_marginal_then_abandon() -> None:
    assert grid_verdict(numbers(best_resolution_angstrom=35.0), CFG).state == "marginal"
    verdict = grid_verdict(numbers(best_resolution_angstrom=60.0), CFG)
    assert verdict.state == "abandon"
    assert "best good class at 60 Å" in verdict.reasons


def test_rate_over_the_trailing_window() -> None:
    history = [(0.0, 0.0), (600.0, 1000.0), (1200.0, 3000.0), (1800.0, 6000.0)]
    assert rate_per_second(history, window_seconds=900, min_span_seconds=60) == pytest.approx(5000 / 1200)
    assert rate_per_second(history, window_seconds=900, min_span_seconds=60, now=2400.0) == pytest.approx(
        3000 / 1200
    )  # no new particles for 10 minutes: the rate falls
    assert rate_per_second(history[:1], window_seconds=900, min_span_seconds=60) is None
    restarted = [(0.0, 500.0), (100.0, 900.0), (200.0, 10.0), (400.0, 410.0)]
    assert rate_per_second(restarted, window_seconds=900, min_span_seconds=60) == pytest.approx(2.0)


# ---- end to end on simulated grids (class averages and resolutions from the simulator's truth) ----

GRIDS = {"good": good_grid, "junk-heavy": junk_grid, "preferred": preferred_grid}
EXPECTED = {"good": {"collect"}, "junk-heavy": {"abandon", "marginal"}, "preferred": {"abandon", "marginal"}}


@pytest.mark.slow
@pytest.mark.parametrize("grid", list(GRIDS))
def test_simulated_grids_get_the_right_verdict(grid: str) -> None:
    """Each grid is judged once ``min_particles`` (2,000) have been classified; before, it is pending."""
    snapshot = grid_snapshot(GRIDS[grid]())
    n = len(snapshot.particles)
    history = [(float(t), n * t / 3600) for t in range(0, 3601, 300)]  # n particles in the last hour
    state = compute_state(snapshot, history, CFG, session=grid, now=3600.0)
    print(grid, n, state.verdict.state, f"{state.verdict.confidence:.2f}", state.verdict.reasons)
    assert state.verdict.state in EXPECTED[grid]
    assert state.particles_classified == n
    assert state.classified_per_second == pytest.approx(n / 3600)
    early = compute_state(snapshot, [(0.0, 0.0), (600.0, 1999.0)], CFG, session=grid, now=600.0)
    assert early.verdict.state == "pending"
    if grid == "junk-heavy":
        assert state.verdict.reasons[0] == f"{state.junk_fraction:.0%} junk"
        assert state.junk_fraction == pytest.approx(0.8)
    if grid == "preferred":
        assert state.views.largest_share > CFG.largest_view_share_abandon
        assert state.verdict.reasons[0].endswith(f"one holds {state.views.largest_share:.0%} of good particles")
    if grid == "good":
        assert state.junk_fraction == pytest.approx(0.2)
        assert state.views.n_views == 5


def test_session_monitor_keeps_the_latest_state_and_a_timeline() -> None:
    clock = [1000.0]
    monitor = SessionMonitor(CFG, clock=lambda: clock[0])
    snapshot = grid_snapshot(good_grid(scale=20))
    for i in range(7):
        monitor.record_classified("g1", 300 * i, at=1000.0 + 60 * i)
    clock[0] = 1360.0
    first = monitor.publish("g1", snapshot)
    assert first.verdict.state == "pending"  # 1,800 particles
    assert first.classified_per_second == pytest.approx(5.0)
    monitor.record_classified("g1", 2500, at=1420.0)
    clock[0] = 1420.0
    second = monitor.publish("g1", snapshot)
    assert second.verdict.state == "collect"
    assert [p.state for p in second.timeline] == ["pending", "collect"]
    assert set(monitor.states()) == {"g1"}
    monitor.remove("g1")
    assert monitor.states() == {}


def test_verdict_config_is_a_section_of_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "otf2d.toml"
    path.write_text("[verdict]\nmin_particles = 500\njunk_fraction_abandon = 0.9\n")
    cfg = load_config(path)
    assert cfg.verdict.min_particles == 500
    assert cfg.verdict.junk_fraction_abandon == 0.9
    assert cfg.verdict.junk_fraction_marginal == CFG.junk_fraction_marginal
    path.write_text("[verdict]\njunk_fraction_marginal = 0.8\njunk_fraction_abandon = 0.5\n")
    with pytest.raises(ConfigError, match="junk_fraction_marginal"):
        load_config(path)
    path.write_text("[verdict]\nmin_particle = 5\n")
    with pytest.raises(ConfigError, match="min_particle"):
        load_config(path)
