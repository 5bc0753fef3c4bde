"""The streamer ends a collection: ``otf2d stream --once --close-session`` against a real engine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from pipeline_helpers import (
    ROOT,
    describe_failure,
    engine_argv,
    engine_ports,
    http_text,
    samples,
    simulate_argv,
    started,
    stream_argv,
    wait_for_engine,
)

pytestmark = pytest.mark.slow
SESSION = "krios1-done"


def test_the_streamer_closes_the_session_after_its_last_particle(tmp_path: Path) -> None:
    project = tmp_path / "project"
    made = subprocess.run(simulate_argv(project, 120, 3), capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    ports = engine_ports()
    with started("engine", engine_argv(tmp_path / "data", ports), tmp_path / "logs") as engine:
        wait_for_engine(ports.endpoint, engine)
        ledger = tmp_path / "ledger.sqlite"
        refused = subprocess.run(
            stream_argv(project, ports.endpoint, SESSION, ledger, "--close-session"),
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert refused.returncode == 2 and "--close-session needs --once" in refused.stderr
        done = subprocess.run(
            stream_argv(project, ports.endpoint, SESSION, ledger, "--once", "--close-session"),
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:] + describe_failure(engine)
        assert f"{SESSION}: closed on the engine; 120 particles received" in done.stdout
        record = json.loads((tmp_path / "data" / "sessions" / SESSION / "lifecycle.json").read_text())
        assert record["closed_by"] == "user"
        metrics = samples(http_text(f"{ports.url}/metrics"))
        assert metrics[f'otf2d_session_state{{session="{SESSION}",state="closed"}}'] == 1.0
        empty = tmp_path / "empty"  # nothing sent: the engine has no such session and refuses
        empty.mkdir()
        unknown = subprocess.run(
            stream_argv(empty, ports.endpoint, "nope", tmp_path / "other.sqlite", "--once", "--close-session"),
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert unknown.returncode == 2, unknown.stderr[-2000:]
        assert "the engine refused to close 'nope': no session named 'nope'" in unknown.stderr
        assert engine.terminate() == 0, describe_failure(engine)
