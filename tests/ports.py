"""Free loopback ports for tests: never the same port twice in one process.

The tests take several ports before any process binds them; the kernel may offer a port just closed
again, and two servers were once given the same one. Test tooling, so it lives here, not in the product.
"""

from __future__ import annotations

import socket

#: Ports handed out by :func:`free_port` in this process.
_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A TCP port on loopback that is free right now and was not handed out before by this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port
