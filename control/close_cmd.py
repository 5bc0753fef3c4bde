"""Close a session whose collection has ended (torch-free).

Example usage:

    otf2d close --engine tcp://gpu-node:5555 --session grid3
    otf2d close --engine tcp://gpu-node:5555 --session grid3 --curve-secret me.key_secret --curve-server engine.key

The session keeps its journal, checkpoints and snapshots (a last snapshot is written). It is
shown as closed on the status page and in ``otf2d_session_state``; its per-class series leave
``/metrics`` at once and its other series ``retain_closed_minutes`` later (the config's
``[sessions]`` table), and no alert fires for it. Particles arriving for it later reopen it.
Exits 2 when the engine refuses (no such session, or it belongs to another client key) or does not
answer (an engine with CurveZMQ answers only listed keys: ``--curve-secret`` / ``--curve-server``).
"""

from __future__ import annotations

import argparse

from otf2d.control.client import EngineClient
from otf2d.core.curve import add_client_args, client_files


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``otf2d close``."""
    parser.add_argument("--engine", required=True, help="the engine's endpoint, e.g. tcp://host:5555")
    parser.add_argument("--session", required=True, help="the session to close")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    add_client_args(parser)


def main(args: argparse.Namespace) -> int:
    """Close the session and print when and how it was closed."""
    with EngineClient(args.engine, timeout_s=args.timeout, curve=client_files(args)) as client:
        result = client.close_session(args.session)
    print(f"{result['session']}: closed (by {result['closed_by']}); {result['received']} particles received")
    return 0


__all__ = ["add_args", "main"]
