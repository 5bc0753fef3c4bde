"""The status server over real HTTP on loopback, and the status page in a real headless browser."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from monitoring_truth import good_grid, junk_grid, monitor_with_grids, preferred_grid
from PIL import Image
from prometheus_client import CollectorRegistry

from otf2d.monitoring.http import StatusServer
from otf2d.monitoring.metrics import register_monitoring
from otf2d.monitoring.snapshots.gallery import gallery_layout
from otf2d.monitoring.status_page import VERDICT_COLOURS

SESSIONS = {"krios1-good": good_grid, "krios2-junk": junk_grid, "glacios-preferred": preferred_grid}


@pytest.fixture(scope="module")
def monitor():
    return monitor_with_grids(
        {name: grid() for name, grid in SESSIONS.items()}, now=time.time(), particles_per_hour=2e4
    )


@pytest.fixture(scope="module")
def server(monitor):
    registry = CollectorRegistry()
    register_monitoring(monitor.states, registry)
    with StatusServer(monitor.states, registry=registry, refresh_seconds=5) as srv:
        yield srv


def get(server: StatusServer, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_binds_loopback_by_default(server: StatusServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    assert server.port > 0


def test_status_json(server: StatusServer, monitor) -> None:
    status, content_type, body = get(server, "/status.json")
    assert status == 200 and content_type == "application/json"
    record = json.loads(body)
    assert set(record["sessions"]) == set(SESSIONS)
    for name, state in monitor.states().items():
        session = record["sessions"][name]
        counts = np.asarray(state.snapshot.particle_counts)
        assert session["verdict"]["state"] == state.verdict.state
        assert session["verdict"]["reasons"] == state.verdict.reasons
        assert session["junk_fraction"] == pytest.approx(counts[state.quality.junk].sum() / counts.sum())
        assert [c["particles"] for c in session["classes"]] == counts.tolist()
        assert session["views"]["n_views"] == state.views.n_views
        assert session["particles_classified"] == counts.sum()
    assert record["sessions"]["krios1-good"]["verdict"]["state"] == "collect"
    assert record["sessions"]["krios2-junk"]["verdict"]["state"] in ("abandon", "marginal")
    one = json.loads(get(server, "/sessions/krios2-junk/status.json")[2])
    assert one["session"] == "krios2-junk"


def test_gallery_and_class_pngs_decode(server: StatusServer, monitor) -> None:
    state = monitor.states()["krios1-good"]
    status, content_type, body = get(server, "/sessions/krios1-good/gallery.png?t=12345")
    assert status == 200 and content_type == "image/png"
    image = Image.open(io.BytesIO(body))
    image.load()
    k, h, w = state.snapshot.averages.shape
    assert image.size == gallery_layout(k, box_px=max(h, w)).size
    # The default gallery is the most recently computed session's.
    newest = max(monitor.states().values(), key=lambda s: (s.computed_at, s.session))
    default = Image.open(io.BytesIO(get(server, "/gallery.png")[2]))
    assert default.size == gallery_layout(newest.snapshot.n_classes, box_px=max(h, w)).size
    for path in ("/classes/1.png", "/sessions/krios2-junk/classes/4.png"):
        status, content_type, body = get(server, path)
        assert status == 200 and content_type == "image/png"
        tile = Image.open(io.BytesIO(body)).convert("RGB")
        assert tile.size[0] >= 64
    # Class 4 of the junk grid is its noise class: the tile carries the red junk border.
    tile = np.asarray(Image.open(io.BytesIO(get(server, "/sessions/krios2-junk/classes/4.png")[2])).convert("RGB"))
    red = (tile[..., 0] > 180) & (tile[..., 1] < 80) & (tile[..., 2] < 80)
    assert red.sum() > 100


@pytest.mark.parametrize(
    "path", ["/classes/99.png", "/classes/0.png", "/sessions/nope/gallery.png", "/nothing", "/classes/x.png"]
)
def test_unknown_paths_are_404(server: StatusServer, path: str) -> None:
    assert get(server, path)[0] == 404


def test_page_shows_the_verdicts_and_reasons(server: StatusServer, monitor) -> None:
    status, content_type, body = get(server, "/")
    assert status == 200 and content_type.startswith("text/html")
    page = body.decode()
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "<script" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page must not load external assets"
    for name, state in monitor.states().items():
        assert name in page
        assert f"verdict-{state.verdict.state}" in page
        for reason in state.verdict.reasons:
            assert reason.replace("&", "&amp;") in page
        assert f"/sessions/{name}/gallery.png" in page


def test_metrics_and_health(server: StatusServer) -> None:
    status, content_type, body = get(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert b'otf2d_verdict{session="krios1-good",verdict="collect"} 1.0' in body
    assert get(server, "/healthz")[2] == b"ok\n"
    request = urllib.request.Request(server.url + "status.json", method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200 and response.read() == b""


def test_no_session_yet_is_a_page_and_a_503() -> None:
    with StatusServer(dict) as empty:
        page = get(empty, "/")[2].decode()
        assert "waiting for the first classes" in page
        assert get(empty, "/gallery.png")[0] == 503
        assert get(empty, "/metrics")[0] == 404
        assert json.loads(get(empty, "/status.json")[2])["sessions"] == {}


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser(args: list[str], profile: Path) -> subprocess.CompletedProcess[bytes]:
    command = [
        _chromium() or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, timeout=90, check=False)


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_status_page_in_a_headless_browser(server: StatusServer, monitor, tmp_path: Path) -> None:
    dom = _browser(["--dump-dom", server.url], tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    text = dom.stdout.decode()
    for name, state in monitor.states().items():
        assert name in text
        assert re.search(rf'class="badge verdict-{state.verdict.state}"', text)
        assert state.verdict.reasons[0] in text
    assert "Good particles per distinct view" in text
    assert text.count("<svg") >= len(SESSIONS)

    shots = Path(os.environ.get("OTF2D_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    screenshot = shots / "status-page.png"
    shot = _browser([f"--screenshot={screenshot}", "--window-size=1280,1600", server.url], tmp_path / "profile-shot")
    assert shot.returncode == 0, shot.stderr.decode()[-2000:]
    print(f"\nstatus page screenshot: {screenshot}")
    image = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    assert image.shape == (1600, 1280, 3)
    # What the page shows: the first session is krios1-good ('glacios…' sorts first, then krios1);
    # its verdict badge colours and the gallery images have loaded (many grey levels).
    for state in ("collect", "abandon"):
        r, g, b = (int(VERDICT_COLOURS[state][i : i + 2], 16) for i in (1, 3, 5))
        badge = (abs(image[..., 0] - r) < 12) & (abs(image[..., 1] - g) < 12) & (abs(image[..., 2] - b) < 12)
        assert badge.sum() > 300, f"no {state} badge visible in {screenshot}"
    grey = (abs(image[..., 0] - image[..., 1]) < 3) & (abs(image[..., 1] - image[..., 2]) < 3)
    assert len(np.unique(image[grey][:, 0])) > 100, "no class averages visible"


def test_page_draws_the_verdict_timeline_and_escapes_names() -> None:
    from snapshot_factory import make_snapshot

    from otf2d.monitoring.state import SessionMonitor
    from otf2d.monitoring.status_page import render_status_page

    clock = [0.0]
    monitor = SessionMonitor(clock=lambda: clock[0])
    name = "<b>grid&1</b>"
    for i, n in enumerate((500, 1500, 2500, 4000)):
        clock[0] = 60.0 * (i + 1)
        monitor.record_classified(name, n)
        monitor.publish(name, make_snapshot())
    page = render_status_page(monitor.states(), now=clock[0])
    assert 'aria-label="verdict timeline"' in page
    assert page.count("<rect") >= 3
    assert "&lt;b&gt;grid&amp;1&lt;/b&gt;" in page and "<b>grid" not in page
    assert "/sessions/%3Cb%3Egrid%261%3C%2Fb%3E/gallery.png" in page
