"""A real Prometheus (Debian's ``prometheus``) scrapes the status server's /metrics and a streamer's.

The engine side is the monitoring HTTP server exposing a registry that holds the engine's metrics
(``engine/serving/metrics.py``, driven by a synthetic load) and the monitoring collectors fed by simulated
grids; the streamer side is ``streamer/metrics.py``'s own exporter. Prometheus loads the deploy
rules (recording every second instead of 30 s); then every dashboard expression and every recording
rule must return data through ``/api/v1/query``, every alert expression must evaluate, and every
metric an alert uses must have data. Bounded to about a minute.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
from monitoring_truth import good_grid, junk_grid, monitor_with_grids
from ports import free_port
from test_deploy_files import (
    METRIC,
    RULES,
    dashboard_expressions,
    load_dashboards,
    rules_file_entries,
    substitute,
)

from otf2d.monitoring.http import StatusServer
from otf2d.monitoring.lifecycle import SessionLifecycle
from otf2d.monitoring.metrics import register_monitoring

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus (Debian package) is not installed"),
]
DEADLINE_SECONDS = 60.0


def query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


def drive_load(engine: Any, streamer: Any, life: SessionLifecycle, stop: threading.Event) -> None:
    """Counters and histograms that move, as a running engine and streamer would."""
    i = 0
    while not stop.is_set():
        i += 1
        life.observe("grid1", 256 * i, 250 * i)
        life.observe("grid2", 128 * i, 120 * i)
        engine.particles_received.inc(256)
        engine.particles_classified.inc(250)
        engine.particles_rejected.labels("invalid").inc(1)
        engine.particles_revisited.inc(100)
        engine.messages.labels("ack").inc()
        engine.latency.observe(2.0 + (i % 7))
        engine.step_duration.observe(0.05 + 0.01 * (i % 5))
        engine.snapshot_written(time.time())
        streamer.files_seen.inc()
        streamer.particles_acked.inc(256)
        streamer.bytes_sent.inc(1_000_000)
        streamer.backpressure_seconds.inc(0.05)
        streamer.batches_resent.inc(0)
        streamer.files_quarantined.inc(0)
        streamer.backlog_particles.set(100 + i)
        streamer.engine_up.set(1)
        stop.wait(0.25)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory):
    from otf2d.engine.serving.metrics import EngineMetrics
    from otf2d.streamer.metrics import StreamerMetrics

    tmp = tmp_path_factory.mktemp("prometheus")
    monitor = monitor_with_grids({"grid1": good_grid(), "grid2": junk_grid()}, now=time.time(), particles_per_hour=2e4)
    engine = EngineMetrics()
    engine.bind_device_memory(lambda: {"allocated": 91 * 2**20, "reserved": 480 * 2**20})  # as a CUDA engine's
    life = SessionLifecycle()
    register_monitoring(monitor.states, engine.registry, lifecycle=life)
    streamer = StreamerMetrics("grid1")
    # as the daemon reports one file in quarantine (the dashboard's "in quarantine" series and the alert)
    streamer.quarantined.labels("grid1", "missing_column").set(1)
    stop = threading.Event()
    load = threading.Thread(target=drive_load, args=(engine, streamer, life, stop), daemon=True)
    load.start()
    status = StatusServer(monitor.states, registry=engine.registry)
    status.start()
    streamer_port = streamer.serve(0, "127.0.0.1")
    rules = tmp / "otf2d.rules.yml"
    text = RULES.read_text()
    assert "interval: 30s" in text
    rules.write_text(text.replace("interval: 30s", "interval: 1s"))
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {rules}\n"
        "scrape_configs:\n"
        f"  - job_name: otf2d-engine\n    static_configs:\n      - targets: ['127.0.0.1:{status.port}']\n"
        f"  - job_name: otf2d-streamer\n    static_configs:\n      - targets: ['127.0.0.1:{streamer_port}']\n"
        "        labels:\n          microscope: krios1\n"
    )
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(tmp / 'prometheus.log').read_text()[-2000:]}")
            try:
                up = query(base, "sum(up)")
                if (
                    up.get("status") == "success"
                    and up["data"]["result"]
                    and float(up["data"]["result"][0]["value"][1]) == 2
                ):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"prometheus never scraped both targets: {(tmp / 'prometheus.log').read_text()[-2000:]}")
        yield base
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()
        stop.set()
        load.join(5)
        status.stop()
        streamer.stop()


def _wait_for_data(base: str, exprs: list[str]) -> dict[str, dict[str, Any]]:
    """Query until every expression has a result or the deadline passes; the last answers."""
    answers: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + DEADLINE_SECONDS
    pending = list(exprs)
    while pending and time.monotonic() < deadline:
        for expr in list(pending):
            answers[expr] = query(base, expr)
            if answers[expr].get("status") == "success" and answers[expr]["data"]["result"]:
                pending.remove(expr)
        if pending:
            time.sleep(1.0)
    return answers


def test_targets_are_up(prometheus: str) -> None:
    for job in ("otf2d-engine", "otf2d-streamer"):
        result = query(prometheus, f'up{{job="{job}"}}')["data"]["result"]
        assert [float(r["value"][1]) for r in result] == [1.0]


def test_every_dashboard_and_recording_expression_returns_data(prometheus: str) -> None:
    exprs: set[str] = set()
    for board in load_dashboards().values():
        for expr in dashboard_expressions(board):
            if expr.startswith("label_values("):
                metric = expr[len("label_values(") :].split(",")[0].strip()
                exprs.add(metric)
            else:
                exprs.add(substitute(expr))
    records = [r for r in rules_file_entries(RULES) if r["kind"] == "record"]
    exprs.update(r["expr"] for r in records)
    exprs.update(r["name"] for r in records)
    answers = _wait_for_data(prometheus, sorted(exprs))
    empty = {
        e: a.get("error", "no data")
        for e, a in answers.items()
        if not (a.get("status") == "success" and a["data"]["result"])
    }
    assert not empty, json.dumps(empty, indent=1)
    sessions = {r["metric"]["session"] for r in answers["otf2d_session_state"]["data"]["result"]}
    assert sessions == {"grid1", "grid2"}


def test_every_alert_expression_evaluates_and_its_metrics_have_data(prometheus: str) -> None:
    alerts = [r for r in rules_file_entries(RULES) if r["kind"] == "alert"]
    metrics = sorted({m for r in alerts for m in METRIC.findall(r["expr"])} | {"up"})
    answers = _wait_for_data(prometheus, metrics)
    missing = [m for m, a in answers.items() if not a["data"]["result"]]
    assert not missing, missing
    for rule in alerts:
        answer = query(prometheus, rule["expr"])
        assert answer.get("status") == "success", (rule["name"], answer)


def test_metrics_written_by_the_engine_and_monitoring_reach_prometheus(prometheus: str) -> None:
    answer = _wait_for_data(prometheus, ['otf2d_verdict{session="grid2",verdict="abandon"}'])
    result = next(iter(answer.values()))["data"]["result"]
    assert float(result[0]["value"][1]) == 1.0
    junk = query(prometheus, 'otf2d_junk_fraction_ratio{session="grid2"}')["data"]["result"]
    assert float(junk[0]["value"][1]) == pytest.approx(0.8)
