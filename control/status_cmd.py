"""Show the status of a running engine and its sessions (torch-free; talks to the engine's ROUTER).

Example usage:

    otf2d status --engine tcp://gpu-node:5555
    otf2d status --engine tcp://gpu-node:5555 --session grid3 --json

Prints the engine's line (device, uptime, queue, latency, memory), then one line per session
(phase, particles journaled / classified, queue, last snapshot; then the grid verdict, junk
fraction and views once the session has a snapshot) or, with ``--json``, the whole status reply.
Exits 2 when the engine does not answer in time.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from otf2d.control.client import EngineClient
from otf2d.core.curve import add_client_args, client_files


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``otf2d status``."""
    parser.add_argument("--engine", required=True, help="the engine's endpoint, e.g. tcp://host:5555")
    parser.add_argument("--session", help="only this session")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    parser.add_argument("--json", action="store_true", help="print the full reply as JSON")
    add_client_args(parser)


def memory_text(memory: dict[str, Any]) -> str:
    """``", memory 580 MB (peak 865 MB), GPU 1.2 GB reserved"`` from the ``memory`` status entry."""

    def size(n: float) -> str:
        return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"

    text = ""
    if "resident_bytes" in memory:
        text += f", memory {size(memory['resident_bytes'])}"
        if "peak_resident_bytes" in memory:
            text += f" (peak {size(memory['peak_resident_bytes'])})"
    if "device_reserved_bytes" in memory:
        text += f", GPU {size(memory['device_reserved_bytes'])} reserved"
    return text


def format_status(status: dict[str, Any]) -> str:
    """Human-readable lines of a status reply."""
    engine = status.get("engine", {})
    latency = engine.get("latency") or {}
    p95 = latency.get("p95_s")
    lines = [
        f"engine {engine.get('endpoint', '?')} on {engine.get('device', '?')}, up {engine.get('uptime_s', 0):.0f} s, "
        f"{engine.get('sessions', 0)} session(s), queue {engine.get('queue_depth', 0)}"
        + (f", latency p95 {p95:.2f} s" if p95 is not None else "")
        + memory_text(engine.get("memory") or {})
    ]
    now = time.time()
    for name, s in sorted(status.get("sessions", {}).items()):
        snap = s.get("last_snapshot")
        snap_text = f"snapshot {snap['iteration']} ({now - snap['written_at']:.0f} s ago)" if snap else "no snapshot"
        flags = " PAUSED" if s.get("paused") else ""
        life = s.get("lifecycle") or {}
        if life.get("state") in ("idle", "closed"):
            flags += f" {life['state'].upper()}"
        error = f" ERROR {s['error']}" if s.get("error") else ""
        lines.append(
            f"  {name}: {s.get('phase', '?')}{flags}, {s.get('particles_journaled', 0)} journaled, "
            f"{s.get('particles_classified', 0)} classified, queue {s.get('queue_depth', 0)}, "
            f"{s.get('n_classes', '?')} classes, {snap_text}{error}"
        )
        mon = s.get("monitoring")
        if mon:
            reasons = "; ".join(mon.get("reasons") or [])
            lines.append(
                f"    verdict {mon.get('verdict', '?')} ({100 * mon.get('confidence', 0):.0f}%), "
                f"junk {100 * mon.get('junk_fraction', 0):.0f}% ({mon.get('junk_classes', 0)} classes), "
                f"{mon.get('classes_populated', 0)} classes populated, {mon.get('distinct_views', 0)} views"
                + (f": {reasons}" if reasons else "")
            )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Ask the engine for its status and print it."""
    with EngineClient(args.engine, timeout_s=args.timeout, curve=client_files(args)) as client:
        status = client.status(args.session)
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else format_status(status))
    return 0


__all__ = ["add_args", "format_status", "main", "memory_text"]
