"""Mark a class of a running session good or junk, overriding its junk score (torch-free).

Example usage:

    otf2d override --engine tcp://gpu-node:5555 --session grid3 --class 7 --as junk
    otf2d override --engine tcp://gpu-node:5555 --session grid3 --class 7 --as auto   # remove it

CLASS is the number the class has in the newest snapshot: the gallery label, RELION's
``rlnClassNumber``. The engine stores the override against its own class, so it follows the class
when later snapshots re-sort the classes by size; it is kept in the session folder
(``class_overrides.json``), applied to the status page, ``/metrics`` and every later snapshot, and
survives restarts. A new snapshot with the changed flags is written at once. Exits 2 when the
engine refuses (no such session, no snapshot yet, no such class) or does not answer.
"""

from __future__ import annotations

import argparse

from otf2d.control.client import EngineClient
from otf2d.core.curve import add_client_args, client_files

#: Values of ``--as``.
CHOICES = ("good", "junk", "auto")


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``otf2d override``."""
    parser.add_argument("--engine", required=True, help="the engine's endpoint, e.g. tcp://host:5555")
    parser.add_argument("--session", required=True, help="the session")
    parser.add_argument(
        "--class", dest="class_number", required=True, type=int, metavar="N", help="class number in the gallery"
    )
    parser.add_argument(
        "--as", dest="override", required=True, choices=CHOICES, help="good, junk, or auto (remove the override)"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    add_client_args(parser)


def main(args: argparse.Namespace) -> int:
    """Send the override and print what the engine now holds."""
    with EngineClient(args.engine, timeout_s=args.timeout, curve=client_files(args)) as client:
        result = client.set_class_override(args.session, args.class_number, args.override)
    what = "override removed" if result.get("override") is None else f"marked {result['override']}"
    overrides = result.get("overrides") or {}
    listing = ", ".join(f"class {n}: {v}" for n, v in overrides.items()) or "none"
    print(
        f"{args.session}: class {result['class']} (engine class {result['engine_class']}) {what}; "
        f"overrides now: {listing}"
    )
    return 0


__all__ = ["CHOICES", "add_args", "main"]
