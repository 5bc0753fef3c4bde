#!/usr/bin/env python3
"""Write the otf2d Grafana dashboards (deploy/grafana/dashboards/*.json) from one description.

Run ``python deploy/grafana/build_dashboards.py`` after editing; ``tests/test_deploy_files.py``
checks that the committed JSON is what this script writes. Standard library only.

Every panel's datasource is the provisioned Prometheus datasource with the pinned uid
:data:`DATASOURCE_UID` (``deploy/grafana/provisioning/datasources/prometheus.yml``). Metric names
are those exported by ``monitoring/metrics.py``, ``engine/serving/metrics.py`` and ``streamer/metrics.py``
and the recording rules of ``deploy/prometheus/rules/otf2d.rules.yml`` (``otf2d:…``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DATASOURCE_UID = "otf2d-prometheus"
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
OUT_DIR = Path(__file__).resolve().parent / "dashboards"
#: Where the engine's status page answers, as seen from the viewers' browsers (edit per site).
ENGINE_URL = "http://ENGINE:8001"

VERDICT_MAPPING = [
    {
        "type": "value",
        "options": {
            "0": {"text": "pending", "color": "text", "index": 0},
            "1": {"text": "collect", "color": "green", "index": 1},
            "2": {"text": "marginal", "color": "orange", "index": 2},
            "3": {"text": "abandon", "color": "red", "index": 3},
        },
    }
]
UP_MAPPING = [
    {
        "type": "value",
        "options": {
            "0": {"text": "down", "color": "red", "index": 0},
            "1": {"text": "up", "color": "green", "index": 1},
        },
    }
]


class Layout:
    """Places panels left to right in rows of 24 grid units."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def target(
    expr: str, legend: str = "", ref: str = "A", *, instant: bool = False, table: bool = False
) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DATASOURCE, "refId": ref, "expr": expr, "legendFormat": legend}
    if instant:
        t["instant"] = True
        t["range"] = False
    if table:
        t["format"] = "table"
    return t


def panel(
    layout: Layout,
    kind: str,
    title: str,
    targets: list[dict[str, Any]],
    *,
    w: int,
    h: int,
    unit: str = "",
    description: str = "",
    mappings: list[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
    custom: dict[str, Any] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    transformations: list[dict[str, Any]] | None = None,
    thresholds: list[dict[str, Any]] | None = None,
    min_value: float | None = None,
    max_value: float | None = None,
    decimals: int | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    if unit:
        defaults["unit"] = unit
    if mappings:
        defaults["mappings"] = mappings
    if custom:
        defaults["custom"] = custom
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
    if min_value is not None:
        defaults["min"] = min_value
    if max_value is not None:
        defaults["max"] = max_value
    if decimals is not None:
        defaults["decimals"] = decimals
    p: dict[str, Any] = {
        "id": layout.new_id(),
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": layout.place(w, h),
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
    }
    if description:
        p["description"] = description
    if transformations:
        p["transformations"] = transformations
    return p


def stat(layout: Layout, title: str, expr: str, *, w: int = 3, h: int = 4, **kw: Any) -> dict[str, Any]:
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "background" if kw.get("mappings") else "value",
        "graphMode": "none",
        "textMode": "value",
        "justifyMode": "center",
    }
    return panel(layout, "stat", title, [target(expr, instant=True)], w=w, h=h, options=options, **kw)


def timeseries(
    layout: Layout, title: str, targets: list[dict[str, Any]], *, w: int = 12, h: int = 8, **kw: Any
) -> dict[str, Any]:
    options = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi"},
    }
    custom = {"lineWidth": 2, "fillOpacity": 8, "showPoints": "never", "spanNulls": True}
    custom.update(kw.pop("custom", {}))
    return panel(layout, "timeseries", title, targets, w=w, h=h, options=options, custom=custom, **kw)


def verdict_timeline(layout: Layout, expr: str, *, w: int = 24, h: int = 6) -> dict[str, Any]:
    options = {
        "showValue": "never",
        "mergeValues": True,
        "alignValue": "left",
        "rowHeight": 0.8,
        "legend": {"showLegend": False},
    }
    return panel(
        layout,
        "state-timeline",
        "Verdict over time",
        [target(expr, "{{session}}")],
        w=w,
        h=h,
        mappings=VERDICT_MAPPING,
        options=options,
        custom={"fillOpacity": 80, "lineWidth": 0},
        description="Grid verdict per session: green collect, orange marginal, red abandon, grey pending.",
    )


def merged_table(
    layout: Layout,
    title: str,
    columns: list[tuple[str, str, str]],
    *,
    w: int,
    h: int,
    hide: list[str],
    mappings_for: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """A table of instant queries merged on their labels; ``columns`` = (expr, column title, unit)."""
    refs = [chr(ord("A") + i) for i in range(len(columns))]
    targets = [target(expr, ref=ref, instant=True, table=True) for (expr, _, _), ref in zip(columns, refs, strict=True)]
    overrides = []
    rename = {}
    for (_, name, unit), ref in zip(columns, refs, strict=True):
        field = f"Value #{ref}"
        rename[field] = name
        props: list[dict[str, Any]] = []
        if unit:
            props.append({"id": "unit", "value": unit})
        if mappings_for and name in mappings_for:
            props.append({"id": "mappings", "value": mappings_for[name]})
            props.append({"id": "custom.cellOptions", "value": {"type": "color-background"}})
        if props:
            overrides.append({"matcher": {"id": "byName", "options": name}, "properties": props})
    transformations = [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": dict.fromkeys(["Time", *hide], True), "renameByName": rename}},
    ]
    return panel(
        layout,
        "table",
        title,
        targets,
        w=w,
        h=h,
        overrides=overrides,
        transformations=transformations,
        options={"showHeader": True, "cellHeight": "sm"},
    )


def dashboard(
    uid: str, title: str, panels: list[dict[str, Any]], *, variables: list[dict[str, Any]], tags: list[str]
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["otf2d", *tags],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "templating": {"list": variables},
        "links": [
            {"title": "otf2d", "type": "dashboards", "tags": ["otf2d"], "asDropdown": True, "includeVars": False}
        ],
        "panels": panels,
    }


def session_variable(*, multi: bool) -> dict[str, Any]:
    query = "label_values(otf2d_verdict, session)"
    return {
        "name": "session",
        "label": "Session",
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "allValue": ".*" if multi else None,
        "current": {},
        "options": [],
    }


def facility_overview() -> dict[str, Any]:
    lay = Layout()
    sel = 'session=~"$session"'
    panels = [
        stat(lay, "Engines up", 'sum(up{job="otf2d-engine"})', w=4, description="otf2d engines answering Prometheus"),
        stat(
            lay, "Streamers up", 'sum(up{job="otf2d-streamer"})', w=4, description="microscope-side streamers answering"
        ),
        stat(
            lay,
            "Collect",
            'count(otf2d_verdict{verdict="collect"} == 1) or vector(0)',
            w=4,
            thresholds=[{"color": "green", "value": None}],
        ),
        stat(
            lay,
            "Marginal",
            'count(otf2d_verdict{verdict="marginal"} == 1) or vector(0)',
            w=4,
            thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}],
        ),
        stat(
            lay,
            "Abandon",
            'count(otf2d_verdict{verdict="abandon"} == 1) or vector(0)',
            w=4,
            thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
        ),
        stat(lay, "Good particles / h (all)", "sum(otf2d:good_particles_per_hour)", w=4, unit="short", decimals=0),
        verdict_timeline(lay, f"otf2d:verdict_code{{{sel}}}"),
        merged_table(
            lay,
            "Sessions now",
            [
                (f"otf2d:verdict_code{{{sel}}}", "verdict", ""),
                (f"otf2d_verdict_confidence_ratio{{{sel}}}", "confidence", "percentunit"),
                (f"otf2d_session_particles{{{sel}}}", "particles", "short"),
                (f"otf2d_junk_fraction_ratio{{{sel}}}", "junk", "percentunit"),
                (f"otf2d:good_particles_per_hour{{{sel}}}", "good / h", "short"),
                (f"otf2d_distinct_views{{{sel}}}", "views", "short"),
                (f"otf2d_largest_view_ratio{{{sel}}}", "largest view", "percentunit"),
                (f"otf2d_target_forecast_seconds{{{sel}}}", "to target", "s"),
            ],
            w=24,
            h=8,
            hide=["instance", "job", "__name__"],
            mappings_for={"verdict": VERDICT_MAPPING},
        ),
        timeseries(
            lay,
            "Good particles per hour",
            [target(f"otf2d:good_particles_per_hour{{{sel}}}", "{{session}}")],
            unit="short",
        ),
        timeseries(
            lay,
            "Junk fraction",
            [target(f"otf2d_junk_fraction_ratio{{{sel}}}", "{{session}}")],
            unit="percentunit",
            min_value=0,
            max_value=1,
        ),
        timeseries(
            lay, "Distinct views", [target(f"otf2d_distinct_views{{{sel}}}", "{{session}}")], unit="short", min_value=0
        ),
        timeseries(
            lay,
            "Share of good particles in the largest view",
            [target(f"otf2d_largest_view_ratio{{{sel}}}", "{{session}}")],
            unit="percentunit",
            min_value=0,
            max_value=1,
        ),
        timeseries(
            lay,
            "Particles shipped per second, by microscope",
            [
                target(
                    "sum by (microscope) (rate(otf2d_streamer_particles_acked_total[$__rate_interval]))",
                    "{{microscope}}",
                )
            ],
            unit="short",
        ),
        merged_table(
            lay,
            "Streamers",
            [
                ("otf2d_streamer_engine_up", "engine reachable", ""),
                ("otf2d_streamer_backlog_particles", "backlog (particles)", "short"),
                ("otf2d_streamer_files_waiting", "files waiting", "short"),
                ("otf2d_streamer_in_flight_batches", "in flight", "short"),
            ],
            w=12,
            h=8,
            hide=["job", "__name__"],
            mappings_for={"engine reachable": UP_MAPPING},
        ),
    ]
    return dashboard(
        "otf2d-facility-overview",
        "otf2d — facility overview",
        panels,
        variables=[session_variable(multi=True)],
        tags=["facility"],
    )


def gallery_panel(lay: Layout) -> dict[str, Any]:
    content = (
        '<div style="text-align:center">'
        '<img src="${engine_url}/sessions/${session}/gallery.png?t=${__to}" '
        'alt="class averages of ${session}" style="max-width:100%;height:auto">'
        "</div>"
    )
    p = panel(
        lay,
        "text",
        "Class averages (largest first, junk in red)",
        [],
        w=14,
        h=18,
        options={"mode": "html", "content": content},
        description="The gallery PNG served by the engine's status page; the browser fetches it from $engine_url.",
    )
    return p


def session_detail() -> dict[str, Any]:
    lay = Layout()
    s = 'session="$session"'
    panels = [
        stat(lay, "Verdict", f"otf2d:verdict_code{{{s}}}", mappings=VERDICT_MAPPING),
        stat(lay, "Confidence", f"otf2d_verdict_confidence_ratio{{{s}}}", unit="percentunit"),
        stat(lay, "Particles", f"otf2d_session_particles{{{s}}}", unit="short"),
        stat(lay, "Good particles", f"otf2d_good_particles{{{s}}}", unit="short"),
        stat(
            lay,
            "Junk",
            f"otf2d_junk_fraction_ratio{{{s}}}",
            unit="percentunit",
            thresholds=[
                {"color": "green", "value": None},
                {"color": "orange", "value": 0.4},
                {"color": "red", "value": 0.7},
            ],
        ),
        stat(lay, "Good / h", f"otf2d:good_particles_per_hour{{{s}}}", unit="short", decimals=0),
        stat(
            lay,
            "To target",
            f"otf2d_target_forecast_seconds{{{s}}}",
            unit="s",
            description="Time to the target number of good particles at the current rate",
        ),
        stat(lay, "Distinct views", f"otf2d_distinct_views{{{s}}}", unit="short"),
        gallery_panel(lay),
        panel(
            lay,
            "bargauge",
            "Particles per class",
            [target(f"sort_desc(otf2d_class_particles{{{s}}})", "#{{class}}", instant=True)],
            w=10,
            h=18,
            unit="short",
            options={
                "orientation": "horizontal",
                "displayMode": "basic",
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "showUnfilled": True,
            },
        ),
        verdict_timeline(lay, f"otf2d:verdict_code{{{s}}}", h=4),
        timeseries(
            lay,
            "Particles per hour",
            [
                target(f"otf2d:classified_particles_per_hour{{{s}}}", "classified", "A"),
                target(f"otf2d:good_particles_per_hour{{{s}}}", "good", "B"),
            ],
            unit="short",
        ),
        timeseries(
            lay,
            "Junk and preferred orientation",
            [
                target(f"otf2d_junk_fraction_ratio{{{s}}}", "junk fraction", "A"),
                target(f"otf2d_largest_view_ratio{{{s}}}", "largest view share", "B"),
            ],
            unit="percentunit",
            min_value=0,
            max_value=1,
        ),
        timeseries(
            lay,
            "Views and classes",
            [
                target(f"otf2d_distinct_views{{{s}}}", "distinct views", "A"),
                target(f"otf2d_effective_views{{{s}}}", "effective views", "B"),
                target(f"otf2d_effective_classes{{{s}}}", "effective classes", "C"),
                target(f"otf2d_junk_classes{{{s}}}", "junk classes", "D"),
            ],
            unit="short",
            min_value=0,
        ),
        timeseries(
            lay,
            "Distribution entropy (normalised)",
            [
                target(f"otf2d_view_entropy_ratio{{{s}}}", "views", "A"),
                target(f"otf2d_class_distribution_entropy_ratio{{{s}}}", "classes", "B"),
            ],
            unit="percentunit",
            min_value=0,
            max_value=1,
        ),
        merged_table(
            lay,
            "Classes",
            [
                (f"otf2d_class_particles{{{s}}}", "particles", "short"),
                (f"otf2d_class_junk_score{{{s}}}", "junk score", ""),
                (f"otf2d_class_junk{{{s}}}", "junk", ""),
                (f"otf2d_class_resolution_angstroms{{{s}}}", "resolution (Å)", ""),
            ],
            w=12,
            h=10,
            hide=["instance", "job", "session", "__name__"],
        ),
        timeseries(
            lay,
            "Class resolution (Å)",
            [target(f"otf2d_class_resolution_angstroms{{{s}}}", "#{{class}}")],
            h=10,
            unit="short",
            custom={"fillOpacity": 0},
        ),
        timeseries(
            lay, "Forecast to the target", [target(f"otf2d_target_forecast_seconds{{{s}}}", "time to target")], unit="s"
        ),
        timeseries(lay, "Snapshot age", [target(f"otf2d_session_snapshot_age_seconds{{{s}}}", "age")], unit="s"),
    ]
    variables = [
        session_variable(multi=False),
        {
            "name": "engine_url",
            "label": "Engine status URL",
            "type": "textbox",
            "query": ENGINE_URL,
            "current": {"text": ENGINE_URL, "value": ENGINE_URL},
            "options": [{"selected": True, "text": ENGINE_URL, "value": ENGINE_URL}],
            "description": "Base URL of the engine's status server as the viewers' browsers reach it",
        },
    ]
    return dashboard("otf2d-session-detail", "otf2d — session detail", panels, variables=variables, tags=["session"])


def engine_health() -> dict[str, Any]:
    lay = Layout()
    panels = [
        stat(lay, "Engine", 'min(up{job="otf2d-engine"})', w=4, mappings=UP_MAPPING),
        stat(lay, "Streamers up", 'sum(up{job="otf2d-streamer"})', w=4),
        stat(lay, "Queue depth", "sum(otf2d_queue_depth)", w=4, unit="short"),
        stat(lay, "Checkpoint age", "max(otf2d_checkpoint_age_seconds)", w=4, unit="s"),
        stat(lay, "Snapshot age", "min(otf2d_snapshot_age_seconds)", w=4, unit="s"),
        stat(lay, "Latency p95", "max(otf2d:file_to_classified_latency_seconds:p95_10m)", w=4, unit="s"),
        timeseries(
            lay,
            "Particles per second",
            [
                target("otf2d:particles_received:rate5m", "received {{instance}}", "A"),
                target("otf2d:particles_classified:rate5m", "classified {{instance}}", "B"),
                target(
                    "sum by (instance) (rate(otf2d_particles_revisited_total[$__rate_interval]))",
                    "revisited {{instance}}",
                    "C",
                ),
            ],
            unit="short",
        ),
        timeseries(
            lay,
            "Rejected particles per second",
            [target("otf2d:particles_rejected:rate5m", "{{reason}}")],
            unit="short",
        ),
        timeseries(
            lay,
            "File ready → classified latency",
            [
                target("otf2d:file_to_classified_latency_seconds:p50_10m", "p50 {{instance}}", "A"),
                target("otf2d:file_to_classified_latency_seconds:p95_10m", "p95 {{instance}}", "B"),
            ],
            unit="s",
        ),
        timeseries(
            lay,
            "EM step duration",
            [
                target("otf2d:em_batch_duration_seconds:p95_10m", "p95 {{instance}}", "A"),
                target(
                    "sum by (instance) (rate(otf2d_em_batch_duration_seconds_sum[$__rate_interval]))"
                    " / sum by (instance) (rate(otf2d_em_batch_duration_seconds_count[$__rate_interval]))",
                    "mean {{instance}}",
                    "B",
                ),
            ],
            unit="s",
        ),
        timeseries(
            lay,
            "Engine memory",
            [
                target('process_resident_memory_bytes{job="otf2d-engine"}', "resident {{instance}}", "A"),
                target("otf2d_device_memory_bytes", "GPU {{kind}} {{instance}}", "B"),
            ],
            unit="bytes",
        ),
        timeseries(
            lay,
            "Queue depth (particles journaled, not yet folded in)",
            [target("otf2d_queue_depth", "{{instance}}")],
            unit="short",
        ),
        timeseries(
            lay,
            "Batch messages answered per second",
            [target("sum by (result) (rate(otf2d_messages_total[$__rate_interval]))", "{{result}}")],
            unit="short",
        ),
        timeseries(
            lay,
            "Checkpoint and snapshot age",
            [
                target("otf2d_checkpoint_age_seconds", "checkpoint {{instance}}", "A"),
                target("otf2d_snapshot_age_seconds", "snapshot {{instance}}", "B"),
            ],
            unit="s",
        ),
        timeseries(
            lay,
            "Streamer backlog (particles not yet acknowledged)",
            [target("otf2d_streamer_backlog_particles", "{{microscope}} {{session}}")],
            unit="short",
        ),
        timeseries(
            lay,
            "Streamer time blocked on backpressure",
            [target("otf2d:streamer_backpressure:ratio_rate5m", "{{session}}")],
            unit="percentunit",
            min_value=0,
            max_value=1,
        ),
        timeseries(
            lay,
            "Streamer bytes sent per second",
            [target("otf2d:streamer_sent_bytes:rate5m", "{{session}}")],
            unit="Bps",
        ),
        timeseries(
            lay,
            "Streamer files and batches",
            [
                target("otf2d_streamer_files_waiting", "files waiting {{session}}", "A"),
                target("otf2d_streamer_in_flight_batches", "in flight {{session}}", "B"),
                target("increase(otf2d_streamer_files_quarantined_total[1h])", "quarantined in 1 h {{session}}", "C"),
                target("rate(otf2d_streamer_batches_resent_total[$__rate_interval])", "re-sent /s {{session}}", "D"),
            ],
            unit="short",
        ),
        timeseries(
            lay,
            "Streamer reaches the engine",
            [target("otf2d_streamer_engine_up", "{{microscope}} {{session}}")],
            mappings=UP_MAPPING,
            min_value=0,
            max_value=1,
        ),
    ]
    return dashboard("otf2d-engine-health", "otf2d — engine health", panels, variables=[], tags=["engine"])


DASHBOARDS = {
    "facility-overview.json": facility_overview,
    "session-detail.json": session_detail,
    "engine-health.json": engine_health,
}


def render(name: str) -> str:
    """The JSON text of dashboard file ``name``."""
    return json.dumps(DASHBOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name in DASHBOARDS:
        target_path = out / name
        tmp = target_path.with_name(f".{name}.tmp")
        tmp.write_text(render(name), encoding="utf-8")
        tmp.replace(target_path)
        print(target_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
