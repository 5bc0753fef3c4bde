"""Run the persistent classification engine: a ZeroMQ ROUTER that journals, classifies and snapshots.

Example usage:

    otf2d engine --data /srv/otf2d --classes 50                      # tcp://127.0.0.1:5555, this host only
    otf2d keys --out /etc/otf2d/keys --name engine                   # once: the engine's certificate
    otf2d engine --listen tcp://*:5555 --curve-secret /etc/otf2d/keys/engine.key_secret \\
        --curve-clients /etc/otf2d/clients --data /srv/otf2d --http-port 8001 --http-addr 0.0.0.0

Streamers (``otf2d stream --engine tcp://HOST:5555``) connect to it. Security: by default the engine
listens on loopback only. On an address other hosts can reach it requires CurveZMQ (it refuses to
start otherwise, unless ``--insecure``): ``--curve-secret`` is its certificate, ``--curve-clients`` the
folder of the public keys (``*.key``, from ``otf2d keys``) of the streamers and users it accepts;
other clients get nothing through. A session belongs to the key that created it: another key may
read its status but not write to it. At most ``--max-sessions`` sessions (default 64). Each session (named by its
batches, or created by ``start_session``) keeps its journal, checkpoints and snapshots under
``--data DIR/sessions/<name>/``. Particles are ACKed once durably journaled; the classes are
initialised from the first ``K × batch_size_per_class`` particles, then every new batch is folded
in with online EM. Snapshots (RELION Class2D, cryoSPARC .cs, PNG gallery) are written to
``sessions/<name>/snapshots/`` every ``--snapshot-every`` particles or ``--snapshot-seconds``.
SIGTERM or Ctrl-C: stop accepting, journal what already arrived, fold what is pending (at most
``--drain-seconds``), checkpoint and exit 0. A restart continues from the checkpoint and the journal.
Runs on CUDA when present (``--device auto``), else on the CPU.

Monitoring: every snapshot is scored (junk score per class, distinct views, grid verdict with its
reasons; thresholds from the config's ``[verdict]`` table) before it is written, so the STAR, .cs
and gallery files carry the junk flags. The status server on ``--http-addr:--http-port`` (default
127.0.0.1:8001; 0 = any free port) serves the status page ``/``, ``/status.json``,
``/gallery.png``, ``/classes/N.png`` and ``/metrics`` (engine counters and per-session class
metrics in one registry: the Prometheus target). ``--metrics-port`` additionally serves the same
``/metrics`` alone on ``--metrics-addr`` (e.g. for Prometheus on another network while the status
page stays on loopback). If the default status port is taken the engine runs without a status page
(a warning says so); a port given explicitly must be free. ``otf2d override`` marks a class good
or junk (kept in the session folder, applied to every later snapshot, kept across restarts).

Sessions: open while particles arrive, idle after ``idle_after_minutes`` without one, closed by
``otf2d close --session NAME`` or after ``close_after_idle_hours`` idle (the config's
``[sessions]`` table); a closed session keeps its files and leaves ``/metrics``
``retain_closed_minutes`` later.

CPU threads: ``--threads N`` sets torch's intra-op threads (default one per core). On a small
machine that also runs the streamer, one thread avoids OpenMP oversubscription, which can make
classification steps tens of times slower.

Memory: blocks of ``--mmap-threshold-mb`` (default 4) and more are mapped on their own and handed
back to the OS when freed, so the heap fragments less under the steps' large tensors (on a CPU
engine its memory grows 5-8 % from 20k to 200k particles, against +29 % with the C library's
dynamic threshold, measured in :mod:`otf2d.engine.resources.heap`); 0 keeps the C library's own (dynamic)
threshold, and a ``MALLOC_MMAP_THRESHOLD_`` in the environment wins. ``otf2d status`` shows the
engine's memory (and the GPU's on CUDA); ``/metrics`` has it as ``process_resident_memory_bytes``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from otf2d.core.classification_flags import add_classification_args, params_from_args
from otf2d.core.config import Class2DParams, EngineLimits, VerdictConfig, load_config
from otf2d.core.curve import is_loopback
from otf2d.core.errors import ConfigError
from otf2d.engine.resources.device import add_device_args, check_threads, choose_device
from otf2d.engine.resources.heap import MAX_MMAP_THRESHOLD_BYTES, set_mmap_threshold

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from otf2d.engine.serving.monitoring_hooks import EngineMonitoring
    from otf2d.engine.serving.server import EngineServer
    from otf2d.engine.serving.service import EngineConfig, EngineService
    from otf2d.monitoring.http import StatusServer

log = logging.getLogger(__name__)

#: Port of the status page and /metrics when ``--http-port`` is not given (deploy/ scrapes it).
DEFAULT_HTTP_PORT = 8001
#: Default of ``--listen``: this host only (other hosts need CurveZMQ, or ``--insecure``).
DEFAULT_LISTEN = "tcp://127.0.0.1:5555"
#: Default of ``--mmap-threshold-mb`` (measured in :mod:`otf2d.engine.resources.heap`).
DEFAULT_MMAP_THRESHOLD_MB = 4.0


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``otf2d engine``."""
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        help="ROUTER endpoint to bind (default %(default)s: this host only); an address other hosts can reach "
        "needs --curve-secret and --curve-clients (or --insecure)",
    )
    parser.add_argument("--data", required=True, type=Path, help="directory of the engine's state")
    parser.add_argument(
        "--config", type=Path, help="TOML file; its [classification] table sets session defaults (flags win)"
    )
    parser.add_argument("--snapshot-every", type=int, default=2000, help="snapshot every N particles folded")
    parser.add_argument("--snapshot-seconds", type=float, default=30.0, help="snapshot every S seconds (if changed)")
    parser.add_argument(
        "--snapshot-min-seconds",
        type=float,
        default=10.0,
        help="at least S seconds between snapshots due to --snapshot-every (each rewrites every particle; default 10)",
    )
    parser.add_argument("--checkpoint-every", type=int, default=2000, help="checkpoint every N particles folded")
    parser.add_argument("--checkpoint-seconds", type=float, default=60.0, help="checkpoint every S seconds")
    parser.add_argument("--keep-snapshots", type=int, default=5, help="snapshots kept per session (0: all)")
    parser.add_argument("--max-step", type=int, default=2048, help="most particles folded in one EM step")
    parser.add_argument(
        "--no-revisit",
        action="store_true",
        help="do not reclassify the folded particles from scratch when idle (the classes then follow the streaming "
        "updates only, and the first classes take the full initial schedule instead of the quick start)",
    )
    parser.add_argument("--max-backlog", type=int, default=0, help="NACK while more particles wait (0: never)")
    parser.add_argument("--cache-dtype", choices=("float16", "float32"), default="float16", help="cached images")
    parser.add_argument("--drain-seconds", type=float, default=20.0, help="longest fold of pending work on stop")
    add_device_args(parser)
    parser.add_argument(
        "--mmap-threshold-mb",
        type=float,
        default=DEFAULT_MMAP_THRESHOLD_MB,
        help="allocations of this many MB or more get their own mapping, returned to the OS when freed, so "
        "the heap does not fragment (default %(default)g; 0: the C library's dynamic threshold)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=None,
        help=f"status page and /metrics on this port (default {DEFAULT_HTTP_PORT}; 0: any free port)",
    )
    parser.add_argument(
        "--http-addr", default="127.0.0.1", help="address of the status page (default %(default)s: this host only)"
    )
    parser.add_argument("--metrics-port", type=int, help="also serve /metrics alone on this port")
    parser.add_argument("--metrics-addr", default="0.0.0.0", help="address of --metrics-port (default %(default)s)")
    parser.add_argument(
        "--max-sessions", type=int, help="most sessions held, one more is refused (default: config's, else 64)"
    )
    curve = parser.add_argument_group("CurveZMQ authentication and encryption (otf2d keys)")
    curve.add_argument("--curve-secret", type=Path, metavar="FILE", help="the engine's certificate (NAME.key_secret)")
    curve.add_argument(
        "--curve-clients", type=Path, metavar="DIR", help="folder of the accepted clients' public keys (*.key)"
    )
    curve.add_argument(
        "--insecure",
        action="store_true",
        help="listen on an address other hosts can reach WITHOUT CurveZMQ: anyone who reaches the port can "
        "create sessions, inject particles and control the engine",
    )
    add_classification_args(
        parser, "classification defaults of new sessions (cryoSPARC's parameters and defaults; flags override --config)"
    )


def session_defaults(args: argparse.Namespace) -> Class2DParams:
    """Classification defaults of new sessions: cryoSPARC's, then the config's table, then the flags.

    Raises
    ------
    ConfigError
        An invalid config file or flag value.
    """
    return params_from_args(args)


def check_listen_security(args: argparse.Namespace) -> bool:
    """Whether CURVE is on; refuses an address other hosts can reach without it (unless ``--insecure``).

    Raises
    ------
    ConfigError
        Only one of ``--curve-secret`` / ``--curve-clients``, or a reachable address without CURVE.
    """
    secret, clients = args.curve_secret, args.curve_clients
    if (secret is None) != (clients is None):
        raise ConfigError(None, "--curve-secret and --curve-clients go together (the engine's key, the clients' keys)")
    if secret is not None:
        return True
    if not is_loopback(args.listen) and not args.insecure:
        raise ConfigError(
            None,
            f"refusing to listen on {args.listen} without CurveZMQ: any host that reaches this port could create "
            "sessions, inject particles, pause sessions and mark classes junk. Give --curve-secret ENGINE.key_secret "
            "and --curve-clients DIR (make keys with 'otf2d keys'), listen on 127.0.0.1, or accept the risk with "
            "--insecure",
        )
    if args.insecure and not is_loopback(args.listen):
        log.warning("listening on %s WITHOUT CurveZMQ (--insecure): any host that reaches it is trusted", args.listen)
    return False


def max_sessions(args: argparse.Namespace) -> int:
    """``--max-sessions``, else the config's ``[engine] max_sessions`` (default 64)."""
    limits = load_config(args.config).engine if args.config is not None else EngineLimits()
    if args.max_sessions is None:
        return limits.max_sessions
    return dataclasses.replace(limits, max_sessions=args.max_sessions).max_sessions


def http_port(args: argparse.Namespace) -> int:
    """The status port asked for (:data:`DEFAULT_HTTP_PORT` when ``--http-port`` is not given)."""
    return DEFAULT_HTTP_PORT if args.http_port is None else int(args.http_port)


def start_status_server(
    args: argparse.Namespace, monitoring: EngineMonitoring, registry: CollectorRegistry
) -> StatusServer | None:
    """Start the status page and ``/metrics`` on ``--http-addr:--http-port``.

    Returns
    -------
    StatusServer or None
        ``None`` when the *default* port is taken (logged as a warning: the engine runs on).

    Raises
    ------
    ConfigError
        A port given with ``--http-port`` cannot be bound.
    """
    from otf2d.monitoring.http import StatusServer

    port = http_port(args)
    server = StatusServer(
        monitoring.states,
        registry=registry,
        host=args.http_addr,
        port=port,
        title="otf2d engine",
        lifecycle=monitoring.lifecycle_states,
    )
    try:
        server.start()
    except OSError as exc:
        if args.http_port is not None:
            raise ConfigError(None, f"cannot serve the status page on {args.http_addr}:{port}: {exc}") from exc
        log.warning(
            "no status page: %s:%d is not available (%s); give --http-port to choose another port",
            args.http_addr,
            port,
            exc.strerror or exc,
        )
        return None
    log.info("status page on %s (also /metrics, /status.json, /gallery.png)", server.url)
    return server


def apply_mmap_threshold(threshold_mb: float) -> None:
    """Fix the C library's mmap threshold at ``threshold_mb`` (0: leave it; see :mod:`otf2d.engine.resources.heap`)."""
    limit_mb = MAX_MMAP_THRESHOLD_BYTES / 2**20
    if not 0 <= threshold_mb <= limit_mb:
        raise ConfigError(None, f"--mmap-threshold-mb must be 0 .. {limit_mb:g}, got {threshold_mb:g}")
    if threshold_mb == 0:
        return
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        log.info("MALLOC_MMAP_THRESHOLD_ is set in the environment: --mmap-threshold-mb is not applied")
        return
    if not set_mmap_threshold(max(1, round(threshold_mb * 2**20))):
        log.info("the C library has no mallopt: --mmap-threshold-mb is not applied")


def main(args: argparse.Namespace) -> int:
    """Run the engine until SIGTERM / SIGINT; returns 0 after a clean stop."""
    use_curve = check_args(args)
    import torch

    from otf2d.control.curve import ServerCurve
    from otf2d.engine.serving.em_adapter import em_classifier_factory
    from otf2d.engine.serving.server import EngineServer, ServerConfig
    from otf2d.engine.serving.service import EngineService

    device = choose_device(args.device, args.threads)
    config = engine_config(args)
    curve = ServerCurve(args.curve_secret, args.curve_clients) if use_curve else None
    stop = stop_on_signals()
    monitoring = engine_monitoring(args)
    service = EngineService(config, em_classifier_factory, device, monitoring.write_snapshot)
    monitoring.attach(service)
    log.info(
        "engine on %s (%d CPU threads), data in %s; new sessions: %d classes, %d per class; "
        "snapshot every %d particles / %g s",
        device,
        torch.get_num_threads(),
        args.data,
        config.defaults.n_classes,
        config.defaults.batch_size_per_class,
        args.snapshot_every,
        args.snapshot_seconds,
    )
    service.open()
    serve(args, EngineServer(service, ServerConfig(listen=args.listen), curve=curve), service, monitoring, stop)
    log.info("engine stopped cleanly")
    return 0


def check_args(args: argparse.Namespace) -> bool:
    """Step 1 of :func:`main`: refuse what cannot run (before torch is imported); whether to use CurveZMQ.

    Also applies ``--mmap-threshold-mb``.
    """
    if args.metrics_port is not None and args.metrics_port == http_port(args) and args.metrics_port != 0:
        raise ConfigError(
            None,
            f"--metrics-port {args.metrics_port} is the status port: /metrics is served there already "
            "(give --http-addr 0.0.0.0 to reach it from other hosts, or another --metrics-port)",
        )
    check_threads(args.threads)
    use_curve = check_listen_security(args)
    apply_mmap_threshold(args.mmap_threshold_mb)
    return use_curve


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """Step 2: the service's configuration (data folder, session defaults, the worker's cadence, limits)."""
    from otf2d.engine.serving.service import EngineConfig
    from otf2d.engine.serving.worker import WorkerConfig

    worker = WorkerConfig(
        max_step_particles=args.max_step,
        checkpoint_every=args.checkpoint_every,
        checkpoint_seconds=args.checkpoint_seconds,
        snapshot_every=args.snapshot_every,
        snapshot_seconds=args.snapshot_seconds,
        snapshot_min_seconds=args.snapshot_min_seconds,
        revisit=not args.no_revisit,
    )
    return EngineConfig(
        data_dir=args.data,
        defaults=session_defaults(args),
        worker=worker,
        cache_dtype=args.cache_dtype,
        max_backlog=args.max_backlog,
        keep_snapshots=args.keep_snapshots,
        max_sessions=max_sessions(args),
    )


def stop_on_signals() -> threading.Event:
    """Step 3: an event that SIGTERM and SIGINT set (the serving loop stops, drains and closes)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def engine_monitoring(args: argparse.Namespace) -> EngineMonitoring:
    """Step 4: snapshot scoring and session lifecycle, from the config's ``[verdict]`` and ``[sessions]``."""
    from otf2d.engine.serving.monitoring_hooks import EngineMonitoring

    loaded = load_config(args.config) if args.config is not None else None
    verdict = loaded.verdict if loaded is not None else VerdictConfig()
    return EngineMonitoring(verdict, lifecycle=loaded.sessions if loaded is not None else None)


def serve(
    args: argparse.Namespace,
    server: EngineServer,
    service: EngineService,
    monitoring: EngineMonitoring,
    stop: threading.Event,
) -> None:
    """Step 5: bind, start monitoring, the status page and ``/metrics``, serve until ``stop``, drain; then
    close everything (also when a step fails)."""
    import zmq

    stop_metrics = None
    status_server = None
    try:
        try:
            server.bind()
        except zmq.ZMQError as exc:
            raise ConfigError(None, f"cannot listen on {args.listen}: {exc}") from exc
        monitoring.start()
        status_server = start_status_server(args, monitoring, service.metrics.registry)
        if args.metrics_port is not None:
            try:
                stop_metrics = service.metrics.serve(args.metrics_port, args.metrics_addr)
            except OSError as exc:
                raise ConfigError(None, f"cannot serve /metrics on port {args.metrics_port}: {exc}") from exc
            log.info("metrics on http://%s:%d/metrics", args.metrics_addr, args.metrics_port)
        server.serve(stop)
        drained = server.drain()
        log.info("stopped accepting; %d message(s) journaled while draining", drained)
    finally:
        server.close()
        service.close(args.drain_seconds)
        monitoring.stop()
        if status_server is not None:
            status_server.stop()
        if stop_metrics is not None:
            stop_metrics()


__all__ = ["DEFAULT_HTTP_PORT", "add_args", "http_port", "main", "session_defaults", "start_status_server"]
