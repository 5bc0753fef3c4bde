"""Session lifecycle: open → idle → closed, persistence, and what leaves /metrics (real files, real collector)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monitoring_truth import good_grid, junk_grid, monitor_with_grids
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from otf2d.core.config import LifecycleConfig, load_config
from otf2d.core.errors import ConfigError, InputError
from otf2d.monitoring.lifecycle import (
    CLOSED,
    IDLE,
    OPEN,
    Activity,
    SessionLifecycle,
    load_activity,
    save_activity,
)
from otf2d.monitoring.metrics import register_monitoring

T0 = 1_700_000_000.0
CONFIG = LifecycleConfig(idle_after_minutes=10.0, close_after_idle_hours=2.0, retain_closed_minutes=30.0)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_open_idle_open_again_and_closed_after_a_long_idle() -> None:
    changes: list[tuple[str, str | None]] = []
    clock = Clock(T0)
    life = SessionLifecycle(CONFIG, clock=clock, on_change=lambda s, a: changes.append((s, a.closed_by)))
    assert life.observe("g", 100, 50) == OPEN
    clock.t += 9 * 60
    assert life.observe("g", 100, 100) == OPEN  # classifying the backlog is not a new particle
    clock.t += 2 * 60
    assert life.observe("g", 100, 100) == IDLE
    clock.t += 60
    assert life.observe("g", 150, 100) == OPEN
    clock.t += 2 * 3600
    assert life.observe("g", 150, 150) == CLOSED
    activity = life.activities()["g"]
    assert activity.closed_by == "idle" and activity.closed_at == pytest.approx(clock.t)
    assert activity.last_particle_time == pytest.approx(T0 + 12 * 60)
    assert changes == [("g", None), ("g", None), ("g", "idle")]  # idle, open, closed


def test_a_user_close_is_kept_and_new_particles_reopen_the_session() -> None:
    clock = Clock(T0)
    life = SessionLifecycle(CONFIG, clock=clock)
    life.observe("g", 10, 10)
    first = life.close("g")
    clock.t += 60
    assert life.close("g").closed_at == first.closed_at  # idempotent
    assert life.observe("g", 10, 10) == CLOSED
    assert life.observe("g", 11, 10) == OPEN
    with pytest.raises(InputError, match="no session named 'nope'"):
        life.close("nope")


def test_the_lifecycle_survives_a_restart_without_counting_the_journal_as_new(tmp_path: Path) -> None:
    clock = Clock(T0)
    life = SessionLifecycle(CONFIG, clock=clock)
    life.observe("g", 500, 500)
    saved = life.close("g")
    save_activity(tmp_path / "lifecycle.json", saved)
    restored = load_activity(tmp_path / "lifecycle.json")
    assert restored is not None and restored.closed_at == saved.closed_at and restored.closed_by == "user"
    clock.t += 3600
    again = SessionLifecycle(CONFIG, clock=clock)
    again.restore("g", restored)
    assert again.observe("g", 500, 500) == CLOSED  # the first counts after a restart are a baseline
    assert load_activity(tmp_path / "absent.json") is None


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{", "not a readable lifecycle record"),
        ('{"schema": 2}', "schema 1"),
        ('{"schema": 1, "last_particle_time": "yesterday"}', "last_particle_time must be a unix time"),
        ('{"schema": 1, "last_particle_time": 1.0, "closed_at": true}', "closed_at must be"),
        ('{"schema": 1, "last_particle_time": 1.0, "closed_by": "cat"}', "closed_by must be"),
    ],
)
def test_a_bad_lifecycle_file_is_a_clear_refusal(tmp_path: Path, document: str, message: str) -> None:
    path = tmp_path / "lifecycle.json"
    path.write_text(document)
    with pytest.raises(InputError, match=message) as info:
        load_activity(path)
    assert str(path) in str(info.value)


def test_the_config_table_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text("[sessions]\nidle_after_minutes = 5\nretain_closed_minutes = 0\n")
    loaded = load_config(path).sessions
    assert loaded.idle_after_minutes == 5.0 and loaded.retain_closed_minutes == 0.0
    path.write_text("[sessions]\nidle_after_minutes = 0\n")
    with pytest.raises(ConfigError, match="idle_after_minutes must be > 0"):
        load_config(path)
    path.write_text("[sessions]\nidel_after_minutes = 5\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(path)


def _scrape(life: SessionLifecycle, monitor, now: float) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    register_monitoring(monitor.states, registry, clock=lambda: now, lifecycle=life)
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def _sessions(found: dict, name: str) -> set[str]:
    return {labels["session"] for labels, _ in found.get(name, [])}


def test_a_closed_session_drops_its_class_series_then_leaves_metrics() -> None:
    monitor = monitor_with_grids({"live": good_grid(), "done": junk_grid()}, now=T0, particles_per_hour=20000.0)
    clock = Clock(T0)
    life = SessionLifecycle(CONFIG, clock=clock)
    life.observe("live", 1000, 900)
    life.observe("done", 800, 800)
    found = _scrape(life, monitor, T0)
    assert _sessions(found, "otf2d_class_particles") == {"live", "done"}
    received = {lab["session"]: v for lab, v in found["otf2d_session_received_particles_total"]}
    assert received == {"live": 1000.0, "done": 800.0}
    life.close("done")
    found = _scrape(life, monitor, T0 + 60)
    assert _sessions(found, "otf2d_class_particles") == {"live"}
    assert _sessions(found, "otf2d_verdict") == {"live", "done"}
    states = {(lab["session"], lab["state"]): v for lab, v in found["otf2d_session_state"]}
    assert states[("done", "closed")] == 1.0 and states[("live", "open")] == 1.0 and states[("done", "open")] == 0.0
    found = _scrape(life, monitor, T0 + 31 * 60)
    for name, rows in found.items():
        assert "done" not in {lab.get("session") for lab, _ in rows}, name
    assert _sessions(found, "otf2d_verdict") == {"live"}


def test_activity_json_is_strict() -> None:
    data = Activity(5, 4, T0).to_json(T0 + 30, CONFIG)
    assert data["state"] == OPEN and data["idle_seconds"] == 30.0 and "counted" not in data
    json.dumps(data, allow_nan=False)
