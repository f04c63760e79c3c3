"""Three nodes in three zones with one standby: failover without loss (issue 4's proof).

Events keep flowing while nodes are SIGKILLed one after another and brought back. At the
end every aggregate equals a reference computed from the events, every standby store
equals its active's, and the zone rule held whenever the live nodes spanned two zones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from backbone.dev.cluster import wait_until

from clustertools import (
    ZONES,
    assignment,
    check_replicas,
    make_stream,
    new_service,
    settled,
    standbys_caught_up,
)
from conftest import Bake

pytestmark = pytest.mark.kafka

PARTITIONS = 6


def check_zone_rule(view: dict[str, Any], live_zones: set[str], replicas: int) -> None:
    if len(live_zones) >= replicas:
        assert view["zone_conflicts"] == [], view
    for p, of_p in view["partitions"].items():
        nodes = [of_p["active"]["node"]] + [r["node"] for r in of_p["standbys"]]
        assert len(set(nodes)) == len(nodes), f"partition {p} has two replicas on one node"


def test_failover_keeps_every_event_once_and_standbys_equal_actives(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    service = new_service(
        "cluster",
        bake(),
        kafka_brokers,
        tmp_path,
        PARTITIONS,
        STANDBY_REPLICAS="1",
        MAX_BATCH_RECORDS="2000",
    )
    events, reference = make_stream(keys=2_000, orders=40_000, seed=4)
    node = service.node
    nodes = [node(i).start() for i in range(3)]
    try:
        for n in nodes:
            n.wait_ready(timeout=90)
        view = wait_until(lambda: settled(nodes, PARTITIONS, PARTITIONS), 60, "3 nodes to settle")
        check_zone_rule(view, set(ZONES), 2)

        producer = service.load(events, chunk=500, pause=0.3)
        producer.start()
        wait_until(lambda: service.produced() > 5_000, 60, "input")

        nodes[0].kill()
        view = wait_until(lambda: settled(nodes[1:], PARTITIONS, PARTITIONS), 60, "2 nodes")
        check_zone_rule(view, {ZONES[1], ZONES[2]}, 2)

        nodes[1].kill()
        wait_until(lambda: settled(nodes[2:], PARTITIONS, 0), 60, "1 node to take over")
        unmet = assignment(nodes[2])["unmet"]
        assert unmet and any("standby" in line for line in unmet), unmet

        nodes[0] = node(0).start()
        nodes[1] = node(1).start()
        view = wait_until(lambda: settled(nodes, PARTITIONS, PARTITIONS), 90, "3 nodes again")
        check_zone_rule(view, set(ZONES), 2)

        producer.join(timeout=300)
        assert not producer.is_alive()
        wait_until(lambda: service.lag() == 0, 120, "all input")
        wait_until(lambda: standbys_caught_up(nodes), 60, "standbys to catch up")
        # Read through any node: the query is routed to the owner.
        for key in ("k-0", "k-1", "k-2"):
            body = httpx.get(f"{nodes[0].url}/customers/{key}", timeout=10).json()
            assert (body["lifetime_value_cents"], body["order_count"]) == reference[key]
        final = assignment(nodes[0])["group"]["partitions"]
    finally:
        for n in nodes:
            n.stop()
    check_replicas(final, nodes, reference)
