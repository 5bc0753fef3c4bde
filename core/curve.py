"""CurveZMQ settings shared by every command that talks to the engine (socket-free: paths and checks).

ZeroMQ's own certificate files (``zmq.auth.create_certificates``, ``otf2d keys``): ``NAME.key``
holds a public key, ``NAME.key_secret`` the public and the secret key (keep it mode 0600, never in a
committed config). A client gives ``--curve-secret CLIENT.key_secret --curve-server ENGINE.key``; the
engine gives ``--curve-secret ENGINE.key_secret --curve-clients DIR`` (DIR holds the ``.key`` files
of the clients it accepts). The sockets themselves are set up where ZeroMQ is imported:
``otf2d.control.curve``, for the engine, its control client and the streamer's sender alike.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from otf2d.core.errors import ConfigError

_TCP = re.compile(r"^tcp://(?P<host>\[[^\]]*\]|[^:/]*):(?P<port>[^/]+)$")
_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


@dataclass(frozen=True)
class CurveClientFiles:
    """A client's certificate files: its own ``.key_secret`` and the engine's public ``.key``."""

    secret: Path
    server: Path


def add_client_args(parser: argparse.ArgumentParser) -> None:
    """``--curve-secret`` and ``--curve-server`` (both or neither)."""
    group = parser.add_argument_group("CurveZMQ (required when the engine listens beyond this host)")
    group.add_argument(
        "--curve-secret", type=Path, metavar="FILE", help="this client's certificate (NAME.key_secret, otf2d keys)"
    )
    group.add_argument("--curve-server", type=Path, metavar="FILE", help="the engine's public certificate (NAME.key)")


def client_files(args: argparse.Namespace) -> CurveClientFiles | None:
    """The client's certificate files from ``--curve-secret`` / ``--curve-server`` (``None``: plain TCP).

    Raises
    ------
    ConfigError
        Only one of the two is given, or a file is missing.
    """
    secret, server = getattr(args, "curve_secret", None), getattr(args, "curve_server", None)
    if secret is None and server is None:
        return None
    if secret is None or server is None:
        raise ConfigError(None, "--curve-secret and --curve-server go together (this client's and the engine's key)")
    for path in (secret, server):
        if not Path(path).is_file():
            raise ConfigError(path, "certificate file not found")
    return CurveClientFiles(Path(secret), Path(server))


def is_loopback(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint can only be reached from this host (``ipc://``, ``inproc://``, 127/8, ::1)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    match = _TCP.match(endpoint)
    if match is None:
        return False
    host = match.group("host").strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: reachable from elsewhere


__all__ = ["CurveClientFiles", "add_client_args", "client_files", "is_loopback"]
