"""Sessions with an hour of history for the status-page tests (plots, the verdict strip, the browser)."""

from __future__ import annotations

import dataclasses

from monitoring_truth import good_grid, grid_snapshot, junk_grid

from otf2d.core.snapshot import ClassSnapshot
from otf2d.monitoring.acquisition import summarize_acquisition
from otf2d.monitoring.state import SessionMonitor

#: Scales of the grids published one after the other (particles grow, the verdict settles).
SCALES = (5, 10, 20, 40, 70, 100)


def _grown(grid: str, scale: int, iteration: int) -> ClassSnapshot:
    specs = good_grid(scale) if grid == "good" else junk_grid(scale)
    return dataclasses.replace(grid_snapshot(specs, iteration=iteration), iteration=iteration)


def monitor_with_history(now: float, grids: dict[str, str]) -> SessionMonitor:
    """A monitor whose sessions were published every 10 minutes over the hour before ``now``.

    ``grids`` maps a session name to ``"good"`` or ``"junk"``. Counts are recorded every 30 s, so
    the rates and the plots over time have data.
    """
    clock = [now - 3600.0]
    monitor = SessionMonitor(clock=lambda: clock[0])
    for name, grid in grids.items():
        clock[0] = now - 3600.0
        previous = 0
        for i, scale in enumerate(SCALES):
            snapshot = _grown(grid, scale, i + 1)
            n = len(snapshot.particles)
            for step in range(20):
                t = now - 3600.0 + 600.0 * i + 30.0 * step
                monitor.record_classified(name, int(previous + (n - previous) * (step + 1) / 20), at=t)
            clock[0] = now - 3600.0 + 600.0 * (i + 1) - 1.0
            monitor.publish(
                name, snapshot, snapshot_time=clock[0], acquisition=summarize_acquisition(snapshot.particles)
            )
            previous = n
    return monitor


__all__ = ["SCALES", "monitor_with_history"]
