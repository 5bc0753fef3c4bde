"""A real Prometheus scrapes a running engine and streamer fed by the virtual microscope.

Everything is a real process: ``otf2d engine`` (status server with ``/metrics``), ``otf2d stream``
(``--metrics-port``), ``otf2d simulate`` writing micrographs throughout the test, and Debian's
``prometheus`` with the deploy rules (evaluated every second). Every expression of the Grafana
dashboards and every recording rule must return data through the HTTP API, every alert expression
must evaluate with data for each metric it uses, and ``promtool check metrics`` must accept the
engine's real exposition. The verdict thresholds are lowered (in the engine's config) so that a
session of a few hundred particles has rates, a forecast and a verdict. Bounded to about a minute.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import (
    PIPELINE_PARAMS,
    describe_failure,
    engine_argv,
    engine_ports,
    http_text,
    simulate_argv,
    started,
    stream_argv,
    wait_for_engine,
)
from ports import free_port
from test_deploy_files import (
    METRIC,
    RULES,
    dashboard_expressions,
    load_dashboards,
    needs_cuda,
    rules_file_entries,
    substitute,
)
from test_monitoring_prometheus import _wait_for_data, query

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus (Debian package) is not installed"),
]
#: The dashboards' ``$session`` (see test_deploy_files.GRAFANA_VARIABLES).
SESSION = "grid1"


def engine_config(path: Path) -> Path:
    """Classification of the pipeline tests; verdict numbers that a small, short session reaches."""
    lines = ["[classification]"]
    for key, value in PIPELINE_PARAMS.items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    lines += ["[verdict]", "min_particles = 50", "min_rate_span_seconds = 2.0", "rate_window_seconds = 60.0"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(prometheus base URL, engine status URL)`` with everything running."""
    tmp = tmp_path_factory.mktemp("pipeline-prometheus")
    logs = tmp / "logs"
    sim = tmp / "microscope"
    (sim / "Import").mkdir(parents=True)
    # one file the streamer must quarantine (no blob/path): the dashboards' quarantine series has data
    with open(sim / "Import" / "broken.cs", "wb") as broken:  # np.save(path) would append .npy
        np.save(broken, np.zeros(3, dtype=[("uid", "<u8"), ("blob/idx", "<u4")]))
    ports = engine_ports()
    streamer_port = free_port()
    prometheus_port = free_port()
    config = engine_config(tmp / "engine.toml")
    engine_cmd = engine_argv(tmp / "data", ports, "--config", str(config), "--snapshot-seconds", "1")
    with started("engine", engine_cmd, logs) as engine:
        wait_for_engine(ports.endpoint, engine)
        stream_cmd = stream_argv(
            sim, ports.endpoint, SESSION, tmp / "ledger.sqlite", "--metrics-port", str(streamer_port)
        )
        # ~40 s of micrographs: the session grows while Prometheus scrapes
        microscope_cmd = simulate_argv(sim, 1600, 40, "--rate", "2400")
        with (
            started("streamer", stream_cmd, logs) as streamer,
            started("microscope", microscope_cmd, logs) as microscope,
        ):
            rules = tmp / "otf2d.rules.yml"
            rules.write_text(RULES.read_text().replace("interval: 30s", "interval: 1s"))
            prom_config = tmp / "prometheus.yml"
            prom_config.write_text(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                f"rule_files:\n  - {rules}\n"
                "scrape_configs:\n"
                f"  - job_name: otf2d-engine\n    static_configs:\n      - targets: ['127.0.0.1:{ports.http}']\n"
                f"  - job_name: otf2d-streamer\n    static_configs:\n      - targets: ['127.0.0.1:{streamer_port}']\n"
                "        labels:\n          microscope: krios1\n"
            )
            argv = [
                "prometheus",
                f"--config.file={prom_config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ]
            with started("prometheus", argv, logs) as prometheus:
                base = f"http://127.0.0.1:{prometheus_port}"
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    assert prometheus.alive(), describe_failure(prometheus)
                    try:
                        up = query(base, "sum(up)")
                        result = up["data"]["result"] if up.get("status") == "success" else []
                        if result and float(result[0]["value"][1]) == 2:
                            break
                    except OSError:
                        pass
                    time.sleep(0.5)
                else:
                    raise AssertionError("prometheus never scraped both targets\n" + describe_failure(prometheus))
                yield base, ports.url
                for child in (engine, streamer):
                    assert child.alive(), describe_failure(child)
                assert microscope.process.poll() in (None, 0), describe_failure(microscope)
                prometheus.terminate(15)
        streamer.terminate()
        engine.terminate()


def test_every_dashboard_and_rule_expression_returns_data(pipeline: tuple[str, str]) -> None:
    base, _ = pipeline
    exprs: set[str] = set()
    for board in load_dashboards().values():
        for expr in dashboard_expressions(board):
            if expr.startswith("label_values("):
                exprs.add(expr[len("label_values(") :].split(",")[0].strip())
            else:
                exprs.add(substitute(expr))
    records = [r for r in rules_file_entries(RULES) if r["kind"] == "record"]
    exprs.update(r["expr"] for r in records)
    exprs.update(r["name"] for r in records)
    # the pipeline's engine runs on the CPU: the CUDA-only panels have no data but must evaluate
    cuda_only = {e for e in exprs if needs_cuda(e)}
    for expr in cuda_only:
        assert query(base, expr).get("status") == "success", expr
    answers = _wait_for_data(base, sorted(exprs - cuda_only))
    empty = {
        e: a.get("error", "no data")
        for e, a in answers.items()
        if not (a.get("status") == "success" and a["data"]["result"])
    }
    assert not empty, json.dumps(empty, indent=1)
    sessions = {r["metric"]["session"] for r in answers["otf2d_session_state"]["data"]["result"]}
    assert sessions == {SESSION}


def test_every_alert_expression_evaluates_with_data(pipeline: tuple[str, str]) -> None:
    base, _ = pipeline
    alerts = [r for r in rules_file_entries(RULES) if r["kind"] == "alert"]
    metrics = sorted({m for r in alerts for m in METRIC.findall(r["expr"])} | {"up"})
    answers = _wait_for_data(base, metrics)
    missing = [m for m, a in answers.items() if not a["data"]["result"]]
    assert not missing, missing
    for rule in alerts:
        answer = query(base, rule["expr"])
        assert answer.get("status") == "success", (rule["name"], answer)


def test_prometheus_sees_the_engine_counts(pipeline: tuple[str, str]) -> None:
    base, status_url = pipeline
    state = json.loads(http_text(f"{status_url}/status.json"))["sessions"][SESSION]
    answer = _wait_for_data(base, [f'otf2d_classes{{session="{SESSION}"}}'])
    [result] = next(iter(answer.values()))["data"]["result"]
    assert float(result["value"][1]) == state["n_classes"] == PIPELINE_PARAMS["n_classes"]
    received = query(base, "otf2d_particles_received_total")["data"]["result"]
    assert float(received[0]["value"][1]) > 0
    # one session: its own counter follows the engine's (sampled once a second, so it may lag a
    # scrape behind); the streamer exports process_* and build info
    engine_total = "sum(otf2d_particles_received_total) - sum(otf2d_session_received_particles_total)"
    lag = float(query(base, engine_total)["data"]["result"][0]["value"][1])
    assert 0 <= lag < float(received[0]["value"][1])
    for expr in ('process_resident_memory_bytes{job="otf2d-streamer"}', 'otf2d_build_info{job="otf2d-engine"}'):
        assert query(base, expr)["data"]["result"], expr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) is not installed")
def test_promtool_accepts_the_engine_metrics(pipeline: tuple[str, str]) -> None:
    _, status_url = pipeline
    text = http_text(f"{status_url}/metrics")
    assert "otf2d_particles_received_total" in text and "otf2d_class_particles{" in text
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
