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


def test_every_session_alert_leaves_closed_sessions_out_and_is_tested_with_one() -> None:
    """A per-session alert is silent for a closed session, and its promtool test has a closed session beside it."""
    tests = "\n".join(path.read_text() for path in sorted((PROMETHEUS / "tests").glob("*.yml")))
    blocks = tests.split("\n  - interval:")
    session_alerts = [
        r for r in rules_file_entries(RULES) if r["kind"] == "alert" and "{{ $labels.session }}" in RULES.read_text()
    ]
    checked = 0
    for rule in session_alerts:
        if rule["name"] in ("Otf2dEngineDown", "Otf2dStreamerDown", "Otf2dStreamerFilesQuarantined"):
            continue  # targets, not sessions; a quarantined file was never delivered, closed session or not
        assert 'otf2d_session_state{state="closed"} == 1' in rule["expr"] or (
            'otf2d_session_state{state!="open"} == 1' in rule["expr"]
        ), rule
        tested = [b for b in blocks if f"alertname: {rule['name']}" in b]
        assert tested and any('state="closed"}' in b for b in tested), rule["name"]
        checked += 1
    assert checked == 6


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


def test_dashboards_hard_code_no_datasource_uid_and_can_be_imported() -> None:
    """Every panel, query and variable uses ``$datasource``; ``__inputs`` lets the import UI choose it."""
    dashboards = load_dashboards()
    assert set(dashboards) == {"facility-overview.json", "session-detail.json", "engine-health.json"}
    uids = set()
    for name, board in dashboards.items():
        uids.add(board["uid"])
        text = json.dumps(board)
        assert provisioned_uid() not in text, f"{name} names the provisioned datasource uid"
        found = set(re.findall(r'"uid": "([^"]+)"', text)) - {board["uid"]}
        assert found == {"${datasource}"}, (name, found)
        [inp] = board["__inputs"]
        assert inp["type"] == "datasource" and inp["pluginId"] == "prometheus"
        variables = board["templating"]["list"]
        assert variables[0]["name"] == "datasource" and variables[0]["type"] == "datasource"
        assert variables[0]["query"] == "prometheus"
        assert variables[0]["current"]["value"] == "${" + inp["name"] + "}"  # replaced by the import's choice
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for p in board["panels"]:
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (name, p["title"])
            for t in p.get("targets", []):
                assert t["datasource"]["uid"] == "${datasource}", (name, p["title"])
            pos = p["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, (name, p["title"])
        for variable in variables:
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == "${datasource}"
    assert len(uids) == 3


def test_session_detail_shows_the_gallery_from_a_url_the_facility_sets() -> None:
    board = load_dashboards()["session-detail.json"]
    texts = [p for p in board["panels"] if p["type"] == "text"]
    assert len(texts) == 1
    content = texts[0]["options"]["content"]
    assert texts[0]["options"]["mode"] == "html"
    assert re.search(r'<img src="\$\{gallery_url\}/sessions/\$\{session\}/gallery\.png\?t=\$\{__to\}"', content)
    assert ":8001" not in content and "127.0.0.1" not in content
    gallery_url = next(v for v in board["templating"]["list"] if v["name"] == "gallery_url")
    assert gallery_url["query"] == "/otf2d"  # Grafana's own origin, forwarded by the reverse proxy
    proxy = (DEPLOY / "proxy" / "nginx.conf").read_text(encoding="utf-8")
    assert "location /otf2d/" in proxy and "proxy_pass http://otf2d_engine/;" in proxy
    assert "deploy/proxy/README.md" in texts[0]["description"]


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


def test_streamer_example_config_is_what_stream_config_reads() -> None:
    from otf2d.streamer.cli import load_streamer_table
    from otf2d.streamer.daemon import StreamerConfig

    values = load_streamer_table(DEPLOY / "config" / "streamer.example.toml")
    config = StreamerConfig(**values)
    assert config.watch_dirs == (Path("/data/krios1/project"),) and config.session == "krios1-grid3"


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
    command = line.removeprefix("ExecStart=").replace("%i", "krios1")
    command = re.sub(r"\$\{(\w+)\}|\$(\w+)", "", command)  # environment overrides (empty by default)
    return shlex.split(command)


def test_the_engine_unit_runs_a_command_its_cli_accepts() -> None:
    argv = _exec_start(DEPLOY / "systemd" / "otf2d-engine.service")
    assert argv[0].endswith("/bin/otf2d") and argv[1] == "engine"
    parser = argparse.ArgumentParser(prog="otf2d engine")
    importlib.import_module("otf2d.engine.serving.cli").add_args(parser)
    args = parser.parse_args(argv[2:])
    assert args.http_port == 8001 and args.http_addr == "0.0.0.0"  # what Prometheus scrapes
    assert "After=network-online.target" in (DEPLOY / "systemd" / "otf2d-engine.service").read_text()


def test_the_streamer_is_a_template_unit_reading_its_instance_config(tmp_path: Path) -> None:
    """``otf2d-streamer@krios1`` runs ``otf2d stream --config /etc/otf2d/streamer-krios1.toml``."""
    from otf2d.streamer.cli import add_args, config_from_args

    assert not (DEPLOY / "systemd" / "otf2d-streamer.service").exists()
    argv = _exec_start(DEPLOY / "systemd" / "otf2d-streamer@.service")
    assert argv[0].endswith("/bin/otf2d") and argv[1:] == ["stream", "--config", "/etc/otf2d/streamer-krios1.toml"]
    parser = argparse.ArgumentParser(prog="otf2d stream")
    add_args(parser)
    args = parser.parse_args(argv[2:])
    installed = tmp_path / "streamer-krios1.toml"  # the example, installed for instance krios1
    installed.write_text((DEPLOY / "config" / "streamer.example.toml").read_text())
    args.config = installed
    config = config_from_args(args)
    assert config.metrics_port == 9101  # what Prometheus scrapes
    assert str(config.ledger_path).startswith("/var/lib/otf2d-streamer/")  # its StateDirectory
    unit = (DEPLOY / "systemd" / "otf2d-streamer@.service").read_text()
    assert "StateDirectory=otf2d-streamer" in unit and "ReadWritePaths=/var/lib/otf2d-streamer" in unit


def _exposure(unit: Path, tmp_path: Path, name: str) -> float:
    copy = tmp_path / name
    copy.write_text(unit.read_text(encoding="utf-8"))
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr[-2000:]
    return float(found.group(1))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize(
    ("unit", "instance"),
    [("otf2d-engine.service", "otf2d-engine.service"), ("otf2d-streamer@.service", "otf2d-streamer@krios1.service")],
)
def test_units_are_hardened(unit: str, instance: str, tmp_path: Path) -> None:
    """``systemd-analyze security`` rates both units 4.0 or better (they were 8.6 and 8.7, EXPOSED)."""
    exposure = _exposure(DEPLOY / "systemd" / unit, tmp_path, instance)
    print(f"\n{instance}: systemd-analyze security exposure {exposure}")
    assert exposure <= 4.0


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


# ---- container image -------------------------------------------------------------------------


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_compose_runs_only_what_exists() -> None:
    """Every service has a registry image or a build whose Dockerfile exists; every mounted file exists."""
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"engine", "prometheus", "grafana", "proxy"}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build is not None:
            dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
            assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        elif ":" in service["image"]:
            assert service["image"].split(":")[-1] not in ("", "latest"), f"{name}: pin the image version"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"
        for other in service.get("depends_on", []):
            assert other in services, f"{name} depends on unknown {other}"
        assert "command" not in service or not str(service["command"]).startswith("otf2d"), name


def test_the_dockerfile_builds_the_package_and_runs_the_engine() -> None:
    """What can be checked without a Docker daemon: sources, packages, torch pin, user, command, ports."""
    instructions = _dockerfile_instructions(ROOT / "Dockerfile")
    words = [w for w, _ in instructions]
    assert words[0] == "FROM" and instructions[0][1].startswith("python:3.11")
    copied = [rest.split()[0] for w, rest in instructions if w == "COPY"]
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert packages <= set(copied), f"packages not copied: {packages - set(copied)}"
    runs = " ".join(rest for w, rest in instructions if w == "RUN")
    makefile_torch = re.search(r"torch==([0-9.]+)", (ROOT / "Makefile").read_text()).group(1)
    assert f"torch=={makefile_torch}" in runs and 'pip install ".[engine]"' in runs
    user = next(rest for w, rest in instructions if w == "USER")
    assert user not in ("root", "0")
    entrypoint = json.loads(next(rest for w, rest in instructions if w == "ENTRYPOINT"))
    command = json.loads(next(rest for w, rest in instructions if w == "CMD"))
    assert entrypoint == ["otf2d"] and command[0] == "engine"
    parser = argparse.ArgumentParser(prog="otf2d engine")
    importlib.import_module("otf2d.engine.serving.cli").add_args(parser)
    args = parser.parse_args(command[1:])
    assert args.http_addr == "0.0.0.0" and args.http_port == 8001 and args.listen == "tcp://*:5555"
    exposed = {int(p) for w, rest in instructions if w == "EXPOSE" for p in rest.split()}
    assert exposed == {5555, 8001}
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_the_files_the_dockerfile_copies_make_a_complete_package(tmp_path: Path) -> None:
    """Build a wheel from only what the Dockerfile copies: every module and every command is in it."""
    import sys
    import zipfile

    context = tmp_path / "context"
    context.mkdir()
    for word, rest in _dockerfile_instructions(ROOT / "Dockerfile"):
        if word != "COPY" or rest.split()[0].startswith("deploy/"):
            continue
        *sources, _ = rest.split()
        for source in sources:
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [wheel] = tmp_path.glob("otf2d-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("core", "streamer", "engine", "monitoring", "simulator", "selection", "control", "demo"):
        expected = {
            f"otf2d/{p.relative_to(ROOT)}" for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts
        }
        assert expected <= names, sorted(expected - names)[:5]
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    commands = zipfile.ZipFile(wheel).read(entry).decode()
    for command in ("engine", "stream", "close", "status", "demo"):
        assert re.search(rf"^{command} = ", commands, re.MULTILINE), command
