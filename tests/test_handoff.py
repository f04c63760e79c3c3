"""Issue 14: a node stopped by SIGTERM hands its partitions to its standbys at once, a
killed node is removed from the group by its peers, and a node paused for 2 s is kept.

Sessions are long here, so a partition that moves within half a session moved because
its member was removed from the group, not because its session expired.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backbone.dev.cluster import NodeProcess, wait_until

from clustertools import (
    Service,
    assignment,
    check_replicas,
    make_stream,
    new_service,
    settled,
    standbys_caught_up,
    status,
)
from conftest import Bake

pytestmark = pytest.mark.kafka

PARTITIONS = 6
SESSION_S = 20


@pytest.fixture(scope="module")
def project(bake: Bake) -> Path:
    return bake()


@pytest.fixture
def service(project: Path, kafka_brokers: str, tmp_path: Path) -> Service:
    return new_service(
        "handoff",
        project,
        kafka_brokers,
        tmp_path,
        PARTITIONS,
        STANDBY_REPLICAS="1",
        SESSION_TIMEOUT_MS=str(SESSION_S * 1000),
        MAX_BATCH_RECORDS="2000",
    )


@pytest.fixture
def nodes(service: Service) -> Iterator[list[NodeProcess]]:
    started = [service.node(i).start() for i in range(3)]
    try:
        for n in started:
            n.wait_ready(timeout=90)
        yield started
    finally:
        for n in started:
            if n.proc is not None and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGCONT)  # a test that failed mid-pause
            n.stop()


def actives(node: NodeProcess) -> set[int]:
    return set(status(node).get("active", []))


def events(node: NodeProcess, name: str) -> list[dict[str, Any]]:
    found = []
    for line in node.log_path.read_text(errors="replace").splitlines():
        if f'"{name}"' in line:
            found.append(json.loads(line))
    return found


def suspects(node: NodeProcess) -> list[str]:
    found: list[str] = httpx.get(f"{node.internal_url}/internal/health", timeout=5).json()[
        "suspects"
    ]
    return found


def taken_over(partitions: set[int], survivors: list[NodeProcess]) -> bool:
    """Every one of ``partitions`` is active (processing) on a survivor."""
    return partitions <= set().union(*(actives(n) for n in survivors))


def test_sigterm_hands_partitions_to_standbys_at_once_and_loses_nothing(
    service: Service, nodes: list[NodeProcess]
) -> None:
    stream, reference = make_stream(keys=1_000, orders=20_000, seed=14)
    wait_until(lambda: settled(nodes, PARTITIONS, PARTITIONS), 60, "3 nodes to settle")
    producer = service.load(stream, chunk=500, pause=0.2)
    producer.start()
    wait_until(lambda: service.produced() > 3_000, 60, "input")

    leaving = actives(nodes[0])
    started = time.monotonic()
    nodes[0].stop()  # SIGTERM
    wait_until(lambda: taken_over(leaving, nodes[1:]), SESSION_S, "the takeover", every=0.05)
    took = time.monotonic() - started
    print(f"handoff after SIGTERM: {took:.2f}s")
    assert took < SESSION_S / 2, f"the handoff took {took:.1f}s"
    assert [e["instance"] for e in events(nodes[0], "group_member_removed")] == [
        f"{service.name}-{nodes[0].name}"
    ]

    nodes[0] = service.node(0).start()
    nodes[0].wait_ready(timeout=90)
    wait_until(lambda: settled(nodes, PARTITIONS, PARTITIONS), 90, "3 nodes again")
    producer.join(timeout=300)
    assert not producer.is_alive()
    wait_until(lambda: service.lag() == 0, 120, "all input")
    wait_until(lambda: standbys_caught_up(nodes), 60, "standbys to catch up")
    final = assignment(nodes[1])["group"]["partitions"]
    for n in nodes:
        n.stop()
    check_replicas(final, nodes, reference)


def test_a_killed_node_is_removed_by_its_peers_before_its_session_ends(
    service: Service, nodes: list[NodeProcess]
) -> None:
    wait_until(lambda: settled(nodes, PARTITIONS, PARTITIONS), 60, "3 nodes to settle")
    leaving = actives(nodes[0])
    started = time.monotonic()
    nodes[0].kill()
    wait_until(lambda: taken_over(leaving, nodes[1:]), SESSION_S, "the takeover", every=0.05)
    took = time.monotonic() - started
    print(f"takeover after SIGKILL: {took:.2f}s")
    assert took < SESSION_S / 2, f"the takeover took {took:.1f}s"
    removed = [e for n in nodes[1:] for e in events(n, "group_member_removed")]
    assert [e["instance"] for e in removed] == [f"{service.name}-{nodes[0].name}"], removed
    assert removed[0]["reason"] == f"dead peer {nodes[0].internal_url}"


def test_a_node_paused_for_2s_stays_a_member_with_its_partitions(
    nodes: list[NodeProcess],
) -> None:
    view = wait_until(lambda: settled(nodes, PARTITIONS, PARTITIONS), 60, "3 nodes to settle")
    held = actives(nodes[0])
    assert nodes[0].proc is not None
    nodes[0].proc.send_signal(signal.SIGSTOP)
    time.sleep(2.0)  # the pause under test, shorter than PEER_DEAD_AFTER_MS
    nodes[0].proc.send_signal(signal.SIGCONT)
    # Once every peer has reached it again, the pause can no longer get it removed.
    wait_until(lambda: not any(suspects(n) for n in nodes[1:]), 30, "the peers to reach it")
    noticed = {e["peer"] for n in nodes[1:] for e in events(n, "peer_unreachable")}
    assert noticed == {nodes[0].internal_url}, "the peers did not notice the pause"
    assert not [e for n in nodes for e in events(n, "peer_dead")]
    assert assignment(nodes[1])["group"]["generation"] == view["generation"]
    assert actives(nodes[0]) == held
