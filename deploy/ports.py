"""Free TCP ports, for a server that must be given its port before it starts (Ray Serve's HTTP
proxy, a Ray head node)."""

from __future__ import annotations

import socket


def free_ports(count: int = 1, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free on ``host`` now (all held open together while they are
    picked, so none is handed out twice; another process may still take one before it is used)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
