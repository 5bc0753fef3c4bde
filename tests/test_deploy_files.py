"""deploy/: Prometheus config and rules (promtool), Grafana provisioning and dashboards, units, configs.

Grafana is checked statically: the dashboards load as JSON, are what ``build_dashboards.py``
writes, use the provisioned datasource uid in every panel, and every metric name in their
expressions (and in the rules) is one that otf2d exports — collected at test time from the
monitoring collectors, the engine's registry and the streamer's registry.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from otf2d.core.config import Otf2dConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "rules" / "otf2d.rules.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
DATASOURCE_FILE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
NEEDS_PROMTOOL = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) is absent")
#: Metric names of otf2d, and of the process collector the engine registers (``process_…``).
METRIC = re.compile(r"\b((?:otf2d|process)_[A-Za-z0-9_]+)")
RECORDED = re.compile(r"\b(otf2d:[A-Za-z0-9_:]+)")
#: Metrics that only an engine on CUDA exports (``otf2d.engine.serving.metrics``): without a GPU, the expressions
#: that use nothing else have no data in the Prometheus tests.
CUDA_ONLY_METRICS = frozenset({"otf2d_device_memory_bytes"})


def needs_cuda(expr: str) -> bool:
    """Whether ``expr`` reads only metrics of :data:`CUDA_ONLY_METRICS`."""
    used = set(METRIC.findall(expr))
    return bool(used) and used <= CUDA_ONLY_METRICS


#: Grafana variables replaced by sample values before an expression is parsed or queried.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "${session}": "grid1",
    "$session": "grid1",
}


def exported_metric_names() -> set[str]:
    """Every sample name otf2d exports: monitoring collectors, engine registry, streamer registry."""
    from otf2d.engine.serving.metrics import EngineMetrics
    from otf2d.monitoring.metrics import exported_names
    from otf2d.streamer.metrics import StreamerMetrics

    names = set(exported_names())
    for registry in (EngineMetrics().registry, StreamerMetrics("grid1").registry):
        assert isinstance(registry, CollectorRegistry)
        for family in registry.collect():
            names.update(sample.name for sample in family.samples)
            if family.type == "gauge":  # a labelled gauge has no samples until a label is bound
                names.add(family.name)
    return names


def rules_file_entries(path: Path) -> list[dict[str, str]]:
    """``record``/``alert`` name and ``expr`` of every rule in one of our rules files.

    A line-based reader for the layout of our own file (no YAML library in the environment):
    ``- record: x`` / ``- alert: x`` start a rule; ``expr:`` is inline or a ``|`` block.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    rules: list[dict[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        start = re.match(r"^\s*- (record|alert):\s*(\S+)\s*$", line)
        if start:
            rules.append({"kind": start.group(1), "name": start.group(2)})
        expr = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if expr:
            indent, value = len(expr.group(1)), expr.group(2).strip()
            if value in ("|", "|-", ">", ">-"):
                block = []
                while i + 1 < len(lines) and (
                    not lines[i + 1].strip() or len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent
                ):
                    i += 1
                    block.append(lines[i].strip())
                value = " ".join(part for part in block if part)
            rules[-1]["expr"] = value
        i += 1
    return rules


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    return exprs


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


def provisioned_uid() -> str:
    found = re.findall(r"^\s*uid:\s*(\S+)\s*$", DATASOURCE_FILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert len(found) == 1
    return found[0]


def substitute(expr: str) -> str:
    for name, sample in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, sample)
    assert "$" not in expr, expr
    return expr


# ---- Prometheus ---------------------------------------------------------------------------------


def _promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@NEEDS_PROMTOOL
def test_promtool_check_config() -> None:
    result = _promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@NEEDS_PROMTOOL
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"SUCCESS: (\d+) rules found", result.stdout)
    assert found and int(found.group(1)) == len(rules_file_entries(RULES))


@NEEDS_PROMTOOL
def test_promtool_test_rules() -> None:
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    assert tests
    result = _promtool("test", "rules", *map(str, tests))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_cover_the_required_alerts() -> None:
    alerts = {r["name"] for r in rules_file_entries(RULES) if r["kind"] == "alert"}
    required = {
        "Otf2dVerdictAbandon",
        "Otf2dJunkFractionRising",
        "Otf2dGoodParticleRateFalling",
        "Otf2dEngineDown",
        "Otf2dStreamerDown",
        "Otf2dSnapshotStale",
    }
    assert required <= alerts
    tested = set(
        re.findall(r"alertname:\s*(\S+)", "".join(p.read_text() for p in (PROMETHEUS / "tests").glob("*.yml")))
    )
    assert alerts <= tested, f"alerts without a promtool unit test: {alerts - tested}"


def test_every_metric_in_the_rules_is_exported() -> None:
    exported = exported_metric_names()
    for rule in rules_file_entries(RULES):
        used = set(METRIC.findall(rule["expr"]))
        assert used or rule["expr"].startswith("up{"), rule
        assert used <= exported, f"{rule['name']} uses {used - exported}, which nothing exports"


# ---- Grafana ------------------------------------------------------------------------------------


def test_dashboards_are_what_the_builder_writes() -> None:
    spec = importlib.util.spec_from_file_location("build_dashboards", DEPLOY / "grafana" / "build_dashboards.py")
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    assert set(builder.DASHBOARDS) == {p.name for p in DASHBOARDS.glob("*.json")}
    for name in builder.DASHBOARDS:
        assert (DASHBOARDS / name).read_text(encoding="utf-8") == builder.render(name), (
            f"{name} is stale: run python deploy/grafana/build_dashboards.py"
        )
    assert provisioned_uid() == builder.DATASOURCE_UID


def test_dashboards_load_and_every_panel_uses_the_provisioned_datasource() -> None:
    uid = provisioned_uid()
    dashboards = load_dashboards()
    assert set(dashboards) == {"facility-overview.json", "session-detail.json", "engine-health.json"}
    uids = set()
    for name, board in dashboards.items():
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for p in board["panels"]:
            assert p["datasource"] == {"type": "prometheus", "uid": uid}, (name, p["title"])
            for t in p.get("targets", []):
                assert t["datasource"]["uid"] == uid, (name, p["title"])
            pos = p["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, (name, p["title"])
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == uid
    assert len(uids) == 3


def test_session_detail_shows_the_gallery_through_a_text_panel() -> None:
    board = load_dashboards()["session-detail.json"]
    texts = [p for p in board["panels"] if p["type"] == "text"]
    assert len(texts) == 1
    content = texts[0]["options"]["content"]
    assert texts[0]["options"]["mode"] == "html"
    assert re.search(r'<img src="\$\{engine_url\}/sessions/\$\{session\}/gallery\.png\?t=\$\{__to\}"', content)
    engine_url = next(v for v in board["templating"]["list"] if v["name"] == "engine_url")
    assert engine_url["query"] == "http://ENGINE:8001"


def test_every_metric_in_the_dashboards_is_exported_or_recorded() -> None:
    exported = exported_metric_names()
    recorded = {r["name"] for r in rules_file_entries(RULES) if r["kind"] == "record"}
    for name, board in load_dashboards().items():
        for expr in dashboard_expressions(board):
            used = set(METRIC.findall(expr))
            assert used <= exported, f"{name}: {expr!r} uses {used - exported}"
            assert set(RECORDED.findall(expr)) <= recorded, f"{name}: {expr!r} uses an unrecorded rule"
            assert used or RECORDED.findall(expr) or "up{" in expr, expr


@NEEDS_PROMTOOL
def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    """promtool parses every dashboard expression (as a recording rule, variables substituted)."""
    exprs = sorted({substitute(e) for board in load_dashboards().values() for e in dashboard_expressions(board)})
    exprs = [e for e in exprs if not e.startswith("label_values(")]
    lines = ["groups:", "  - name: dashboards", "    rules:"]
    for i, expr in enumerate(exprs):
        lines += [f"      - record: dashboard:expr_{i}", f"        expr: {json.dumps(expr)}"]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text("\n".join(lines) + "\n")
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


# ---- units, configs, compose --------------------------------------------------------------------


def test_engine_example_config_loads_and_states_the_defaults() -> None:
    assert load_config(DEPLOY / "config" / "engine.example.toml") == Otf2dConfig()


def test_streamer_example_config_names_real_settings_with_their_defaults() -> None:
    from otf2d.streamer.daemon import StreamerConfig

    table = tomllib.loads((DEPLOY / "config" / "streamer.example.toml").read_text())["streamer"]
    fields = {f.name: f for f in dataclasses.fields(StreamerConfig)}
    assert set(table) <= set(fields), set(table) - set(fields)
    required = {name for name, f in fields.items() if f.default is dataclasses.MISSING}
    assert required <= set(table)
    for name, value in table.items():
        default = fields[name].default
        if default is not dataclasses.MISSING and name != "metrics_port":
            assert value == default, f"{name} = {value!r}, default {default!r}"


def _exec_start(unit: Path) -> list[str]:
    text = unit.read_text(encoding="utf-8")
    assert re.search(r"^Restart=on-failure$", text, re.MULTILINE)
    assert re.search(r"^Type=simple$", text, re.MULTILINE)
    line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    command = line.removeprefix("ExecStart=")
    samples = {
        "OTF2D_WATCH": "/data/project",
        "OTF2D_ENGINE": "tcp://gpu:5555",
        "OTF2D_SESSION": "grid1",
        "OTF2D_ENGINE_ARGS": "",
        "OTF2D_STREAMER_ARGS": "",
    }
    command = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: samples[m.group(1) or m.group(2)], command)
    return shlex.split(command)


@pytest.mark.parametrize(
    ("unit", "subcommand", "module"),
    [
        ("otf2d-engine.service", "engine", "otf2d.engine.serving.cli"),
        ("otf2d-streamer.service", "stream", "otf2d.streamer.cli"),
    ],
)
def test_systemd_units_run_commands_their_cli_accepts(unit: str, subcommand: str, module: str) -> None:
    argv = _exec_start(DEPLOY / "systemd" / unit)
    assert argv[0].endswith("/bin/otf2d") and argv[1] == subcommand
    parser = argparse.ArgumentParser(prog=f"otf2d {subcommand}")
    importlib.import_module(module).add_args(parser)
    args = parser.parse_args(argv[2:])
    # the port Prometheus scrapes (deploy/prometheus/prometheus.yml): the engine's status port, the streamer's
    assert (args.http_port if subcommand == "engine" else args.metrics_port) in (8001, 9101)
    if subcommand == "engine":
        assert args.http_addr == "0.0.0.0"  # reachable from the Prometheus host
        text = (DEPLOY / "systemd" / unit).read_text()
        assert "After=network-online.target" in text


def test_compose_file_documents_prometheus_and_grafana() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    for needle in (
        "image: prom/prometheus",
        "image: grafana/grafana-oss",
        "/etc/prometheus/prometheus.yml",
        "/etc/grafana/provisioning",
        "GF_SECURITY_ADMIN_PASSWORD",
        "/var/lib/grafana/dashboards/otf2d",
    ):
        assert needle in text
    provider = (DEPLOY / "grafana" / "provisioning" / "dashboards" / "otf2d.yml").read_text()
    assert "path: /var/lib/grafana/dashboards/otf2d" in provider
