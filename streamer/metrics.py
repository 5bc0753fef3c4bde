"""Prometheus metrics of the streamer, in a private registry, served on ``--metrics-port``.

Every ``otf2d_streamer_…`` metric carries the ``session`` label. Counters count since this process
started; the gauges are read from the ledger, so they are right across restarts. The process
collector adds ``process_*`` (resident memory, CPU seconds, open file descriptors) and
``otf2d_build_info{version}`` says which otf2d runs.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, start_http_server

from otf2d import core


class StreamerMetrics:
    """The streamer's counters and gauges.

    Parameters
    ----------
    session
        Value of the ``session`` label.
    registry
        Registry to put them in (default: a new private one).
    """

    def __init__(self, session: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.session = session
        labels = ["session"]

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, labels, registry=self.registry).labels(session)

        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, labels, registry=self.registry).labels(session)

        self.files_seen = counter("otf2d_streamer_files_seen_total", "Particle files noticed (new or changed).")
        self.files_planned = counter(
            "otf2d_streamer_files_planned_total", "Particle files read and split into batches."
        )
        self.files_quarantined = counter("otf2d_streamer_files_quarantined_total", "Particle files quarantined.")
        #: Files in quarantine now, per reason code (from the ledger, so right across restarts).
        self.quarantined = Gauge(
            "otf2d_streamer_quarantined_files",
            "Particle files in quarantine now (unreadable or invalid; read again when they change), by reason.",
            ["session", "reason"],
            registry=self.registry,
        )
        #: Particles the streamer refused to send, per reason (``blank``, ``duplicate``).
        self.particles_rejected = Counter(
            "otf2d_streamer_particles_rejected",
            "Particles not sent: blank (constant) images, rows repeating a particle of the same file.",
            ["session", "reason"],
            registry=self.registry,
        )
        for reason in ("blank", "duplicate"):
            self.particles_rejected.labels(session, reason)
        self.particles_planned = counter(
            "otf2d_streamer_particles_planned_total", "New particles found in files and queued for sending."
        )
        self.batches_sent = counter("otf2d_streamer_batches_sent_total", "Batch messages sent (first sends).")
        self.batches_resent = counter("otf2d_streamer_batches_resent_total", "Batch messages sent again (timeouts).")
        self.batches_acked = counter("otf2d_streamer_batches_acked_total", "Batches acknowledged by the engine.")
        self.particles_acked = counter("otf2d_streamer_particles_acked_total", "Particles acknowledged by the engine.")
        self.batches_nacked = counter("otf2d_streamer_batches_nacked_total", "NACKs (retry later) from the engine.")
        self.batches_dead = counter(
            "otf2d_streamer_batches_dead_letter_total", "Batches rejected by the engine or unreadable at send time."
        )
        self.bytes_sent = counter("otf2d_streamer_sent_bytes_total", "Bytes of batch messages sent.")
        self.backpressure_seconds = counter(
            "otf2d_streamer_backpressure_seconds_total",
            "Seconds with batches waiting while the credit window was full or the engine unreachable.",
        )
        self.backlog_batches = gauge("otf2d_streamer_backlog_batches", "Batches not yet acknowledged (in the ledger).")
        self.backlog_particles = gauge(
            "otf2d_streamer_backlog_particles", "Particles not yet acknowledged (in the ledger)."
        )
        self.in_flight = gauge("otf2d_streamer_in_flight_batches", "Batches sent and awaiting an ACK.")
        self.files_waiting = gauge("otf2d_streamer_files_waiting", "Files noticed but not yet readable or read.")
        self.engine_up = gauge("otf2d_streamer_engine_up", "1 when the engine answered recently, else 0.")
        self.last_ack = gauge("otf2d_streamer_last_ack_timestamp_seconds", "Unix time of the last ACK.")
        build = Gauge("otf2d_build_info", "1, labelled with the otf2d version", ["version"], registry=self.registry)
        build.labels(core.__version__).set(1)
        ProcessCollector(registry=self.registry)
        self._server: Any = None
        self._lock = threading.Lock()

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``addr:port`` in a background thread; returns the port bound."""
        with self._lock:
            server, _thread = start_http_server(port, addr=addr, registry=self.registry)
            self._server = server
            return int(server.server_address[1])

    def stop(self) -> None:
        """Stop serving."""
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None


__all__ = ["StreamerMetrics"]
