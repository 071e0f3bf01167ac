"""Free TCP ports for the servers huddle starts itself (the embedded Redis
and Redis Cluster, test fixtures).

A port from ``bind(0)`` comes from the kernel's ephemeral range, the range
every outgoing connection on the machine draws its local port from too:
between our releasing it and the server binding it, any client socket may
be handed it, and the server fails with "Address already in use" (seen in
CI, a Redis Cluster node's port taken by a test's client connection).
These ports come from below that range, where only an explicit bind lands;
each is checked free when picked, and this process never hands one out
twice.
"""

from __future__ import annotations

import random
import socket
import threading

__all__ = ["free_port", "free_ports"]

#: the lowest port handed out (above the registered services most hosts run)
LOWEST = 20000
_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_given: set[int] = set()
_lock = threading.Lock()
_draw = random.Random()  # seeded by the OS: processes that pick at once pick apart


def _ephemeral_start() -> int:
    try:
        with open(_RANGE_FILE) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; elsewhere a guess that is rarely wrong


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kernel_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports nobody listens on, below the ephemeral
    range (the kernel's picks where that range leaves too little room)."""
    top = _ephemeral_start()
    picked: list[int] = []
    with _lock:
        tries = 0
        while len(picked) < count:
            if top - LOWEST < 1000 or tries > 10_000:
                port = _kernel_port()
            else:
                tries += 1
                port = _draw.randrange(LOWEST, top)
                if port in _given or not _bindable(port):
                    continue
            if port not in _given:
                _given.add(port)
                picked.append(port)
    return picked


def free_port() -> int:
    """One port, as :func:`free_ports`."""
    return free_ports(1)[0]
