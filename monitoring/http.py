"""A small read-only HTTP server: status page, status JSON, gallery and class PNGs, Prometheus metrics.

:class:`StatusServer` runs a ``ThreadingHTTPServer`` in a daemon thread. It binds 127.0.0.1 unless
told otherwise and answers only ``GET``/``HEAD``:

==================================  ==========================================================
``/``                               status page (HTML, refreshes its sessions in place every few seconds)
``/fragment.html``                  the page's sessions alone (what the page fetches to refresh)
``/status.json``                    every session's state (``MonitoringState.to_json``)
``/gallery.png``                    gallery of the default session (the most recently updated)
``/classes/<N>.png``                class N (RELION number, 1-based) of the default session
``/sessions/<name>/status.json``    one session's state
``/sessions/<name>/gallery.png``    its gallery, largest class first, junk classes in red
``/sessions/<name>/classes/<N>.png``  one of its classes
``/sessions/<name>/averages/<N>.png``  class N's average alone (no label: the page's tiles, scale bar)
``/metrics``                        Prometheus exposition of the given registry
``/healthz``                        ``ok``
==================================  ==========================================================

Query strings are ignored (dashboards add ``?t=…`` to defeat caches); every answer says
``Cache-Control: no-store``. The state comes from a provider callable (session → state), so the
engine plugs in :meth:`otf2d.monitoring.state.SessionMonitor.states`. PNGs are rendered once per state
and cached.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from otf2d.core.errors import InputError
from otf2d.monitoring.snapshots.gallery import render_class_png, render_gallery, to_uint8
from otf2d.monitoring.state import MonitoringState, StateProvider
from otf2d.monitoring.status_page import render_status_page, sessions_html

log = logging.getLogger(__name__)

#: PNGs kept in the render cache.
PNG_CACHE_ENTRIES = 256
#: Edge of the bare class averages served for the page's tiles, pixels.
AVERAGE_PX = 384
#: ``() -> {session: lifecycle state}`` (open, idle, closed) for the page's chips.
LifecycleProvider = Callable[[], Mapping[str, str]]


def fast_png(image: Image.Image) -> bytes:
    """PNG bytes at zlib level 3 (several times faster than an optimised PNG, ~20% larger)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


class _NotFound(Exception):
    """A path that names nothing (answered 404 with the message)."""


class _Unavailable(Exception):
    """Nothing to show yet (answered 503 with the message)."""


class StatusServer:
    """The monitoring HTTP server.

    Parameters
    ----------
    provider
        Returns the latest state per session.
    registry
        Registry exposed at ``/metrics`` (``None``: 404 there).
    host, port
        Address to bind; port 0 picks a free one (see :attr:`port` after :meth:`start`).
    refresh_seconds
        Reload period of the status page.
    title
        Title of the status page.
    lifecycle
        Each session's lifecycle state, shown beside its name (optional).
    """

    def __init__(
        self,
        provider: StateProvider,
        *,
        registry: CollectorRegistry | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        refresh_seconds: float = 5.0,
        title: str = "otf2d status",
        lifecycle: LifecycleProvider | None = None,
    ) -> None:
        self.provider = provider
        self.lifecycle = lifecycle
        self.registry = registry
        self.host = host
        self.requested_port = port
        self.refresh_seconds = refresh_seconds
        self.title = title
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._cache: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> int:
        """Bind and serve in a background thread; returns the port bound."""
        if self._server is not None:
            return self.port
        handler = _make_handler(self)
        server = ThreadingHTTPServer((self.host, self.requested_port), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="otf2d-status-http", daemon=True)
        self._thread.start()
        log.info("status page on %s", self.url)
        return self.port

    def stop(self) -> None:
        """Stop serving and close the socket."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5.0)

    def __enter__(self) -> StatusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port bound (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the status server is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port/``."""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}/"

    # -- content -------------------------------------------------------------------------------

    def states(self) -> dict[str, MonitoringState]:
        """The provider's states (a copy)."""
        return dict(self.provider())

    def default_session(self, states: dict[str, MonitoringState]) -> MonitoringState:
        """The most recently computed session state."""
        if not states:
            raise _Unavailable("no session has a snapshot yet")
        return max(states.values(), key=lambda s: (s.computed_at, s.session))

    def _cached(self, key: tuple[Any, ...], render: Any) -> bytes:
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data: bytes = render()
        with self._cache_lock:
            self._cache[key] = data
            while len(self._cache) > PNG_CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return data

    def gallery_png(self, state: MonitoringState) -> bytes:
        """The session's gallery as PNG bytes (junk classes marked with the effective scores)."""
        key = ("gallery", state.session, id(state), state.computed_at)
        return self._cached(key, lambda: fast_png(render_gallery(state.scored_snapshot())))

    def class_png(self, state: MonitoringState, number: int) -> bytes:
        """Class ``number`` (1-based) as PNG bytes."""
        if not 1 <= number <= state.snapshot.n_classes:
            raise _NotFound(f"session {state.session!r} has classes 1..{state.snapshot.n_classes}, not {number}")
        key = ("class", state.session, id(state), state.computed_at, number)

        def render() -> bytes:
            scored = state.scored_snapshot()
            return render_class_png(scored, number - 1)

        return self._cached(key, render)

    def average_png(self, state: MonitoringState, number: int) -> bytes:
        """Class ``number``'s average alone, :data:`AVERAGE_PX` square, as PNG bytes (for the page's tiles)."""
        if not 1 <= number <= state.snapshot.n_classes:
            raise _NotFound(f"session {state.session!r} has classes 1..{state.snapshot.n_classes}, not {number}")
        key = ("average", state.session, id(state), state.computed_at, number)

        def render() -> bytes:
            image = Image.fromarray(to_uint8(state.snapshot.averages[number - 1]), mode="L")
            return fast_png(image.resize((AVERAGE_PX, AVERAGE_PX), Image.Resampling.LANCZOS))

        return self._cached(key, render)

    def lifecycle_states(self) -> dict[str, str]:
        """Each session's lifecycle state (empty without a provider or when it fails)."""
        if self.lifecycle is None:
            return {}
        try:
            return dict(self.lifecycle())
        except Exception:  # the page must render without it
            log.exception("lifecycle provider failed")
            return {}

    def status_json(self, states: dict[str, MonitoringState]) -> bytes:
        """``{"generated_at": t, "sessions": {name: state}}`` as strict JSON."""
        now = time.time()
        record = {"generated_at": now, "sessions": {name: states[name].to_json(now) for name in sorted(states)}}
        return json.dumps(record, allow_nan=False).encode("utf-8")

    def route(self, path: str, accept: str) -> tuple[int, str, bytes]:
        """Answer a GET of ``path``: ``(status, content type, body)``."""
        parts = [unquote(p) for p in urlsplit(path).path.split("/") if p]
        try:
            return self._route(parts, accept)
        except _NotFound as exc:
            return 404, "text/plain; charset=utf-8", f"not found: {exc}\n".encode()
        except _Unavailable as exc:
            return 503, "text/plain; charset=utf-8", f"not available: {exc}\n".encode()

    def _route(self, parts: list[str], accept: str) -> tuple[int, str, bytes]:
        if not parts:
            page = render_status_page(
                self.states(),
                refresh_seconds=self.refresh_seconds,
                title=self.title,
                metrics=self.registry is not None,
                lifecycle=self.lifecycle_states(),
            )
            return 200, "text/html; charset=utf-8", page.encode("utf-8")
        if parts == ["fragment.html"]:
            fragment = sessions_html(self.states(), time.time(), self.lifecycle_states())
            return 200, "text/html; charset=utf-8", fragment.encode("utf-8")
        if parts == ["healthz"]:
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if parts == ["metrics"]:
            if self.registry is None:
                raise _NotFound("no metrics registry")
            encoder, content_type = choose_encoder(accept)
            return 200, content_type, encoder(self.registry)
        if parts == ["status.json"]:
            return 200, "application/json", self.status_json(self.states())
        if parts[0] == "sessions" and len(parts) >= 3:
            states = self.states()
            state = states.get(parts[1])
            if state is None:
                raise _NotFound(f"no session {parts[1]!r}")
            return self._session_route(state, parts[2:])
        if parts == ["gallery.png"] or (len(parts) == 2 and parts[0] == "classes"):
            return self._session_route(self.default_session(self.states()), parts)
        raise _NotFound("/" + "/".join(parts))

    def _session_route(self, state: MonitoringState, rest: list[str]) -> tuple[int, str, bytes]:
        if rest == ["gallery.png"]:
            return 200, "image/png", self.gallery_png(state)
        if rest == ["status.json"]:
            return 200, "application/json", json.dumps(state.to_json(), allow_nan=False).encode("utf-8")
        if len(rest) == 2 and rest[0] in ("classes", "averages") and rest[1].endswith(".png"):
            stem = rest[1][: -len(".png")]
            if not stem.isdigit():
                raise _NotFound(f"class {stem!r} is not a class number")
            render = self.class_png if rest[0] == "classes" else self.average_png
            return 200, "image/png", render(state, int(stem))
        raise _NotFound("/".join(rest))


def _make_handler(server: StatusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "otf2d-status/1"

        def _answer(self, with_body: bool) -> None:
            try:
                status, content_type, body = server.route(self.path, self.headers.get("Accept", ""))
            except (InputError, ValueError) as exc:
                status, content_type, body = 500, "text/plain; charset=utf-8", f"error: {exc}\n".encode()
                log.exception("status server: %s failed", self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s - %s", self.address_string(), format % args)

    return Handler


__all__ = ["StatusServer", "fast_png"]
