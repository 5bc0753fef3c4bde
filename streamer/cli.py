"""Stream particle files to the engine as the microscope writes them (the microscope-side daemon).

Watches the directories recursively for RELION *_extract.star (renamed into place by RELION),
job-level particles.star (rewritten on every pass: only particles not sent before are sent) and
cryoSPARC .cs files; sends a file's particles once its stacks are complete, in batches of at
most --batch-size, over a ZeroMQ DEALER to the engine's ROUTER, with at most --window batches
awaiting acknowledgement. A SQLite ledger records every file and batch, so a restart re-sends
exactly what the engine has not acknowledged and nothing else. SIGTERM / Ctrl-C stop cleanly.

_extract.star files carry no optics: they are taken from the Extract job's particles.star (the
streamer waits for it), from --optics-from, or from --voltage/--cs/--amplitude-contrast.

Example:
  otf2d stream --watch /data/project --engine tcp://gpu-node:5555 --session grid3 --metrics-port 9101
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path
from types import FrameType

from otf2d.core.curve import add_client_args, client_files
from otf2d.streamer.daemon import Streamer, StreamerConfig

log = logging.getLogger(__name__)


def default_ledger(session: str) -> Path:
    """``$XDG_STATE_HOME/otf2d/stream-<session>.sqlite`` (``~/.local/state`` when unset)."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in session)
    return base / "otf2d" / f"stream-{safe}.sqlite"


def add_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``otf2d stream``."""
    parser.add_argument(
        "--watch", action="append", required=True, type=Path, metavar="DIR", help="directory to watch (repeatable)"
    )
    parser.add_argument("--engine", required=True, metavar="ENDPOINT", help="engine ROUTER, e.g. tcp://host:5555")
    parser.add_argument("--session", required=True, help="session name (particle keys, ledger, socket identity)")
    parser.add_argument("--ledger", type=Path, default=None, help="SQLite ledger (default ~/.local/state/otf2d/...)")
    parser.add_argument("--identity", default=None, help="DEALER identity (default: the session name)")
    parser.add_argument(
        "--observer",
        choices=("auto", "inotify", "polling"),
        default="auto",
        help="auto = polling on network filesystems (nfs, cifs, smb, fuse, gpfs, lustre), else inotify",
    )
    parser.add_argument("--poll-interval", type=float, default=1.0, metavar="S", help="polling interval (default 1)")
    parser.add_argument("--window", type=int, default=8, metavar="W", help="most un-acknowledged batches (default 8)")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N", help="most particles per batch (256)")
    parser.add_argument("--ack-timeout", type=float, default=10.0, metavar="S", help="re-send after (default 10 s)")
    parser.add_argument("--heartbeat", type=float, default=2.0, metavar="S", help="ping when idle (default 2 s)")
    parser.add_argument(
        "--settle", type=float, default=2.0, metavar="S", help="non-RELION files: unchanged this long (2 s)"
    )
    parser.add_argument(
        "--incomplete-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="quarantine a file whose stacks stay incomplete this long (default 600 s)",
    )
    parser.add_argument(
        "--particles-star-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="re-read a rewritten particles.star at most this often (default 5 s)",
    )
    parser.add_argument(
        "--no-verify-pixels",
        action="store_true",
        help="do not read every image once before sending (NaN/Inf then show up at send time)",
    )
    parser.add_argument("--optics-from", type=Path, default=None, help="particles.star whose optics apply")
    parser.add_argument("--pixel-size", type=float, default=None, metavar="A", help="A/px (overrides files)")
    parser.add_argument("--voltage", type=float, default=None, metavar="KV", help="kV (overrides files)")
    parser.add_argument("--cs", type=float, default=None, metavar="MM", help="spherical aberration, mm")
    parser.add_argument("--amplitude-contrast", type=float, default=None, metavar="Q0", help="fraction, e.g. 0.1")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="P", help="serve /metrics on this port")
    parser.add_argument(
        "--rescan-interval", type=float, default=300.0, metavar="S", help="full rescan (safety net, default 300 s)"
    )
    parser.add_argument("--once", action="store_true", help="send what exists now, wait for the ACKs, exit")
    add_client_args(parser)


def config_from_args(args: argparse.Namespace) -> StreamerConfig:
    """The :class:`StreamerConfig` described by parsed options."""
    curve = client_files(args)
    return StreamerConfig(
        watch_dirs=tuple(Path(d) for d in args.watch),
        engine=args.engine,
        session=args.session,
        ledger_path=args.ledger if args.ledger is not None else default_ledger(args.session),
        identity=args.identity,
        observer=args.observer,
        poll_interval_s=args.poll_interval,
        window=args.window,
        batch_size=args.batch_size,
        ack_timeout_s=args.ack_timeout,
        heartbeat_s=args.heartbeat,
        settle_s=args.settle,
        incomplete_timeout_s=args.incomplete_timeout,
        particles_star_interval_s=args.particles_star_interval,
        verify_pixels=not args.no_verify_pixels,
        optics_from=args.optics_from,
        pixel_size_angstrom=args.pixel_size,
        voltage_kv=args.voltage,
        spherical_aberration_mm=args.cs,
        amplitude_contrast=args.amplitude_contrast,
        rescan_interval_s=args.rescan_interval,
        metrics_port=args.metrics_port,
        once=args.once,
        curve_secret=curve.secret if curve is not None else None,
        curve_server=curve.server if curve is not None else None,
    )


def main(args: argparse.Namespace) -> int:
    """Run ``otf2d stream`` until SIGTERM/SIGINT (or, with --once, until done); returns the exit status."""
    streamer = Streamer(config_from_args(args))

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        streamer.stop()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return streamer.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["add_args", "config_from_args", "default_ledger", "main"]
