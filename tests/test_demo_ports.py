"""The demo's ports: distinct from each other and free when chosen (the benchmark launches its children alike)."""

from __future__ import annotations

import contextlib
import socket

from otf2d.demo.demo_run import free_ports


def test_free_ports_are_distinct_and_free() -> None:
    for _ in range(50):
        ports = free_ports(3)
        assert len(set(ports)) == 3
    with contextlib.ExitStack() as stack:
        for port in ports:
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", port))  # each can be bound, all at once
