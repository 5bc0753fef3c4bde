"""Shared pieces of the streamer tests: a small simulated session, and a streamer in a thread."""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from otf2d.core.particles import ParticleKey
from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.session import SessionSummary, simulate_session
from otf2d.streamer.daemon import Streamer, StreamerConfig

SESSION = "grid1"


def simulate(
    out: Path, n_particles: int, n_micrographs: int, rate_per_minute: float = 0.0, **kw: Any
) -> SessionSummary:
    """A small, fast session (16 px box) written into ``out`` like RELION Extract."""
    config = SimulationConfig(
        n_particles=n_particles,
        n_micrographs=n_micrographs,
        box=16,
        seed=11,
        rate_per_minute=rate_per_minute,
        **kw,
    )
    return simulate_session(config, out)


def truth_keys(project: Path, session: str = SESSION) -> set[ParticleKey]:
    """Every particle the simulator wrote, from its ground-truth table (independent of the readers)."""
    keys = set()
    with (project / "truth.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            index, stack = row["rlnImageName"].split("@", 1)
            keys.add(ParticleKey(session, stack, int(index)))
    return keys


def fast_config(project: Path, ledger: Path, engine: str, **kw: Any) -> StreamerConfig:
    """A streamer configuration with short timeouts, for tests."""
    values: dict[str, Any] = {
        "watch_dirs": (project,),
        "engine": engine,
        "session": SESSION,
        "ledger_path": ledger,
        "batch_size": 16,
        "window": 4,
        "ack_timeout_s": 1.0,
        "heartbeat_s": 0.5,
        "settle_s": 0.2,
        "retry_base_s": 0.05,
        "retry_max_s": 0.3,
        "particles_star_interval_s": 0.3,
        "poll_interval_s": 0.1,
    }
    values.update(kw)
    return StreamerConfig(**values)


@contextmanager
def running(config: StreamerConfig) -> Iterator[Streamer]:
    """Run a streamer in a thread for the duration of the block; stop and join it after."""
    streamer = Streamer(config)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            streamer.run()
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield streamer
    finally:
        streamer.stop()
        thread.join(10.0)
    assert not thread.is_alive(), "the streamer did not stop"
    if errors:
        raise errors[0]


def sample(streamer: Streamer, name: str) -> float:
    """Current value of one of the streamer's metrics (its ``session`` label is implied)."""
    value = streamer.metrics.registry.get_sample_value(name, {"session": streamer.config.session})
    if value is None:
        raise AssertionError(f"no metric {name}")
    return float(value)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until true; fail the test with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
