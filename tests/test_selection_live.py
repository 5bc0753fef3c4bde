"""Selecting from a live session: a snapshot is requested through the engine's control socket, waited
for, then read from the session's snapshot folder (with the session's user overrides)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import starfile
import zmq
from ports import free_port
from snapshot_factory import make_snapshot

from otf2d.control.client import EngineTimeoutError
from otf2d.core.cli import main as otf2d
from otf2d.core.errors import InputError
from otf2d.core.wire import KIND_REPLY, KIND_SNAPSHOT, KIND_STATUS, decode_control, encode_control
from otf2d.monitoring.quality import save_overrides
from otf2d.monitoring.snapshots import write_snapshot
from otf2d.selection.live import request_snapshot


class ControlEngine:
    """A ROUTER answering ``status`` and ``snapshot`` requests as the engine does (otf2d.core.wire replies).

    ``snapshot`` of a known session calls ``write(iteration)`` and reports the session's snapshot
    folder in ``status`` once written (after ``delay_polls`` status requests).
    """

    def __init__(self, port: int, sessions: dict[str, Path], write: Callable[[str, int], None], delay_polls: int = 2):
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.sessions = sessions
        self.write = write
        self.delay_polls = delay_polls
        self.requests: list[dict[str, Any]] = []
        self._written: dict[str, int] = {}
        self._pending: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ControlEngine:
        self._thread.start()
        assert self._ready.wait(5.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _result(self, message: dict[str, Any]) -> dict[str, Any]:
        name = message.get("session")
        if name not in self.sessions:
            raise InputError(None, f"no session named {name!r}")
        folder = self.sessions[name]
        if message["kind"] == KIND_SNAPSHOT:
            iteration = self._written.get(name, 0) + 1
            self._pending[name] = (iteration, self.delay_polls)
            return {"session": name, "scheduled": True, "iteration": iteration, "directory": str(folder)}
        if name in self._pending:
            iteration, polls = self._pending[name]
            if polls <= 0:
                self.write(name, iteration)
                self._written[name] = iteration
                del self._pending[name]
            else:
                self._pending[name] = (iteration, polls - 1)
        done = self._written.get(name)
        last = None if done is None else {"iteration": done, "directory": str(folder), "n_particles": 50}
        return {"sessions": {name: {"last_snapshot": last, "snapshot_error": None}}}

    def _run(self) -> None:
        router = zmq.Context.instance().socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(self.endpoint)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not router.poll(20, zmq.POLLIN):
                    continue
                identity, *frames = router.recv_multipart()
                message = decode_control(frames)
                self.requests.append(message)
                if message["kind"] not in (KIND_STATUS, KIND_SNAPSHOT):
                    continue
                try:
                    reply = encode_control(
                        KIND_REPLY, request_id=message["request_id"], ok=True, result=self._result(message)
                    )
                except InputError as exc:
                    reply = encode_control(KIND_REPLY, request_id=message["request_id"], ok=False, error=str(exc))
                with contextlib.suppress(zmq.ZMQError):
                    router.send_multipart([identity, *reply])
        finally:
            router.close(linger=0)


class FakeClient:
    """``snapshot``/``status`` of a client whose snapshot appears after ``after`` polls (or fails)."""

    def __init__(self, after: int, error: str | None = None, earlier_error: str | None = None) -> None:
        self.after, self.error, self.earlier_error, self.polls = after, error, earlier_error, -1

    def snapshot(self, session: str) -> dict[str, Any]:
        return {"iteration": 4, "directory": "/data/sessions/g/snapshots"}

    def status(self, session: str) -> dict[str, Any]:
        self.polls += 1
        written = {"iteration": 4, "directory": "/data/sessions/g/snapshots", "n_particles": 9}
        error = self.earlier_error if self.polls == 0 or self.error is None else self.error
        last = written if self.polls > self.after else {"iteration": 3, "directory": "x", "n_particles": 1}
        return {"sessions": {session: {"last_snapshot": last, "snapshot_error": error}}}


def test_request_snapshot_waits_for_the_new_iteration() -> None:
    ticks = iter(np.arange(0.0, 100.0, 0.25))
    client = FakeClient(after=5, earlier_error="OSError: an older failure")
    live = request_snapshot(client, "g", wait_s=10.0, clock=lambda: float(next(ticks)), sleep=lambda s: None)
    assert live.iteration == 4 and live.n_particles == 9 and str(live.directory) == "/data/sessions/g/snapshots"
    assert client.polls == 6  # one status before the request, then until iteration 4 appears
    with pytest.raises(EngineTimeoutError, match="not written within 2 s"):
        ticks = iter(np.arange(0.0, 100.0, 0.25))
        request_snapshot(
            FakeClient(after=1000), "g", wait_s=2.0, clock=lambda: float(next(ticks)), sleep=lambda s: None
        )
    with pytest.raises(InputError, match="could not write snapshot 4 of session 'g': OSError: disk full"):
        request_snapshot(FakeClient(after=1000, error="OSError: disk full"), "g", sleep=lambda s: None)


def test_select_from_a_live_session_with_its_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    session_dir = tmp_path / "data" / "sessions" / "grid3"
    order = [2, 0, 5, 1, 4, 3]  # engine class of snapshot class i + 1

    def write(name: str, iteration: int) -> None:
        snapshot = make_snapshot(iteration=iteration, parameters={"engine_class_of_snapshot_class": order})
        write_snapshot(snapshot, session_dir / "snapshots", project_dir=project, session=name)

    # the user marked engine classes 1 and 2 (snapshot classes 2 and 4) good: the synthetic
    # patterns all score as junk, so --auto keeps exactly those
    session_dir.mkdir(parents=True)
    save_overrides(session_dir / "class_overrides.json", {1: "good", 2: "good"})
    out = tmp_path / "Select" / "live"
    with ControlEngine(free_port(), {"grid3": session_dir / "snapshots"}, write) as engine:
        argv = ["select", "grid3", "--engine", engine.endpoint, "--out", str(out), "--auto", "--wait", "20"]
        code = otf2d([*argv, "--project-dir", str(project)])
        kinds = [r["kind"] for r in engine.requests]
    assert code == 0, capsys.readouterr().err
    assert KIND_SNAPSHOT in kinds and kinds.count(KIND_STATUS) >= 3  # it waited for the snapshot
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "live session 'grid3'" in summary and "user overrides applied" in summary
    particles = starfile.read(out / "particles.star", always_dict=True)["particles"]
    assert sorted(set(particles["rlnClassNumber"])) == [2, 4]
    snapshot = make_snapshot(iteration=1)
    assert len(particles) == int(snapshot.particle_counts[1] + snapshot.particle_counts[3])
    record = json.loads((out / "selection.json").read_text())
    assert record["source"]["data_star"].endswith("snapshots/run_it001_data.star")
    assert record["user_overrides"] == {"2": "good", "4": "good"}


def test_an_unknown_live_session_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ControlEngine(free_port(), {}, lambda name, iteration: None) as engine:
        code = otf2d(["select", "nope", "--engine", engine.endpoint, "--out", str(tmp_path / "o"), "--timeout", "5"])
    assert code == 2
    assert "no session named 'nope'" in capsys.readouterr().err
