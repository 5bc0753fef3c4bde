"""Create a CurveZMQ certificate pair (ZeroMQ's own files) for the engine or one of its clients.

Example usage:

    otf2d keys --out /etc/otf2d/keys --name engine         # engine.key + engine.key_secret
    otf2d keys --out ~/.config/otf2d --name krios1-stream  # a streamer's pair

Writes ``NAME.key`` (public: copy it where the other side reads it) and ``NAME.key_secret``
(public + secret key, mode 0600: stays on this machine, never in a committed config); an existing
pair is never overwritten. The engine accepts a client when the client's ``NAME.key`` is in its
``--curve-clients`` folder; the clients name the engine's ``engine.key`` with ``--curve-server``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from otf2d.control.curve import create_keys


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``otf2d keys``."""
    parser.add_argument("--out", type=Path, required=True, help="folder to write the two files into")
    parser.add_argument("--name", required=True, help="base name of the files (NAME.key, NAME.key_secret)")


def main(args: argparse.Namespace) -> int:
    """Write the pair and say where."""
    public, secret = create_keys(args.out, args.name)
    print(f"public key: {public}\nsecret key: {secret} (mode 0600: keep it on this machine)")
    return 0


__all__ = ["add_args", "main"]
