"""CurveZMQ on the engine's sockets, with ZeroMQ's own certificate files and authenticator (torch-free).

- :func:`create_keys`: ``NAME.key`` + ``NAME.key_secret`` (``zmq.auth.create_certificates``;
  the secret file made mode 0600).
- :class:`ServerCurve`: the engine's ROUTER as a CURVE server; a ``zmq.auth.thread.ThreadAuthenticator``
  (ZAP) lets in only clients whose public key is among the ``.key`` files of the clients folder.
  The authenticated client's public key (Z85) arrives with each message as its ``User-Id``.
- :func:`apply_client`: a DEALER as a CURVE client of the engine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from otf2d.core.curve import CurveClientFiles
from otf2d.core.errors import ConfigError

log = logging.getLogger(__name__)

#: The ZAP domain of the engine's ROUTER (the authenticator's key list applies to it).
ZAP_DOMAIN = "otf2d"


def create_keys(out: Path, name: str) -> tuple[Path, Path]:
    """Write ``out/NAME.key`` (public) and ``out/NAME.key_secret`` (mode 0600); returns both paths.

    Raises
    ------
    ConfigError
        A bad name, or a certificate of that name already exists (never overwritten).
    """
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(None, f"--name must be a plain file name, got {name!r}")
    out.mkdir(parents=True, exist_ok=True)
    public, secret = out / f"{name}.key", out / f"{name}.key_secret"
    existing = [p for p in (public, secret) if p.exists()]
    if existing:
        raise ConfigError(existing[0], "a certificate of this name exists already (not overwritten)")
    old_umask = os.umask(0o077)
    try:
        made_public, made_secret = zmq.auth.create_certificates(str(out), name)
    finally:
        os.umask(old_umask)
    os.chmod(made_secret, 0o600)
    os.chmod(made_public, 0o644)
    return Path(made_public), Path(made_secret)


def _load(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(path, f"not a ZeroMQ certificate: {exc}") from exc
    if secret and secret_key is None:
        raise ConfigError(path, "holds no secret key: give the NAME.key_secret file")
    return public, secret_key


def apply_client(socket: zmq.Socket[Any], files: CurveClientFiles) -> None:
    """Make ``socket`` (before it connects) a CURVE client of the engine whose public key is ``files.server``."""
    public, secret = _load(files.secret, secret=True)
    server, _ = _load(files.server, secret=False)
    socket.curve_publickey = public
    socket.curve_secretkey = secret
    socket.curve_serverkey = server


class ServerCurve:
    """CURVE for the engine's ROUTER: its own certificate and the folder of accepted client keys.

    Parameters
    ----------
    secret
        The engine's ``NAME.key_secret``.
    clients
        Folder of the accepted clients' ``.key`` files (read when the engine starts).
    """

    def __init__(self, secret: Path, clients: Path) -> None:
        self.public, self.secret = _load(secret, secret=True)
        if not clients.is_dir():
            raise ConfigError(clients, "the folder of client keys (--curve-clients) does not exist")
        self.clients = clients
        self.n_clients = len(list(clients.glob("*.key")))
        if self.n_clients == 0:
            raise ConfigError(clients, "holds no client key (*.key): no client could connect")
        self._auth: ThreadAuthenticator | None = None

    def start(self, context: zmq.Context[Any]) -> None:
        """Start the ZAP authenticator on ``context`` (before the ROUTER binds)."""
        auth = ThreadAuthenticator(context, log=logging.getLogger("otf2d.control.curve.zap"))
        auth.start()
        auth.configure_curve(domain=ZAP_DOMAIN, location=str(self.clients))
        self._auth = auth
        log.info("CURVE on: %d client key(s) accepted from %s", self.n_clients, self.clients)

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` a CURVE server (before it binds)."""
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True
        socket.zap_domain = ZAP_DOMAIN.encode()

    def stop(self) -> None:
        """Stop the authenticator."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def client_key(frame: Any) -> str | None:
    """The authenticated client's public key (Z85) of a received frame, or ``None`` without CURVE."""
    try:
        user = frame.get("User-Id")
    except (zmq.ZMQError, AttributeError, TypeError):
        return None
    return user if isinstance(user, str) and user else None


__all__ = ["ServerCurve", "apply_client", "client_key", "create_keys"]
