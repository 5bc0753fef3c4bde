"""What the status page plots: the timeline on disk, the micrograph/CTF summary, the charts' axes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from snapshot_factory import make_snapshot

from otf2d.monitoring.acquisition import summarize_acquisition
from otf2d.monitoring.page_charts import line_chart_svg, nice_ticks, verdict_strip_svg
from otf2d.monitoring.state import (
    MAX_TIMELINE_POINTS,
    SessionMonitor,
    VerdictPoint,
    append_timeline,
    load_timeline,
    point_to_json,
    thin_timeline,
)
from otf2d.monitoring.status_page import EARLY_CONFIDENCE, render_status_page, scale_bar_angstrom


def test_the_micrograph_and_ctf_summary_matches_an_independent_count() -> None:
    snapshot = make_snapshot()
    particles = snapshot.particles
    summary = summarize_acquisition(particles)
    du, dv = particles.ctf.defocus_u_angstrom, particles.ctf.defocus_v_angstrom
    assert summary.particles == len(particles.indices)
    assert summary.micrographs == len(set(map(str, particles.stack_paths)))
    assert summary.defocus_median_um == pytest.approx(float(np.median((du + dv) / 2e4)))
    assert summary.astigmatism_median_angstrom == pytest.approx(float(np.median(np.abs(du - dv))))
    assert sum(summary.defocus_counts) == len(particles.indices)
    assert summary.defocus_p5_um <= summary.defocus_median_um <= summary.defocus_p95_um
    json.dumps(summary.to_json(), allow_nan=False)


def test_the_timeline_survives_on_disk_and_a_torn_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "monitoring_timeline.jsonl"
    points = [VerdictPoint(100.0 + i, 1000 * i, "collect", 0.7, 0.2, 800 * i, 5000.0, 21.0) for i in range(5)]
    for point in points:
        append_timeline(path, point)
    with open(path, "a") as handle:
        handle.write('{"time": 200, "particles": 9')  # torn by a crash
    loaded, problems = load_timeline(path)
    assert loaded == tuple(points)
    assert len(problems) == 1 and f"{path}:6" in problems[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**point_to_json(points[0]), "verdict": "maybe"}) + "\n")
    loaded, problems = load_timeline(bad)
    assert loaded == () and "verdict must be one of" in problems[0]
    assert load_timeline(tmp_path / "absent.jsonl") == ((), [])


def test_a_long_timeline_is_thinned_not_cut() -> None:
    points = [VerdictPoint(float(i), i, "collect", 0.9) for i in range(3 * MAX_TIMELINE_POINTS)]
    kept = thin_timeline(points)
    assert len(kept) <= MAX_TIMELINE_POINTS
    assert kept[0] == points[0] and kept[-1] == points[-1]  # the start of the session stays
    assert [p.unix_time for p in kept] == sorted(p.unix_time for p in kept)


def test_a_restored_timeline_continues(tmp_path: Path) -> None:
    monitor = SessionMonitor(clock=lambda: 500.0)
    monitor.restore_timeline("g", [VerdictPoint(100.0, 100, "pending", 0.05)])
    state = monitor.publish("g", make_snapshot())
    assert [p.unix_time for p in state.timeline] == [100.0, 500.0]


def test_rates_are_shown_after_ten_seconds_but_judged_later() -> None:
    clock = [1000.0]
    monitor = SessionMonitor(clock=lambda: clock[0])
    monitor.record_classified("g", 0, at=1000.0)
    monitor.record_classified("g", 120, at=1012.0)
    clock[0] = 1012.0
    state = monitor.publish("g", make_snapshot())
    assert state.shown_classified_per_second == pytest.approx(10.0)
    assert state.classified_per_second is None  # the verdict waits for min_rate_span_seconds
    assert state.to_json()["classified_per_hour"] == pytest.approx(36000.0)


def test_an_early_verdict_is_outlined_and_says_so() -> None:
    clock = [0.0]
    monitor = SessionMonitor(clock=lambda: clock[0])
    for i, n in enumerate((1000, 2500)):
        clock[0] = 60.0 * (i + 1)
        monitor.record_classified("g", n)
        state = monitor.publish("g", make_snapshot())
    assert state.verdict.state != "pending"
    page = render_status_page(monitor.states(), now=clock[0])
    if state.verdict.confidence < EARLY_CONFIDENCE:
        assert f'class="badge early verdict-{state.verdict.state}"' in page and "early call" in page
    else:
        assert f'class="badge verdict-{state.verdict.state}"' in page and "settled" in page
    assert "How settled the verdict is, not how good the grid is" in page


def test_chart_axes_ticks_and_scale_bar() -> None:
    assert nice_ticks(0, 9000, 4) == [0, 2500, 5000, 7500]
    assert nice_ticks(0, 8000, 4) == [0, 2000, 4000, 6000, 8000]
    assert nice_ticks(0, 1, 3) == [0, 0.5, 1]
    svg = line_chart_svg([(0.0, 1.0), (60.0, 3.0), (120.0, 2.0)], label="x", colour="#fff")
    assert re.search(r'data-points="3"', svg) and svg.count("<text") >= 4
    assert "not known yet" in line_chart_svg([], label="x", colour="#fff")
    points = [VerdictPoint(0, 1000, "pending", 0.5), VerdictPoint(1, 3000, "collect", 0.6)]
    strip = verdict_strip_svg(points, width=600)
    widths = [float(w) for w in re.findall(r'class="segment[^"]*" x="[\d.]+" y="\d+" width="([\d.]+)"', strip)]
    assert widths == pytest.approx([200.0, 400.0])  # 0–1000 pending, 1000–3000 collect, on a 3000 axis
    assert scale_bar_angstrom(200.0) == 50.0 and scale_bar_angstrom(500.0) == 100.0
