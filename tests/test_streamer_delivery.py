"""The streamer against a fake engine over real ZeroMQ sockets on loopback."""

from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import starfile
from fake_engine import FakeEngine
from ports import free_port
from streamer_harness import SESSION, fast_config, running, sample, simulate, truth_keys, wait_until

from otf2d.core.errors import ConfigError
from otf2d.streamer.daemon import Streamer
from otf2d.streamer.ledger import FileState, Ledger


def ledger_counts(path: Path) -> dict:
    ledger = Ledger(path, session=SESSION)
    try:
        return ledger.counts()
    finally:
        ledger.close()


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_live_session_every_particle_once(tmp_path: Path) -> None:
    """The simulator writes while the streamer runs (inotify): each particle arrives exactly once."""
    project, ledger = tmp_path / "project", tmp_path / "ledger.sqlite"
    project.mkdir()
    with (
        FakeEngine(free_port()) as engine,
        running(fast_config(project, ledger, engine.endpoint, metrics_port=0)) as streamer,
    ):
        summary = simulate(project, n_particles=240, n_micrographs=8, rate_per_minute=12000)
        expected = truth_keys(project)
        assert len(expected) == summary.n_particles == 240
        assert engine.wait_for_keys(240, 10.0), f"only {engine.n_keys()} of 240 particles arrived"
        wait_until(lambda: sample(streamer, "otf2d_streamer_backlog_batches") == 0, 5.0, "an empty backlog")
        assert set(engine.keys) == expected
        assert max(engine.keys.values()) == 1
        assert engine.identities == {SESSION.encode()}
        assert not engine.decode_errors
        n_messages = engine.n_messages

        # RELION rewrites particles.star on every pass: a rewrite with nothing new sends nothing
        job_star = project / "Extract/job005/particles.star"
        before = Ledger(ledger, session=SESSION)
        planned_before = before.last_planned(str(job_star))
        before.close()
        blocks = starfile.read(job_star, always_dict=True)
        time.sleep(0.05)
        starfile.write(blocks, job_star.with_name("particles.star.tmp"))
        os.replace(job_star.with_name("particles.star.tmp"), job_star)

        def reread() -> bool:
            check = Ledger(ledger, session=SESSION)
            try:
                record = check.file(str(job_star))
                return bool(record and record.planned_at != planned_before and record.state == FileState.ACKED)
            finally:
                check.close()

        wait_until(reread, 5.0, "particles.star to be read again")
        time.sleep(0.3)
        assert engine.n_messages == n_messages

        with urllib.request.urlopen(f"http://127.0.0.1:{streamer.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    counts = ledger_counts(ledger)
    assert counts["particles"]["acked"] == counts["particle_keys"] == summary.n_particles
    assert counts["files"]["acked"] == summary.n_micrographs + 1  # the _extract.stars and particles.star
    assert counts["batches"]["acked"] == len(engine.msg_ids) == n_messages
    assert metric_value(text, "otf2d_streamer_particles_acked_total") == 240
    assert metric_value(text, "otf2d_streamer_batches_acked_total") == n_messages
    assert metric_value(text, "otf2d_streamer_files_quarantined_total") == 0


def test_initial_scan_and_once(tmp_path: Path) -> None:
    """Files written before the streamer starts are found; --once exits when all is acknowledged."""
    project, ledger = tmp_path / "project", tmp_path / "ledger.sqlite"
    summary = simulate(project, n_particles=90, n_micrographs=3)
    with FakeEngine(free_port()) as engine:
        streamer = Streamer(fast_config(project, ledger, engine.endpoint, once=True))
        thread = threading.Thread(target=streamer.run, daemon=True)
        thread.start()
        thread.join(10.0)
        assert not thread.is_alive(), "--once did not return"
    assert set(engine.keys) == truth_keys(project) and max(engine.keys.values()) == 1
    counts = ledger_counts(ledger)
    assert counts["particles"]["acked"] == summary.n_particles == 90
    assert counts["batches"]["pending"] == counts["batches"]["sent"] == 0


def test_polling_observer(tmp_path: Path) -> None:
    project, ledger = tmp_path / "project", tmp_path / "ledger.sqlite"
    project.mkdir()
    with FakeEngine(free_port()) as engine:
        config = fast_config(project, ledger, engine.endpoint, observer="polling", rescan_interval_s=3600.0)
        with running(config):
            time.sleep(0.3)  # the observer's first snapshot is taken: what follows arrives as events
            simulate(project, n_particles=100, n_micrographs=4, rate_per_minute=12000)
            assert engine.wait_for_keys(100, 10.0), f"only {engine.n_keys()} of 100 arrived"
    assert set(engine.keys) == truth_keys(project) and max(engine.keys.values()) == 1


def test_engine_down_then_up(tmp_path: Path) -> None:
    """No engine: the backlog waits in the ledger (nothing in flight); then it catches up, window ≤ W."""
    project, ledger = tmp_path / "project", tmp_path / "ledger.sqlite"
    project.mkdir()
    port = free_port()
    window = 3
    config = fast_config(project, ledger, f"tcp://127.0.0.1:{port}", window=window, batch_size=10)
    with running(config) as streamer:
        simulate(project, n_particles=160, n_micrographs=4)

        def all_planned() -> bool:
            return sample(streamer, "otf2d_streamer_backlog_particles") == 160

        wait_until(all_planned, 5.0, "every particle to be planned into the ledger")
        time.sleep(0.5)
        assert streamer.sender is not None and streamer.sender.in_flight == 0  # nothing queued in memory
        assert sample(streamer, "otf2d_streamer_backpressure_seconds_total") > 0
        with FakeEngine(port, ack_delay_s=0.05) as engine:
            assert engine.wait_for_keys(160, 10.0), f"only {engine.n_keys()} of 160 arrived"
            wait_until(lambda: sample(streamer, "otf2d_streamer_backlog_batches") == 0, 5.0, "an empty backlog")
        assert streamer.sender.max_in_flight_seen <= window
    assert engine.max_unacked <= window
    assert set(engine.keys) == truth_keys(project) and max(engine.keys.values()) == 1
    assert ledger_counts(ledger)["particles"]["acked"] == 160


def test_slow_engine_window_and_lost_acks(tmp_path: Path) -> None:
    """A slow engine that loses ACKs: at most W in flight, lost ones re-sent with the same msg_id."""
    project, ledger = tmp_path / "project", tmp_path / "ledger.sqlite"
    simulate(project, n_particles=120, n_micrographs=3)
    window = 2
    with FakeEngine(free_port(), ack_delay_s=0.1, drop_acks=2) as engine:
        config = fast_config(project, ledger, engine.endpoint, window=window, batch_size=10, ack_timeout_s=0.5)
        with running(config) as streamer:
            assert engine.wait_for_keys(120, 10.0)
            wait_until(lambda: sample(streamer, "otf2d_streamer_backlog_batches") == 0, 5.0, "an empty backlog")
            assert sample(streamer, "otf2d_streamer_batches_resent_total") >= 2
    assert engine.max_unacked <= window
    by_id: dict[str, list[tuple[tuple[str, ...], tuple[int, ...]]]] = {}
    for header in engine.headers:
        by_id.setdefault(header["msg_id"], []).append((tuple(header["stack_paths"]), tuple(header["indices"])))
    resent = {m: v for m, v in by_id.items() if len(v) > 1}
    assert len(resent) >= 2
    assert all(len(set(v)) == 1 for v in resent.values())  # a re-send carries the same particles
    assert max(engine.keys.values()) == 1 and set(engine.keys) == truth_keys(project)
    assert any(h.get("attempt", 1) >= 2 for h in engine.headers)


def test_reject_makes_a_dead_letter(tmp_path: Path) -> None:
    project, ledger = tmp_path / "project", tmp_path / "ledger.sqlite"
    simulate(project, n_particles=40, n_micrographs=2)
    poisoned = "Extract/job005/Movies/mic_00002_extract.star"

    def reject(header: dict) -> str | None:
        return "poison for the test" if header["source"] == poisoned else None

    with FakeEngine(free_port(), reject=reject) as engine:
        with running(fast_config(project, ledger, engine.endpoint, ack_timeout_s=0.3)) as streamer:
            assert engine.wait_for_keys(20, 10.0)
            wait_until(
                lambda: sample(streamer, "otf2d_streamer_batches_dead_letter_total") >= 2, 5.0, "the dead letters"
            )
            time.sleep(0.8)  # longer than the ACK timeout: a dead letter is never re-sent
        assert engine.pings >= 1  # idle for longer than the heartbeat interval: the streamer pinged
        rejected = [h for h in engine.headers if h["source"] == poisoned]
    assert len(rejected) == len({h["msg_id"] for h in rejected}) == 2  # 20 particles in batches of 16: 2 messages
    check = Ledger(ledger, session=SESSION)
    dead = check.dead_letters()
    record = check.file(str(project / poisoned))
    check.close()
    assert {m for m, _, _ in dead} == {h["msg_id"] for h in rejected}
    assert all("poison for the test" in reason for _, _, reason in dead)
    assert record is not None and record.state == FileState.REJECTED


def test_stack_gone_at_send_time_is_a_dead_letter(tmp_path: Path) -> None:
    project, ledger = tmp_path / "project", tmp_path / "ledger.sqlite"
    simulate(project, n_particles=20, n_micrographs=1)
    port = free_port()
    with running(fast_config(project, ledger, f"tcp://127.0.0.1:{port}")) as streamer:
        wait_until(lambda: sample(streamer, "otf2d_streamer_backlog_particles") == 20, 5.0, "the plan")
        (project / "Extract/job005/Movies/mic_00001.mrcs").unlink()
        with FakeEngine(port) as engine:
            dead = "otf2d_streamer_batches_dead_letter_total"
            wait_until(lambda: sample(streamer, dead) == 2, 5.0, "the dead letters")
    assert engine.n_messages == 0
    check = Ledger(ledger, session=SESSION)
    dead_letters = check.dead_letters()
    check.close()
    assert len(dead_letters) == 2 and all("cannot read the batch back" in r for _, _, r in dead_letters)


def test_incomplete_stack_waits_and_corrupt_file_is_quarantined(tmp_path: Path) -> None:
    """Through the daemon: a truncated stack is held back until complete; garbage is quarantined."""
    staging, project, ledger = tmp_path / "staging", tmp_path / "project", tmp_path / "ledger.sqlite"
    simulate(staging, n_particles=20, n_micrographs=1)
    movies = project / "Extract/job005/Movies"
    movies.mkdir(parents=True)
    shutil.copy(staging / "Extract/job005/particles.star", project / "Extract/job005/particles.star")
    stack_bytes = (staging / "Extract/job005/Movies/mic_00001.mrcs").read_bytes()
    stack = movies / "mic_00001.mrcs"
    with FakeEngine(free_port()) as engine:
        config = fast_config(project, ledger, engine.endpoint, max_bad_attempts=2, particles_star_interval_s=60.0)
        with running(config) as streamer:
            # the stack is still being written when its _extract.star appears
            stack.write_bytes(stack_bytes[: len(stack_bytes) // 2])
            shutil.copy(staging / "Extract/job005/Movies/mic_00001_extract.star", movies / "x.tmp")
            os.replace(movies / "x.tmp", movies / "mic_00001_extract.star")
            (movies / "broken_extract.star").write_text("data_images\nloop_\n_rlnImageName #1\nnot@an@image\n")
            time.sleep(1.0)
            assert engine.n_keys() == 0
            assert sample(streamer, "otf2d_streamer_files_waiting") >= 1
            stack.write_bytes(stack_bytes)  # complete now; no new event for the star: the gate retries
            assert engine.wait_for_keys(20, 10.0)
            wait_until(lambda: sample(streamer, "otf2d_streamer_files_quarantined_total") >= 1, 5.0, "the quarantine")
    check = Ledger(ledger, session=SESSION)
    quarantined = check.quarantined()
    check.close()
    assert [Path(p).name for p, _ in quarantined] == ["broken_extract.star"]
    assert quarantined[0][1]  # with a reason
    assert max(engine.keys.values()) == 1


def test_missing_watch_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Streamer(fast_config(tmp_path / "missing", tmp_path / "l.sqlite", "tcp://127.0.0.1:1")).run()
