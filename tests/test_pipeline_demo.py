"""``otf2d demo`` end to end: a short session runs to its summary; Ctrl-C stops every process cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import starfile
from engine_helpers import ROOT

from otf2d.demo.demo_run import (
    DemoError,
    DemoPlan,
    Observation,
    count_truth_rows,
    default_threads,
    metric_value,
    micrograph_sizes,
    particles_written,
    status_line,
)

SMALL = ["--duration", "15", "--particles", "600", "--classes", "6", "--interval", "2", "--device", "cpu"]


def demo_command(work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "otf2d.core.cli", "demo", "--dir", str(work), *extra]


@pytest.mark.slow
def test_a_short_demo_classifies_everything_and_prints_where_things_are(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        demo_command(work, *SMALL), capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240, check=False
    )
    text = out.stdout
    assert out.returncode == 0, text[-3000:] + out.stderr[-3000:]
    assert re.search(r"status page: http://127\.0\.0\.1:\d+/", text)
    assert re.search(r"^Status page: http://127\.0\.0\.1:\d+/", text, re.MULTILINE)
    assert re.search(r"^Verdict: (PENDING|COLLECT|MARGINAL|ABANDON)", text, re.MULTILINE)
    lines = [line for line in text.splitlines() if "written" in line and "classified" in line and "verdict" in line]
    assert len(lines) >= 3, text  # live status lines while the session ran
    assert "600 particles written by the microscope, 600 acknowledged to the streamer, 600 journaled and 600" in text

    [run] = list(work.glob("run-*"))
    truth = pd.read_csv(run / "microscope" / "truth.csv")
    assert len(truth) == 600
    snapshots = run / "engine" / "sessions" / "demo" / "snapshots"
    latest = json.loads((snapshots / "latest.json").read_text())
    for name in latest["files"].values():
        assert (snapshots / name).is_file()
        assert name in text or name.endswith("_otf2d.json")  # every snapshot file is named in the summary
    data = starfile.read(snapshots / latest["files"]["data_star"], always_dict=True)["particles"]
    assert sorted(data["rlnImageName"]) == sorted(truth["rlnImageName"])
    state = json.loads((run / "status.json").read_text())["sessions"]["demo"]
    assert state["particles_classified"] == 600 and state["n_classes"] == 6
    assert f"Verdict: {state['verdict']['state'].upper()}" in text
    for log in ("engine.log", "streamer.log", "microscope.log"):
        assert (run / "logs" / log).stat().st_size > 0
    assert "engine stopped cleanly" in (run / "logs" / "engine.log").read_text()
    assert "[classification]" in (run / "engine.toml").read_text()


@pytest.mark.slow
def test_ctrl_c_stops_the_demo_and_its_processes(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "demo.out"
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            demo_command(work, "--duration", "120", "--particles", "6000", "--classes", "6", "--interval", "1"),
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # until the microscope has written its first micrograph
            assert proc.poll() is None, log.read_text()
            truth = list(work.glob("run-*/microscope/truth.csv"))
            if truth and count_truth_rows(truth[0]) > 0:
                break
            time.sleep(0.5)
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert "SIGINT: stopping" in text and "stopped; what was written so far is in" in text
    [run] = list(work.glob("run-*"))
    assert "engine stopped cleanly" in (run / "logs" / "engine.log").read_text()
    assert "stopping" in (run / "logs" / "streamer.log").read_text()
    written = count_truth_rows(run / "microscope" / "truth.csv")
    assert 0 < written < 6000  # the microscope was stopped mid-session


def test_plan_status_line_and_metric_parsing() -> None:
    import argparse

    from otf2d.demo.demo_cmd import add_args

    parser = argparse.ArgumentParser()
    add_args(parser)
    plan = DemoPlan.from_args(parser.parse_args([]))
    assert (plan.particles, plan.classes, plan.micrographs) == (9000, 20, 90)
    assert plan.duration_seconds == pytest.approx(180.0)
    assert "max_resolution_angstrom = 12.0" in plan.engine_toml() and "n_classes = 20" in plan.engine_toml()
    fast = DemoPlan.from_args(
        parser.parse_args(["--rate", "600", "--particles", "300", "--classes", "3", "--standard-params"])
    )
    assert fast.duration_seconds == pytest.approx(30.0) and fast.micrographs == 3
    assert fast.engine_toml().count("=") == 1  # only n_classes
    too_few = ["--particles", "999"]  # 20 classes are built from 20 x 50 particles
    for bad in (["--particles", "0"], ["--classes", "1"], ["--rate", "0"], ["--junk-fraction", "2"], too_few):
        with pytest.raises(DemoError):
            DemoPlan.from_args(parser.parse_args(bad))
    exposition = (
        "# HELP otf2d_streamer_particles_acked_total x\n"
        'otf2d_streamer_particles_acked_total{session="demo"} 1200.0\n'
        'otf2d_streamer_particles_acked_total_extra{session="demo"} 5.0\n'
    )
    assert metric_value(exposition, "otf2d_streamer_particles_acked_total") == 1200.0
    assert metric_value(exposition, "otf2d_missing") is None
    assert [default_threads(n) for n in (1, 2, 4, 8, 16)] == [1, 1, 1, 4, 8]


def test_counting_truth_rows(tmp_path: Path) -> None:
    path = tmp_path / "truth.csv"
    assert count_truth_rows(path) == 0
    pd.DataFrame({"rlnImageName": [f"{i:06d}@a.mrcs" for i in range(1, 38)]}).to_csv(path, index=False)
    assert count_truth_rows(path) == 37


def test_particles_written_follow_the_simulator(tmp_path: Path) -> None:
    from otf2d.simulator.config import SimulationConfig
    from otf2d.simulator.session import particles_per_micrograph

    for n, m in ((600, 6), (1001, 7), (9000, 90), (5, 5)):
        assert micrograph_sizes(n, m) == particles_per_micrograph(SimulationConfig(n_particles=n, n_micrographs=m))
    movies = tmp_path / "Movies"
    assert particles_written(movies, [34, 33, 33]) == 0
    movies.mkdir()
    for name in ("mic_00001_extract.star", "mic_00002_extract.star", ".mic_00003_extract.star.tmp", "x.mrcs"):
        (movies / name).write_text("")
    assert particles_written(movies, [34, 33, 33]) == 67


def test_status_line_says_what_the_engine_does() -> None:
    collecting = Observation(12.0, 500, 500, 500, 0, "collecting", 1000, None, 20, None, None, None)
    line = status_line(collecting, None)
    assert "collecting 500/1,000" in line and "0:12" in line and "rate -" in line
    busy = Observation(75.0, 3000, 2900, 2900, 2800, "streaming", 1000, 18, 20, 0.213, "collect", 4)
    line = status_line(busy, 51.2)
    for part in ("1:15", "written 3,000", "acked 2,900", "classified 2,800", "classes 18/20", "junk 21%"):
        assert part in line
    assert "verdict collect" in line and "51/s" in line


def test_demo_does_not_import_torch() -> None:
    code = "import sys\nimport otf2d.demo.demo_cmd, otf2d.demo.demo_run, otf2d.control.override_cmd\nprint('torch' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_a_child_that_dies_is_named_with_its_log(tmp_path: Path) -> None:
    from otf2d.demo.demo_run import Child

    code = "import sys; print('engine: cannot listen on tcp://x: address in use'); sys.exit(3)"
    child = Child("engine", [sys.executable, "-c", code], tmp_path / "logs" / "engine.log")
    child.start(tmp_path)
    assert child.process is not None and child.process.wait(30) == 3
    with pytest.raises(DemoError) as info:
        child.check_alive()
    message = str(info.value)
    assert "the engine exited unexpectedly with status 3" in message
    assert str(tmp_path / "logs" / "engine.log") in message and "address in use" in message
    assert child.stop(1.0) == 3
    sleeper = Child("streamer", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log")
    sleeper.start(tmp_path)
    sleeper.check_alive()
    assert sleeper.stop(10.0) == -signal.SIGTERM
