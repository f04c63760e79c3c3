"""Listening ports for the processes of a local cluster (brokers, nodes, their workers).

A port the kernel hands out for ``bind(0)`` comes from its ephemeral range, the range it
also gives outgoing connections: between the pick and the process's own bind, a Kafka
client's connection may take it ("address already in use"). These ports come from just
below that range, where only an explicit bind lands, each free for a run of ``span``
ports (a node of ``WORKERS`` N listens on ``INTERNAL_PORT`` to ``INTERNAL_PORT``+N-1).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_POOL = 12_000  # ports below the ephemeral range to pick from
_given: set[int] = set()  # by this process: not handed out twice


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152  # IANA's, which macOS uses


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int, span: int = 1) -> list[int]:
    """``n`` ports, each the first of ``span`` consecutive ports that are free now and that
    no outgoing connection will take."""
    high = _ephemeral_start() - span
    low = max(1024, high - _POOL)
    found: list[int] = []
    for _ in range(100 * n):
        port = random.randrange(low, high)
        run = range(port, port + span)
        if any(p in _given for p in run) or not all(_bindable(p) for p in run):
            continue
        _given.update(run)
        found.append(port)
        if len(found) == n:
            return found
    raise RuntimeError(
        f"found {len(found)} of {n} free runs of {span} ports in {low}-{high + span - 1}: "
        "stop what holds them (earlier test clusters?) and try again"
    )


def free_port() -> int:
    return free_ports(1)[0]
