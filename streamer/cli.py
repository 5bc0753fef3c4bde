"""Stream particle files to the engine as the microscope writes them (the microscope-side daemon).

Watches the directories recursively for RELION *_extract.star (renamed into place by RELION),
job-level particles.star (rewritten on every pass: only particles not sent before are sent) and
cryoSPARC .cs files; sends a file's particles once its stacks are complete, in batches of at
most --batch-size, over a ZeroMQ DEALER to the engine's ROUTER, with at most --window batches
awaiting acknowledgement. A SQLite ledger records every file and batch, so a restart re-sends
exactly what the engine has not acknowledged and nothing else. SIGTERM / Ctrl-C stop cleanly.

_extract.star files carry no optics: they are taken from the Extract job's particles.star (the
streamer waits for it), from --optics-from, or from --voltage/--cs/--amplitude-contrast.

Settings come from --config FILE (the [streamer] table: one key per setting, as in
deploy/config/streamer.example.toml), then from flags, which win. --watch, --engine and --session
are required, as flags or in the file.

Example:
  otf2d stream --watch /data/project --engine tcp://gpu-node:5555 --session grid3 --metrics-port 9101
  otf2d stream --config /etc/otf2d/streamer-krios1.toml
  otf2d stream --config /etc/otf2d/streamer-krios1.toml --once --close-session   # the grid is done

--once --close-session ends a collection: send what exists, wait for every ACK, then close the
session on the engine (as `otf2d close` does; a closed session leaves /metrics later and fires
no alert).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import types
import typing
from pathlib import Path
from types import FrameType
from typing import Any

from otf2d.core.config import read_toml
from otf2d.core.curve import add_client_args, client_files
from otf2d.core.errors import ConfigError
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
        "--watch", action="append", type=Path, metavar="DIR", help="directory to watch (repeatable; or watch_dirs)"
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML file with a [streamer] table (flags win)")
    parser.add_argument("--engine", metavar="ENDPOINT", help="engine ROUTER, e.g. tcp://host:5555")
    parser.add_argument("--session", help="session name (particle keys, ledger, socket identity)")
    parser.add_argument("--ledger", type=Path, default=None, help="SQLite ledger (default ~/.local/state/otf2d/...)")
    parser.add_argument("--identity", default=None, help="DEALER identity (default: the session name)")
    parser.add_argument(
        "--observer",
        choices=("auto", "inotify", "polling"),
        default=None,
        help="auto = polling on network filesystems (nfs, cifs, smb, fuse, gpfs, lustre), else inotify",
    )
    parser.add_argument("--poll-interval", type=float, default=None, metavar="S", help="polling interval (default 1)")
    parser.add_argument(
        "--window", type=int, default=None, metavar="W", help="most un-acknowledged batches (default 8)"
    )
    parser.add_argument("--batch-size", type=int, default=None, metavar="N", help="most particles per batch (256)")
    parser.add_argument("--ack-timeout", type=float, default=None, metavar="S", help="re-send after (default 10 s)")
    parser.add_argument("--heartbeat", type=float, default=None, metavar="S", help="ping when idle (default 2 s)")
    parser.add_argument(
        "--settle", type=float, default=None, metavar="S", help="non-RELION files: unchanged this long (2 s)"
    )
    parser.add_argument(
        "--incomplete-timeout",
        type=float,
        default=None,
        metavar="S",
        help="quarantine a file whose stacks stay incomplete this long (default 600 s)",
    )
    parser.add_argument(
        "--particles-star-interval",
        type=float,
        default=None,
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
        "--rescan-interval", type=float, default=None, metavar="S", help="full rescan (safety net, default 300 s)"
    )
    parser.add_argument("--once", action="store_true", help="send what exists now, wait for the ACKs, exit")
    parser.add_argument(
        "--close-session",
        action="store_true",
        help="with --once: the collection has ended; after the last ACK, close the session on the engine",
    )
    add_client_args(parser)


#: Flag destination → ``StreamerConfig`` field, for the flags whose names differ.
_FLAG_FIELDS = {
    "watch": "watch_dirs",
    "ledger": "ledger_path",
    "poll_interval": "poll_interval_s",
    "ack_timeout": "ack_timeout_s",
    "heartbeat": "heartbeat_s",
    "settle": "settle_s",
    "incomplete_timeout": "incomplete_timeout_s",
    "particles_star_interval": "particles_star_interval_s",
    "pixel_size": "pixel_size_angstrom",
    "voltage": "voltage_kv",
    "cs": "spherical_aberration_mm",
    "rescan_interval": "rescan_interval_s",
}


def _file_value(name: str, value: Any, hint: Any, where: str) -> Any:
    """``value`` of TOML key ``name`` as the ``StreamerConfig`` field of type ``hint`` wants it."""
    if name == "watch_dirs":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
            raise ConfigError(None, f"{where}: a list of directories, got {value!r}")
        return tuple(Path(v) for v in items)
    options = [h for h in typing.get_args(hint) if h is not type(None)] if _is_optional(hint) else [hint]
    kind = options[0]
    if kind is Path and isinstance(value, str) and value:
        return Path(value)
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind in (int, bool, str) and type(value) is kind:
        return value
    raise ConfigError(None, f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def load_streamer_table(path: Path) -> dict[str, Any]:
    """The ``[streamer]`` table of a TOML file as ``StreamerConfig`` field values.

    Raises
    ------
    ConfigError
        The file cannot be read or parsed, has no ``[streamer]`` table, or a key is unknown or has
        a wrong type (the message names the file and the key).
    """
    data = read_toml(path)
    table = data.get("streamer")
    if not isinstance(table, dict):
        raise ConfigError(path, "no [streamer] table")
    hints = typing.get_type_hints(StreamerConfig)
    unknown = sorted(set(table) - set(hints) - {"once"})
    if unknown or "once" in table:
        known = sorted(set(hints) - {"once"})
        raise ConfigError(path, f"[streamer]: unknown key(s) {unknown or ['once']}; known: {known}")
    try:
        return {k: _file_value(k, v, hints[k], f"[streamer].{k}") for k, v in table.items()}
    except ConfigError as exc:
        raise ConfigError(path, exc.what) from exc


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (not their defaults)."""
    values: dict[str, Any] = {}
    fields = {f.name for f in dataclasses.fields(StreamerConfig)}
    for dest, value in vars(args).items():
        name = _FLAG_FIELDS.get(dest, dest)
        if name in fields and value is not None and name not in ("verify_pixels", "once"):
            values[name] = tuple(Path(d) for d in value) if name == "watch_dirs" else value
    if args.no_verify_pixels:
        values["verify_pixels"] = False
    values["once"] = bool(args.once)
    return values


def config_from_args(args: argparse.Namespace) -> StreamerConfig:
    """The :class:`StreamerConfig` of ``--config`` (if given) overlaid with the flags given.

    Raises
    ------
    ConfigError
        An invalid file, or no watch directory / engine / session in either.
    """
    client_files(args)  # both CURVE files or neither
    config_file = getattr(args, "config", None)
    values = load_streamer_table(config_file) if config_file is not None else {}
    values.update(_flag_values(args))
    missing = [
        flag
        for flag, key in (("--watch", "watch_dirs"), ("--engine", "engine"), ("--session", "session"))
        if key not in values
    ]
    if missing:
        where = f" or in [streamer] of {config_file}" if config_file is not None else " (or --config FILE)"
        raise ConfigError(None, f"otf2d stream needs {', '.join(missing)}{where}")
    values.setdefault("ledger_path", default_ledger(values["session"]))
    try:
        return StreamerConfig(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(config_file, str(exc)) from exc


def main(args: argparse.Namespace) -> int:
    """Run ``otf2d stream`` until SIGTERM/SIGINT (or, with --once, until done); returns the exit status."""
    close = bool(getattr(args, "close_session", False))
    if close and not args.once:
        raise ConfigError(None, "--close-session needs --once: the session is closed after its last particle is sent")
    config = config_from_args(args)
    status = _run(Streamer(config))
    if close and status == 0:
        from otf2d.streamer.close import close_session

        result = close_session(
            config.engine, config.session, timeout_s=max(10.0, config.ack_timeout_s), curve=config.curve_files
        )
        log.info("session %s closed on the engine (%s particles received)", config.session, result.get("received"))
        print(f"{config.session}: closed on the engine; {result.get('received')} particles received")
    return status


def _run(streamer: Streamer) -> int:
    """Run until done or SIGTERM/SIGINT."""

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        streamer.stop()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return streamer.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["add_args", "config_from_args", "default_ledger", "load_streamer_table", "main"]
