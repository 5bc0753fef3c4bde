"""Ask a running engine to write a snapshot of a session now (torch-free).

Example usage:

    otf2d snapshot --engine tcp://gpu-node:5555 --session grid3 --wait 60

The engine writes the snapshot (RELION Class2D, cryoSPARC .cs, PNG gallery) in the background
into ``<data>/sessions/<name>/snapshots/`` and checkpoints the session. With ``--wait S`` this
command polls the engine's status until that snapshot is written (or ``S`` seconds pass) and prints
where it is. Exits 2 when the engine refuses (no such session, no classes yet) or does not answer.
"""

from __future__ import annotations

import argparse
import time

from otf2d.control.client import EngineClient, EngineTimeoutError
from otf2d.core.curve import add_client_args, client_files


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``otf2d snapshot``."""
    parser.add_argument("--engine", required=True, help="the engine's endpoint, e.g. tcp://host:5555")
    parser.add_argument("--session", required=True, help="the session to snapshot")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each answer")
    parser.add_argument("--wait", type=float, default=0.0, help="wait up to S seconds for the snapshot on disk")
    add_client_args(parser)


def main(args: argparse.Namespace) -> int:
    """Request the snapshot (and optionally wait for it)."""
    with EngineClient(args.engine, timeout_s=args.timeout, curve=client_files(args)) as client:
        result = client.snapshot(args.session)
        iteration = int(result["iteration"])
        print(f"snapshot {iteration} of {args.session} scheduled in {result['directory']}")
        if args.wait <= 0:
            return 0
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            session = client.status(args.session)["sessions"][args.session]
            written = session.get("last_snapshot")
            if written is not None and written["iteration"] >= iteration:
                print(
                    f"snapshot {written['iteration']} written: {written['n_particles']} particles in "
                    f"{written['directory']}"
                )
                return 0
            time.sleep(0.25)
    raise EngineTimeoutError(f"snapshot {iteration} of {args.session} not written within {args.wait:g} s")


__all__ = ["add_args", "main"]
