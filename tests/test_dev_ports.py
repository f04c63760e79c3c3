"""The ports a local cluster listens on cannot be taken by outgoing connections meanwhile, and
a wait on a cluster fails at once, with the node's log, when a node it needs has exited."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from backbone.dev import ports
from backbone.dev.cluster import NodeProcess, wait_until


def test_ports_lie_below_the_ephemeral_range_with_their_whole_run_free() -> None:
    ephemeral = ports._ephemeral_start()
    picked = ports.free_ports(20, span=3)
    runs = [p + i for p in picked for i in range(3)]
    assert len(set(runs)) == 60, "no two runs overlap"
    assert all(1024 <= p < ephemeral for p in runs)
    for port in runs:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        choices = iter([taken - 1, taken, taken + 5])  # a run of 2 from taken-1 holds taken
        monkeypatch.setattr(ports.random, "randrange", lambda low, high: next(choices))
        monkeypatch.setattr(ports, "_ephemeral_start", lambda: taken + 100)
        assert ports.free_ports(1, span=2) == [taken + 5]


def test_a_wait_fails_at_once_when_a_node_it_needs_has_exited(tmp_path: Path) -> None:
    node = NodeProcess("no_such_service_package", "gone", tmp_path, {}).start()
    assert node.proc is not None
    node.proc.wait(timeout=60)
    with pytest.raises(RuntimeError, match="node gone exited while waiting for ever") as failed:
        wait_until(lambda: False, 600, "ever", 0.01, [node])
    assert "No module named no_such_service_package" in str(failed.value)
