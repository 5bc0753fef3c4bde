"""The streamer's loop: watcher → ledger → readiness gate → sender, in one thread.

Watchdog's threads only put paths into a queue; everything else (ledger, gate, socket) runs in
the thread that calls :meth:`Streamer.run`, which returns when :meth:`Streamer.stop` is called
(SIGTERM/SIGINT in the CLI) or, with ``once``, when everything found has been delivered. Every
state change is committed to the ledger as it happens, so stopping at any point (even SIGKILL)
leaves it consistent: a restart re-sends every un-acknowledged batch with its original ``msg_id``.

Example::

    config = StreamerConfig(watch_dirs=(Path("/data/project"),), engine="tcp://gpu:5555",
                            session="grid3", ledger_path=Path("/var/lib/otf2d/grid3.sqlite"))
    Streamer(config).run()
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from otf2d.core.curve import CurveClientFiles
from otf2d.core.errors import ConfigError
from otf2d.streamer.gate import QUARANTINE_REASONS, Gate, GateConfig, Outcome, file_kind
from otf2d.streamer.ledger import FileRecord, Ledger, safe_text
from otf2d.streamer.metrics import StreamerMetrics
from otf2d.streamer.optics_source import OpticsCache
from otf2d.streamer.sender import Sender, SenderConfig
from otf2d.streamer.watcher import Watcher, scan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamerConfig:
    """Everything ``otf2d stream`` can be told (see :mod:`otf2d.streamer.cli` for the options).

    Attributes
    ----------
    watch_dirs
        Directories watched recursively.
    engine
        The engine's ROUTER endpoint.
    session
        Session name (particle keys, ledger, default DEALER identity).
    ledger_path
        The SQLite ledger.
    identity
        DEALER identity; default ``session``.
    observer, poll_interval_s
        ``auto`` / ``inotify`` / ``polling`` and the polling interval.
    window, batch_size, ack_timeout_s, heartbeat_s
        Delivery (see :class:`otf2d.streamer.sender.SenderConfig`) and batch size.
    settle_s, retry_base_s, retry_max_s, max_bad_attempts, incomplete_timeout_s,
    particles_star_interval_s, verify_pixels
        Readiness gate (see :class:`otf2d.streamer.gate.GateConfig`).
    optics_from, pixel_size_angstrom, voltage_kv, spherical_aberration_mm, amplitude_contrast
        Optics for ``_extract.star`` files.
    rescan_interval_s
        Full rescan of the watched directories this often (a safety net for lost events).
    metrics_port
        Serve ``/metrics`` there (``None``: not at all; 0: any free port).
    once
        Scan once (no observer), deliver everything, exit.
    curve_secret, curve_server
        CurveZMQ: this streamer's ``NAME.key_secret`` and the engine's ``NAME.key`` (both or neither).
    """

    watch_dirs: tuple[Path, ...]
    engine: str
    session: str
    ledger_path: Path
    identity: str | None = None
    observer: str = "auto"
    poll_interval_s: float = 1.0
    window: int = 8
    batch_size: int = 256
    ack_timeout_s: float = 10.0
    heartbeat_s: float = 2.0
    settle_s: float = 2.0
    retry_base_s: float = 0.5
    retry_max_s: float = 10.0
    max_bad_attempts: int = 3
    incomplete_timeout_s: float = 600.0
    particles_star_interval_s: float = 5.0
    verify_pixels: bool = True
    optics_from: Path | None = None
    pixel_size_angstrom: float | None = None
    voltage_kv: float | None = None
    spherical_aberration_mm: float | None = None
    amplitude_contrast: float | None = None
    rescan_interval_s: float = 300.0
    metrics_port: int | None = None
    once: bool = False
    curve_secret: Path | None = None
    curve_server: Path | None = None

    def __post_init__(self) -> None:
        if not self.watch_dirs:
            raise ConfigError(None, "give at least one directory to watch")
        if not self.session:
            raise ConfigError(None, "the session name must not be empty")

    def gate_config(self) -> GateConfig:
        """The readiness gate's part."""
        return GateConfig(
            session=self.session,
            roots=tuple(self.watch_dirs),
            batch_size=self.batch_size,
            settle_s=self.settle_s,
            retry_base_s=self.retry_base_s,
            retry_max_s=self.retry_max_s,
            max_bad_attempts=self.max_bad_attempts,
            incomplete_timeout_s=self.incomplete_timeout_s,
            particles_star_interval_s=self.particles_star_interval_s,
            verify_pixels=self.verify_pixels,
            optics_from=self.optics_from,
            pixel_size_angstrom=self.pixel_size_angstrom,
            voltage_kv=self.voltage_kv,
            spherical_aberration_mm=self.spherical_aberration_mm,
            amplitude_contrast=self.amplitude_contrast,
        )

    @property
    def curve_files(self) -> CurveClientFiles | None:
        """The CurveZMQ certificate files, when both are set."""
        if self.curve_secret is None or self.curve_server is None:
            return None
        return CurveClientFiles(Path(self.curve_secret), Path(self.curve_server))

    def sender_config(self) -> SenderConfig:
        """The sender's part."""
        return SenderConfig(
            engine=self.engine,
            identity=self.identity or self.session,
            window=self.window,
            ack_timeout_s=self.ack_timeout_s,
            heartbeat_s=self.heartbeat_s,
            curve=None
            if self.curve_secret is None
            else CurveClientFiles(self.curve_secret, Path(self.curve_server or "")),
        )


class Streamer:
    """The microscope-side daemon.

    Parameters
    ----------
    config
        Settings.
    metrics
        Metrics to update (default: new ones in a private registry, served if
        ``config.metrics_port`` is set).
    context
        ZeroMQ context (default: the global instance).
    """

    def __init__(
        self,
        config: StreamerConfig,
        *,
        metrics: StreamerMetrics | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else StreamerMetrics(config.session)
        self._context = context
        self._stop = threading.Event()
        self.metrics_port: int | None = None
        #: The sender while :meth:`run` runs (for inspection: ``in_flight``, ``max_in_flight_seen``).
        self.sender: Sender | None = None

    def stop(self) -> None:
        """Ask :meth:`run` to return (thread- and signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def run(self) -> int:
        """Watch, gate and send until stopped (or, with ``once``, until everything is delivered).

        Returns
        -------
        int
            Exit status: 0.
        """
        cfg = self.config
        watcher = Watcher(list(cfg.watch_dirs), observer=cfg.observer, poll_interval_s=cfg.poll_interval_s)
        ledger = Ledger(cfg.ledger_path, session=cfg.session)
        cache = OpticsCache(cfg.ledger_path.parent / f"{cfg.ledger_path.name}.optics")
        gate = Gate(cfg.gate_config(), ledger, cache)
        try:
            sender = Sender(cfg.sender_config(), ledger, cfg.session, metrics=self.metrics, context=self._context)
            self.sender = sender
        except BaseException:
            ledger.close()
            raise
        try:
            if cfg.metrics_port is not None:
                self.metrics_port = self.metrics.serve(cfg.metrics_port)
                log.info("metrics on port %d", self.metrics_port)
            backlog = ledger.backlog()
            log.info(
                "session %s: ledger %s (id %s), %d batch(es) / %d particle(s) not yet acknowledged, engine %s",
                cfg.session,
                cfg.ledger_path,
                ledger.ledger_id,
                backlog[0],
                backlog[1],
                cfg.engine,
            )
            found = watcher.scan() if cfg.once else watcher.start()
            log.info("initial scan: %d particle file(s)", found)
            self._loop(ledger, gate, sender, watcher)
        finally:
            watcher.stop()
            self._update_gauges(ledger, sender)
            self._log_quarantined(ledger)
            sender.close()
            ledger.close()
            self.metrics.stop()
        return 0

    def _log_quarantined(self, ledger: Ledger) -> None:
        """On the way out: every quarantined file with its reason (what needs a person's attention)."""
        quarantined = ledger.quarantined()
        if not quarantined:
            return
        by_reason = ", ".join(f"{code} {n}" for code, n in sorted(ledger.quarantined_by_reason().items()))
        log.warning("%d file(s) quarantined (%s); each is read again when it changes:", len(quarantined), by_reason)
        for path, reason in quarantined:
            log.warning("  %s: %s", self.display(path), reason)

    # ------------------------------------------------------------------ loop

    def _loop(self, ledger: Ledger, gate: Gate, sender: Sender, watcher: Watcher) -> None:
        cfg = self.config
        last_rescan = last_gauges = time.monotonic()
        while not self._stop.is_set():
            self._drain_events(ledger, watcher)
            worked = self._gate_due(ledger, gate)
            now = time.monotonic()
            if not cfg.once and now - last_rescan >= cfg.rescan_interval_s:
                watcher.scan()
                last_rescan = now
            if now - last_gauges >= 0.5:
                self._update_gauges(ledger, sender)
                last_gauges = now
            if cfg.once and self._all_done(ledger, sender):
                log.info("everything found has been delivered")
                return
            timeout = 0.0 if worked else min(0.1, sender.next_wakeup(), self._next_file_due(ledger))
            sender.pump(timeout)

    def _drain_events(self, ledger: Ledger, watcher: Watcher, limit: int = 10000) -> None:
        for _ in range(limit):
            try:
                path = watcher.events.get_nowait()
            except queue.Empty:
                return
            self.observe(ledger, path)

    def observe(self, ledger: Ledger, path: str) -> None:
        """Record a noticed path (a directory is scanned) in the ledger; a path that cannot be is logged and skipped."""
        try:
            self._observe(ledger, path)
        except Exception:  # one odd path must not stop the daemon
            log.exception("%s: cannot record it in the ledger; skipped", safe_text(path))

    def _observe(self, ledger: Ledger, path: str) -> None:
        if os.path.isdir(path):
            for found in scan(path):
                self.observe(ledger, found)
            return
        kind = file_kind(path)
        if kind is None:
            return
        try:
            st = os.stat(path)
        except OSError:
            return  # gone again (a temporary file, or deleted)
        absolute = os.path.abspath(path)
        delay = self.config.settle_s if kind == "cs" else 0.0
        if ledger.observe(absolute, kind, st.st_size, st.st_mtime_ns, now=time.time(), delay_s=delay):
            self.metrics.files_seen.inc()
            log.debug("noticed %s", absolute)

    def _gate_due(self, ledger: Ledger, gate: Gate, budget_s: float = 0.25) -> bool:
        start = time.monotonic()
        worked = False
        while time.monotonic() - start < budget_s and not self._stop.is_set():
            due = ledger.due_files(time.time(), limit=1)
            if not due:
                break
            outcome = self._process(ledger, gate, due[0])
            self._report(outcome)
            worked = True
        return worked

    def _process(self, ledger: Ledger, gate: Gate, record: FileRecord) -> Outcome:
        """``gate.process``, with a last line of defence: whatever fails, this file is quarantined."""
        try:
            return gate.process(record, time.time())
        except Exception as exc:
            log.exception("%s: unexpected failure", self.display(record.path))
            reason = f"unexpected {type(exc).__name__}: {exc}"
            ledger.quarantine(record.path, reason, code="unexpected_error")
            return Outcome(record.path, "quarantined", reason, code="unexpected_error")

    def display(self, path: str) -> str:
        """``path`` relative to the watched directory holding it, printable (for log lines)."""
        for root in self.config.watch_dirs:
            try:
                return safe_text(str(Path(path).relative_to(Path(root).absolute())))
            except ValueError:
                continue
        return safe_text(path)

    def _report(self, outcome: Outcome) -> None:
        name = self.display(outcome.path)
        for why, n in outcome.rejected.items():
            self.metrics.particles_rejected.labels(self.config.session, why).inc(n)
            log.warning("%s: %d particle(s) not sent: %s", name, n, why)
        if outcome.action == "planned":
            self.metrics.files_planned.inc()
            self.metrics.particles_planned.inc(outcome.n_new)
            if outcome.msg_ids:
                ids = outcome.msg_ids[0] if len(outcome.msg_ids) == 1 else f"{outcome.msg_ids[0]}…{outcome.msg_ids[-1]}"
                log.info(
                    "%s: %d particle(s), %d new → %d batch(es) %s",
                    name,
                    outcome.n_particles,
                    outcome.n_new,
                    len(outcome.msg_ids),
                    ids,
                )
            else:
                log.info("%s: %d particle(s), none new", name, outcome.n_particles)
        elif outcome.action == "quarantined":
            self.metrics.files_quarantined.inc()
            log.error("%s: quarantined (%s): %s", name, outcome.code, safe_text(outcome.reason))
        elif outcome.action == "retry":
            log.warning("%s: cannot read it yet, will retry: %s", name, safe_text(outcome.reason))
        else:
            log.debug("%s: waiting: %s", name, safe_text(outcome.reason))

    def _next_file_due(self, ledger: Ledger) -> float:
        due = ledger.next_due_time()
        return 0.1 if due is None else max(0.0, due - time.time())

    def _all_done(self, ledger: Ledger, sender: Sender) -> bool:
        return ledger.files_waiting() == 0 and ledger.backlog()[0] == 0 and sender.in_flight == 0

    def _update_gauges(self, ledger: Ledger, sender: Sender) -> None:
        batches, particles = ledger.backlog()
        self.metrics.backlog_batches.set(batches)
        self.metrics.backlog_particles.set(particles)
        self.metrics.files_waiting.set(ledger.files_waiting())
        self.metrics.in_flight.set(sender.in_flight)
        quarantined = ledger.quarantined_by_reason()
        for code in set(QUARANTINE_REASONS) | set(quarantined):
            self.metrics.quarantined.labels(self.config.session, code).set(quarantined.get(code, 0))


__all__ = ["Streamer", "StreamerConfig"]
