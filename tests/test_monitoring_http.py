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
from otf2d.monitoring.status_page import VERDICT_COLOURS, state_version

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
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in page  # fallback without script
    assert "<script>" in page and "<script src" not in page  # inline only
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page must not load external assets"
    assert not re.search(r'(src|href)="/', page), "every URL is relative (the page works behind a proxy)"
    for name, state in monitor.states().items():
        assert name in page
        assert f"verdict-{state.verdict.state}" in page
        for reason in state.verdict.reasons:
            assert reason.replace("&", "&amp;") in page
        assert f'href="sessions/{name}/gallery.png' in page
        for k in range(1, state.snapshot.n_classes + 1):
            assert f'src="sessions/{name}/averages/{k}.png' in page


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


class _SwitchingServer(StatusServer):
    """Serves ``first`` until the page asks for ``fragment.html``, then ``second`` (a newer state)."""

    def __init__(self, first: dict, second: dict, **kwargs) -> None:
        self.which = [first]
        super().__init__(lambda: self.which[0], **kwargs)
        self.second = second

    def route(self, path: str, accept: str) -> tuple[int, str, bytes]:
        if path.startswith("/fragment.html"):
            self.which[0] = self.second
        return super().route(path, accept)


@pytest.fixture(scope="module")
def history():
    from status_page_session import monitor_with_history

    return monitor_with_history(time.time(), {"krios1-grid3": "good", "krios2-grid7": "junk"})


def _colour_pixels(image: np.ndarray, hex_colour: str, tolerance: int = 14) -> int:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    close = (abs(image[..., 0] - r) < tolerance) & (abs(image[..., 1] - g) < tolerance)
    return int((close & (abs(image[..., 2] - b) < tolerance)).sum())


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_status_page_in_a_headless_browser(history, tmp_path: Path) -> None:
    import dataclasses

    first = history.states()
    second = {n: dataclasses.replace(s, computed_at=s.computed_at + 7.0) for n, s in first.items()}
    life = {"krios1-grid3": "open", "krios2-grid7": "closed"}
    with _SwitchingServer(first, second, refresh_seconds=2, lifecycle=lambda: life) as server:
        # the page updates itself in place: after its first refresh it shows the newer states
        dom = _browser(["--virtual-time-budget=6000", "--dump-dom", server.url], tmp_path / "profile-dom")
        assert dom.returncode == 0, dom.stderr.decode()[-2000:]
        text = dom.stdout.decode()
        assert 'data-live="ok"' in text, "the page did not refresh its sessions"
        for name, state in second.items():
            assert f'data-version="{state_version(state)}{life[name]}"' in text
            assert re.search(rf'class="badge( early)? verdict-{state.verdict.state}"', text)
            assert state.verdict.reasons[0] in text
        plots = re.findall(r'<polyline class="series" data-points="(\d+)"', text)
        assert len(plots) == 4 * len(second) and all(int(n) >= 5 for n in plots), plots
        assert len(re.findall(r'<rect class="segment state-', text)) >= 2 * len(second)
        assert "particles classified</text>" in text and ">collect</text>" in text
        assert text.count('class="scalebar" style="width:') == sum(s.snapshot.n_classes for s in second.values())

        shots = Path(os.environ.get("OTF2D_SCREENSHOT_DIR", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        screenshot = shots / "status-page.png"
        args = [f"--screenshot={screenshot}", "--window-size=1400,2600", "--virtual-time-budget=3000", server.url]
        shot = _browser(args, tmp_path / "profile-shot")
    assert shot.returncode == 0, shot.stderr.decode()[-2000:]
    print(f"\nstatus page screenshot: {screenshot}")
    image = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    assert image.shape == (2600, 1400, 3)
    # drawn with data: the plot lines, the verdict strips and the badges, the class averages
    for colour in ("#60a5fa", "#f87171", "#4ade80", "#c084fc"):  # particles, junk, good/h, resolution
        assert _colour_pixels(image, colour) > 150, f"plot line {colour} not drawn in {screenshot}"
    for state in ("collect", "abandon"):
        assert _colour_pixels(image, VERDICT_COLOURS[state], 12) > 2000, f"no {state} strip in {screenshot}"
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
    state = monitor.states()[name]
    strip = re.search(r'<svg[^>]*class="verdict-strip".*?</svg>', page, re.S)
    assert strip is not None
    segments = re.findall(r'<rect class="segment state-(\w+)"', strip.group(0))
    runs = [s for i, s in enumerate(p.state for p in state.timeline) if i == 0 or state.timeline[i - 1].state != s]
    assert segments == runs and len(runs) >= 2  # one segment per run of a verdict ...
    assert segments[-1] == state.verdict.state  # ... the current verdict last
    assert "particles classified" in strip.group(0)  # the axis title
    for label in ("0", "1k", "2k", "3k", "4k"):
        assert f">{label}</text>" in strip.group(0)  # axis ticks
    for legend in ("collect", "marginal", "abandon", "pending"):
        assert f">{legend}</text>" in strip.group(0)
    assert "&lt;b&gt;grid&amp;1&lt;/b&gt;" in page and "<b>grid" not in page
    assert "sessions/%3Cb%3Egrid%261%3C%2Fb%3E/gallery.png" in page


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_a_class_opens_enlarged(history, tmp_path: Path) -> None:
    """The enlarge dialog (what a click opens; here through the page's #class-SESSION-N link)."""
    state = history.states()["krios1-grid3"]
    with StatusServer(history.states, refresh_seconds=60) as server:
        url = f"{server.url}#class-krios1-grid3-2"
        dom = _browser(["--virtual-time-budget=3000", "--dump-dom", url], tmp_path / "profile-enlarge-dom")
        shots = Path(os.environ.get("OTF2D_SCREENSHOT_DIR", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        screenshot = shots / "status-page-enlarged.png"
        args = [f"--screenshot={screenshot}", "--window-size=1400,1000", "--virtual-time-budget=3000", url]
        shot = _browser(args, tmp_path / "profile-enlarge-shot")
    assert dom.returncode == 0 and shot.returncode == 0, dom.stderr.decode()[-2000:]
    text = dom.stdout.decode()
    assert re.search(r'<dialog id="enlarge" open="">', text), "the dialog did not open"
    assert 'src="sessions/krios1-grid3/averages/2.png' in text.split('<dialog id="enlarge"')[1]
    counts = state.class_counts
    dialog = text.split('<dialog id="enlarge"')[1]
    assert f"class 2: {int(counts[1]):,} particles" in dialog
    tile_bar = re.search(r'id="class-krios1-grid3-2".*?class="scalebar" style="width:([\d.]+%)"', text, re.S)
    assert tile_bar and f'class="scalebar" style="width: {tile_bar.group(1)};"' in dialog  # same scale, enlarged
    assert re.search(r'class="scalelabel">\d+ Å<', dialog)
    image = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    # the modal dims the page: the enlarged average is the largest block of grey levels in the middle
    middle = image[200:800, 400:1000]
    grey = (abs(middle[..., 0] - middle[..., 1]) < 3) & (abs(middle[..., 1] - middle[..., 2]) < 3)
    assert grey.mean() > 0.5 and len(np.unique(middle[grey][:, 0])) > 100, f"no enlarged class in {screenshot}"


class _PrefixProxy:
    """A reverse proxy on loopback serving ``upstream`` under ``/otf2d/`` (as deploy/proxy/nginx.conf does)."""

    def __init__(self, upstream: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        base = upstream.rstrip("/")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not self.path.startswith("/otf2d/"):
                    self.send_error(404)
                    return
                try:
                    with urllib.request.urlopen(base + self.path[len("/otf2d") :], timeout=10) as answer:
                        status, kind, body = answer.status, answer.headers["Content-Type"], answer.read()
                except urllib.error.HTTPError as exc:
                    status, kind, body = exc.code, exc.headers["Content-Type"], exc.read()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        import threading

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/otf2d/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_page_works_behind_a_reverse_proxy_under_a_path(history, tmp_path: Path) -> None:
    with StatusServer(history.states, refresh_seconds=2) as server:
        proxy = _PrefixProxy(server.url)
        try:
            dom = _browser(["--virtual-time-budget=5000", "--dump-dom", proxy.url], tmp_path / "profile-proxy")
            shot_path = tmp_path / "proxied.png"
            args = [f"--screenshot={shot_path}", "--window-size=1400,1200", "--virtual-time-budget=3000", proxy.url]
            shot = _browser(args, tmp_path / "profile-proxy-shot")
        finally:
            proxy.close()
    assert dom.returncode == 0 and shot.returncode == 0, dom.stderr.decode()[-2000:]
    assert 'data-live="ok"' in dom.stdout.decode(), "the in-place refresh failed behind the proxy"
    image = np.asarray(Image.open(shot_path).convert("RGB")).astype(int)
    grey = (abs(image[..., 0] - image[..., 1]) < 3) & (abs(image[..., 1] - image[..., 2]) < 3)
    assert len(np.unique(image[grey][:, 0])) > 100, "the class averages did not load through the proxy"
