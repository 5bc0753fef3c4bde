"""The engine's monitoring: junk scores in snapshots before they are written, user overrides that follow
their class across re-sorted snapshots and restarts, the status page and one ``/metrics`` for all.

The first tests drive :class:`otf2d.engine.serving.monitoring_hooks.EngineMonitoring` in-process with synthetic
snapshots whose engine-class order is known; the last one runs a real engine process and the
``otf2d override`` / ``otf2d status`` commands against it.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import starfile
from engine_helpers import ROOT, TestClient, make_batch, send_batches
from pipeline_helpers import (
    describe_failure,
    engine_argv,
    engine_ports,
    http_text,
    samples,
    started,
    wait_for_engine,
    wait_until,
)
from snapshot_factory import make_snapshot

from otf2d.control.client import EngineClient, EngineRequestError
from otf2d.core.config import VerdictConfig
from otf2d.core.errors import InputError
from otf2d.core.snapshot import ClassSnapshot
from otf2d.engine.serving.monitoring_hooks import (
    OVERRIDES_FILE,
    EngineMonitoring,
    overrides_for_snapshot,
)
from otf2d.monitoring.quality import load_overrides, save_overrides, score_classes
from otf2d.monitoring.state import TIMELINE_FILE, load_timeline

COUNTS = (5, 12, 0, 20, 3, 10)


def snapshot_with_order(order: list[int], iteration: int = 1) -> ClassSnapshot:
    """A synthetic snapshot whose class ``i`` is engine class ``order[i]``."""
    return make_snapshot(COUNTS, iteration=iteration, parameters={"engine_class_of_snapshot_class": order})


class Capture:
    """A stand-in for ``write_snapshot`` that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[ClassSnapshot, Path, dict[str, Any]]] = []

    def __call__(self, snapshot: ClassSnapshot, out_dir: Path, **kwargs: Any) -> str:
        self.calls.append((snapshot, Path(out_dir), kwargs))
        return "written"


def test_engine_order_and_translation_of_overrides() -> None:
    order = [3, 1, 0, 5, 2, 4]
    snapshot = snapshot_with_order(order)
    assert snapshot.engine_class_order() == order
    # engine class 4 (index 3) is shown first; engine class 1 (index 0) third
    assert overrides_for_snapshot({4: "junk", 1: "good"}, order) == {1: "junk", 3: "good"}
    assert overrides_for_snapshot({9: "junk"}, order) == {}  # a class this snapshot lacks
    for bad in (None, [0, 1], [0, 0, 1, 2, 3, 4], ["a"] * 6):
        other = dataclasses.replace(snapshot, parameters={"engine_class_of_snapshot_class": bad})
        assert other.engine_class_order() == list(range(6))


def test_snapshots_get_junk_scores_before_they_are_written(tmp_path: Path) -> None:
    capture = Capture()
    monitoring = EngineMonitoring(VerdictConfig(), write=capture)
    order = [3, 1, 0, 5, 2, 4]
    snapshot = snapshot_with_order(order)
    root = tmp_path / "sessions" / "s1"
    root.mkdir(parents=True)
    save_overrides(root / OVERRIDES_FILE, {4: "junk", 1: "good"})  # engine class numbers
    result = monitoring.write_snapshot(snapshot, root / "snapshots", project_dir="/p", session="s1")
    assert result == "written"
    written, out_dir, kwargs = capture.calls[0]
    assert out_dir == root / "snapshots"
    assert kwargs == {"project_dir": "/p", "session": "s1"}
    assert snapshot.junk_score is None and written.junk_score is not None
    # the overridden classes, where the engine order puts them; the others keep their computed score
    assert written.junk_score[0] == 1.0  # engine class 4 marked junk
    assert written.junk_score[2] == 0.0  # engine class 1 marked good
    plain = score_classes(snapshot).scores
    untouched = [1, 3, 4, 5]
    np.testing.assert_allclose(written.junk_score[untouched], plain[untouched], equal_nan=True)
    assert written.particles is snapshot.particles  # the files get every particle ...
    state = monitoring.states()["s1"]
    np.testing.assert_array_equal(state.junk_scores, written.junk_score)
    # ... the state keeps only their number (zero-stride placeholders), whatever the session's size
    kept = state.snapshot.particles
    assert len(kept) == len(snapshot.particles) == sum(COUNTS)
    assert state.to_json()["particles_in_snapshot"] == sum(COUNTS)
    for name in ("stack_paths", "class_index", "pmax", "log_likelihood"):
        assert getattr(kept, name).strides == (0,)
    assert kept.ctf.defocus_u_angstrom.strides == (0,)
    np.testing.assert_array_equal(state.class_counts, COUNTS)
    assert state.quality.overrides == {1: "junk", 3: "good"}
    # the overrides and the threshold travel with the snapshot, for the .cs and the provenance
    assert written.parameters["class_overrides"] == {"1": "junk", "3": "good"}
    assert written.junk_score_threshold == VerdictConfig().junk_score_threshold
    fields = monitoring.status_fields("s1")["monitoring"]
    assert fields["overrides"] == {"1": "junk", "3": "good"}
    assert fields["classes_populated"] == sum(1 for c in COUNTS if c > 0)
    assert monitoring.status_fields("other") == {}


def test_the_files_written_carry_the_junk_scores_flags_and_overrides(tmp_path: Path) -> None:
    """Through the real writer: ``_model.star`` and the class-average ``.cs`` read back."""
    monitoring = EngineMonitoring(VerdictConfig(junk_score_threshold=0.6))
    order = [3, 1, 0, 5, 2, 4]
    root = tmp_path / "sessions" / "s1"
    root.mkdir(parents=True)
    save_overrides(root / OVERRIDES_FILE, {4: "junk", 1: "good"})  # snapshot classes 1 and 3
    paths = monitoring.write_snapshot(snapshot_with_order(order), root / "snapshots", session="s1")
    state = monitoring.states()["s1"]
    expected = state.junk_scores
    assert expected[0] == 1.0 and expected[2] == 0.0
    classes = starfile.read(paths.model_star, always_dict=True)["model_classes"]
    np.testing.assert_allclose(classes["rlnPredictedClassScore"], 1.0 - expected, rtol=0, atol=1e-12)
    cs = np.load(paths.class_averages_cs, allow_pickle=False)
    np.testing.assert_allclose(cs["otf2d/junk_score"], expected, rtol=1e-6)
    np.testing.assert_array_equal(cs["otf2d/is_junk"].astype(bool), expected > 0.6)
    np.testing.assert_array_equal(cs["otf2d/is_junk"].astype(bool), state.quality.junk)
    assert [v.decode() for v in cs["otf2d/override"]] == ["junk", "", "good", "", "", ""]
    provenance = json.loads(paths.provenance_json.read_text())
    assert provenance["parameters"]["class_overrides"] == {"1": "junk", "3": "good"}


def test_a_broken_monitoring_step_still_writes_the_snapshot(tmp_path: Path) -> None:
    capture = Capture()
    monitoring = EngineMonitoring(write=capture)
    root = tmp_path / "s1"
    root.mkdir()
    (root / OVERRIDES_FILE).write_text("not json")  # logged and ignored
    monitoring.write_snapshot(snapshot_with_order([0, 1, 2, 3, 4, 5]), root / "snapshots", session="s1")
    assert capture.calls[-1][0].junk_score is not None
    assert monitoring.states()["s1"].quality.overrides == {}

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("monitoring failed")

    monitoring.monitor.publish = boom  # type: ignore[method-assign]
    monitoring.write_snapshot(snapshot_with_order([0, 1, 2, 3, 4, 5]), root / "snapshots", session="s1")
    assert capture.calls[-1][0].junk_score is None


def test_an_override_follows_its_class_when_the_classes_are_resorted(tmp_path: Path) -> None:
    capture = Capture()
    monitoring = EngineMonitoring(write=capture)
    root = tmp_path / "s1"
    root.mkdir()
    request = {"session": "s1", "class_number": 2, "override": "junk"}
    with pytest.raises(InputError, match="no snapshot yet"):
        monitoring.handle_override(request)
    monitoring.write_snapshot(snapshot_with_order([3, 1, 0, 5, 2, 4]), root / "snapshots", session="s1")
    reply = monitoring.handle_override(request)
    assert reply["engine_class"] == 2  # snapshot class 2 is engine class index 1
    assert load_overrides(root / OVERRIDES_FILE) == {2: "junk"}
    assert monitoring.states()["s1"].quality.overrides == {2: "junk"}
    assert bool(monitoring.states()["s1"].quality.junk[1])
    # the next snapshot shows engine class index 1 as its 5th class
    monitoring.write_snapshot(snapshot_with_order([0, 2, 3, 4, 1, 5], 2), root / "snapshots", session="s1")
    written = capture.calls[-1][0]
    assert written.junk_score[4] == 1.0
    assert monitoring.states()["s1"].quality.overrides == {5: "junk"}
    # removing it by its new number
    reply = monitoring.handle_override({"session": "s1", "class_number": 5, "override": "auto"})
    assert reply["override"] is None and reply["overrides"] == {}
    assert load_overrides(root / OVERRIDES_FILE) == {}
    for bad, message in (
        ({"class_number": 0}, "classes 1..6"),
        ({"class_number": 7}, "classes 1..6"),
        ({"override": "maybe"}, "override must be one of"),
        ({"session": "nope"}, "no snapshot yet"),
    ):
        with pytest.raises(InputError, match=message):
            monitoring.handle_override({**request, **bad})


# ---------------------------------------------------------------------------------------------- real engine

SESSION = "grid1"
PARAMS = {
    "n_classes": 4,
    "batch_size_per_class": 10,
    "online_em_iterations": 3,
    "force_max_over_poses": True,
    "seed": 1,
}


def _otf2d(*args: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run(
        [sys.executable, "-m", "otf2d.core.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def _status_json(url: str) -> dict[str, Any]:
    return dict(json.loads(http_text(f"{url}/status.json"))["sessions"].get(SESSION) or {})


def _engine_order(data: Path, iteration: int) -> list[int]:
    """``engine_class_of_snapshot_class`` recorded in a snapshot's provenance file."""
    path = data / "sessions" / SESSION / "snapshots" / f"run_it{iteration:03d}_otf2d.json"
    return [int(i) for i in json.loads(path.read_text())["parameters"]["engine_class_of_snapshot_class"]]


def _wait_snapshot(client: EngineClient, after: int) -> int:
    def newer() -> int | None:
        last = client.status(SESSION)["sessions"][SESSION].get("last_snapshot") or {}
        return int(last["iteration"]) if last.get("iteration", -1) > after else None

    return int(wait_until(newer, 60.0, f"a snapshot after {after}", interval_s=0.2))


@pytest.mark.slow
def test_status_page_metrics_and_overrides_on_a_running_engine(tmp_path: Path) -> None:
    ports = engine_ports()
    data = tmp_path / "data"
    logs = tmp_path / "logs"
    # no idle reclassification: it may renumber and resize the classes between the override and the
    # status read (that classes keep their numbers across it: tests/test_engine_reclassify.py)
    quiet = ("--snapshot-seconds", "0", "--snapshot-every", "0", "--no-revisit")
    with started("engine", engine_argv(data, ports, *quiet), logs) as engine:
        wait_for_engine(ports.endpoint, engine)
        with EngineClient(ports.endpoint, timeout_s=10.0) as client:
            client.start_session(SESSION, PARAMS)
            feeder = TestClient(ports.endpoint)
            try:
                send_batches(feeder, [(f"f:{m}", make_batch(SESSION, m, 20)) for m in range(4)])
            finally:
                feeder.close()
            wait_until(
                lambda: client.status(SESSION)["sessions"][SESSION]["particles_classified"] == 80, 60, "classified"
            )
            with pytest.raises(EngineRequestError, match="no snapshot yet"):
                client.set_class_override(SESSION, 1, "junk")
            first = int(client.snapshot(SESSION)["iteration"])
            _wait_snapshot(client, first - 1)

            state = _status_json(ports.url)
            assert state["iteration"] == first and state["particles_classified"] == 80
            assert len(state["classes"]) == 4 and state["verdict"]["state"] == "pending"
            page = http_text(f"{ports.url}/")
            assert SESSION in page and "pending" in page
            per_session = f'otf2d_session_classified_particles_total{{session="{SESSION}"}}'
            wait_until(  # the per-session counters are sampled once a second
                lambda: samples(http_text(f"{ports.url}/metrics")).get(per_session) == 80, 10, "per-session count"
            )
            metrics = samples(http_text(f"{ports.url}/metrics"))
            assert metrics["otf2d_particles_classified_total"] == 80  # engine counters ...
            assert metrics[per_session] == 80  # ... per session
            assert metrics[f'otf2d_session_received_particles_total{{session="{SESSION}"}}'] == 80
            assert metrics[f'otf2d_session_state{{session="{SESSION}",state="open"}}'] == 1.0
            assert [k for k in metrics if k.startswith("otf2d_build_info{") and 'device="cpu"' in k]
            per_class = {k: v for k, v in metrics.items() if k.startswith("otf2d_class_particles{")}
            assert len(per_class) == 4 and sum(per_class.values()) == 80

            # mark the largest class junk with the command-line client
            out = _otf2d("override", "--engine", ports.endpoint, "--session", SESSION, "--class", "1", "--as", "junk")
            assert out.returncode == 0, out.stderr + describe_failure(engine)
            assert "class 1" in out.stdout and "marked junk" in out.stdout
            stored = load_overrides(data / "sessions" / SESSION / OVERRIDES_FILE)
            engine_class = _engine_order(data, first)[0] + 1
            assert stored == {engine_class: "junk"}
            state = _status_json(ports.url)
            assert state["classes"][0]["junk"] is True and state["classes"][0]["override"] == "junk"
            metrics = samples(http_text(f"{ports.url}/metrics"))
            assert metrics[f'otf2d_class_junk{{class="{engine_class}",session="{SESSION}"}}'] == 1.0  # engine number
            assert metrics[f'otf2d_class_size_rank{{class="{engine_class}",session="{SESSION}"}}'] == 1.0
            # the override asked for a snapshot: its files carry the flag (the gallery marks the class)
            second = _wait_snapshot(client, first)
            assert second > first
            status_out = _otf2d("status", "--engine", ports.endpoint, "--session", SESSION)
            assert status_out.returncode == 0 and "verdict pending" in status_out.stdout

            refused = _otf2d(
                "override", "--engine", ports.endpoint, "--session", SESSION, "--class", "9", "--as", "good"
            )
            assert refused.returncode == 2 and "classes 1..4" in refused.stderr

            # the collection ended: close the session; its class series leave /metrics, its state says closed
            closed = _otf2d("close", "--engine", ports.endpoint, "--session", SESSION)
            assert closed.returncode == 0, closed.stderr + describe_failure(engine)
            assert f"{SESSION}: closed (by user); 80 particles received" in closed.stdout
            assert client.status(SESSION)["sessions"][SESSION]["lifecycle"]["state"] == "closed"
            status_out = _otf2d("status", "--engine", ports.endpoint, "--session", SESSION)
            assert status_out.returncode == 0 and f"{SESSION}: streaming CLOSED," in status_out.stdout, (
                status_out.stdout
            )
            metrics = samples(http_text(f"{ports.url}/metrics"))
            assert metrics[f'otf2d_session_state{{session="{SESSION}",state="closed"}}'] == 1.0
            assert not [k for k in metrics if k.startswith("otf2d_class_particles{")]
            record = json.loads((data / "sessions" / SESSION / "lifecycle.json").read_text())
            assert record["closed_by"] == "user" and record["closed_at"] > 0
            before_restart = len(load_timeline(data / "sessions" / SESSION / TIMELINE_FILE)[0])
            assert before_restart >= 2 and state["timeline"]
            unknown = _otf2d("close", "--engine", ports.endpoint, "--session", "nope")
            assert unknown.returncode == 2 and "no session named 'nope'" in unknown.stderr
        assert engine.terminate() == 0, describe_failure(engine)

    # Restart without --http-port while the default status port is taken: the engine runs on, and
    # the override is still applied to the snapshot requested at start.
    blocker = socket.socket()
    try:
        try:
            blocker.bind(("127.0.0.1", 8001))
            blocker.listen(1)
        except OSError:
            pass  # taken by something else already: just as good
        argv = [a for a in engine_argv(data, ports, *quiet) if a not in ("--http-port", str(ports.http))]
        with started("engine2", argv, logs) as engine:
            wait_for_engine(ports.endpoint, engine)
            with EngineClient(ports.endpoint, timeout_s=10.0) as client:
                mon = wait_until(
                    lambda: client.status(SESSION)["sessions"][SESSION].get("monitoring"), 60, "state after restart"
                )
                lifecycle = client.status(SESSION)["sessions"][SESSION]["lifecycle"]
            assert lifecycle["state"] == "closed" and lifecycle["closed_by"] == "user"  # kept across the restart
            assert engine.terminate() == 0, describe_failure(engine)
        # the override is on the snapshot class that is the same engine class
        assert mon["iteration"] > second
        assert mon["timeline_points"] > before_restart  # the plots over time survive the restart
        [(number, value)] = mon["overrides"].items()
        assert value == "junk"
        assert _engine_order(data, mon["iteration"])[int(number) - 1] + 1 == engine_class
        assert "no status page" in (logs / "engine2.log").read_text()
    finally:
        blocker.close()


@pytest.mark.slow
def test_a_closed_session_leaves_metrics_and_the_page_after_retain_closed(tmp_path: Path) -> None:
    """With ``retain_closed_minutes = 0`` a closed session leaves at the next sample; its files stay."""
    ports = engine_ports()
    data = tmp_path / "data"
    config = tmp_path / "engine.toml"
    config.write_text("[sessions]\nretain_closed_minutes = 0\n")
    argv = engine_argv(data, ports, "--config", str(config), "--snapshot-seconds", "0", "--snapshot-every", "0")
    with started("engine", argv, tmp_path / "logs") as engine:
        wait_for_engine(ports.endpoint, engine)
        with EngineClient(ports.endpoint, timeout_s=10.0) as client:
            for name in (SESSION, "still-open"):
                client.start_session(name, PARAMS)
            feeder = TestClient(ports.endpoint)
            try:
                send_batches(feeder, [(f"f:{m}", make_batch(SESSION, m, 20)) for m in range(4)])
                send_batches(feeder, [(f"g:{m}", make_batch("still-open", m, 20)) for m in range(4)])
            finally:
                feeder.close()
            for name in (SESSION, "still-open"):
                wait_until(lambda n=name: client.status(n)["sessions"][n]["particles_classified"] == 80, 60, name)
                client.snapshot(name)
            wait_until(lambda: len(json.loads(http_text(f"{ports.url}/status.json"))["sessions"]) == 2, 60, "states")
            client.close_session(SESSION)

            def gone() -> bool:
                page = json.loads(http_text(f"{ports.url}/status.json"))["sessions"]
                return SESSION not in page and f'session="{SESSION}"' not in http_text(f"{ports.url}/metrics")

            wait_until(gone, 30, "the closed session to leave /status.json and /metrics")
            assert "still-open" in json.loads(http_text(f"{ports.url}/status.json"))["sessions"]
            assert 'otf2d_session_state{session="still-open",state="open"} 1.0' in http_text(f"{ports.url}/metrics")
            assert client.status(SESSION)["sessions"][SESSION]["lifecycle"]["state"] == "closed"  # still known
        assert engine.terminate() == 0, describe_failure(engine)
    folder = data / "sessions" / SESSION
    assert (folder / "lifecycle.json").exists() and list((folder / "snapshots").glob("run_it*_classes.mrcs"))
