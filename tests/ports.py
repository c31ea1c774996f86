"""Loopback ports for the services a test starts itself.

A port the kernel hands out for ``bind(0)`` lies in the ephemeral range, the same range it draws
from for outgoing connections: between the test picking it and a server binding it, an OpenSearch
node's own connections can take it (CI lost a Redis start that way). These come from below that
range, are checked free, and are never handed out twice in one test process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port outside the ephemeral range that nothing listens on now."""
    high = min(_ephemeral_low(), 65536) - 1
    low = max(1024, high - 12000)  # away from the fixed dev ports (92xx, 93xx, 63xx) by chance only
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randint(low, high)
        if port not in _given and _is_free(port):
            _given.add(port)
            return port
    raise RuntimeError(f"no free loopback port between {low} and {high}")
