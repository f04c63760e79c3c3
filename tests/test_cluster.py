"""Three nodes in three zones with one standby: failover without loss (issue 4's proof).

Events keep flowing while nodes are SIGKILLed one after another and brought back. At the
end every aggregate equals a reference computed from the events, every standby store
equals its active's, and the zone rule held whenever the live nodes spanned two zones.
"""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from backbone.devcluster import NodeProcess

from clustertools import (
    INTERNAL_TOKEN,
    assignment,
    check_replicas,
    create_topic,
    lag,
    make_stream,
    produce_over_time,
    produced,
    settled,
    standbys_caught_up,
    wait_for,
)
from conftest import Bake

pytestmark = pytest.mark.kafka

PARTITIONS = 6
ZONES = ["zone-a", "zone-b", "zone-c"]


def check_zone_rule(view: dict[str, Any], live_zones: set[str], replicas: int) -> None:
    if len(live_zones) >= replicas:
        assert view["zone_conflicts"] == [], view
    for p, of_p in view["partitions"].items():
        nodes = [of_p["active"]["node"]] + [r["node"] for r in of_p["standbys"]]
        assert len(set(nodes)) == len(nodes), f"partition {p} has two replicas on one node"


def test_failover_keeps_every_event_once_and_standbys_equal_actives(
    bake: Bake, kafka_bootstrap: str, tmp_path: Path
) -> None:
    project = bake()
    service = f"cluster-{random.Random().randrange(10**8)}"
    topic = f"{service}.events"
    events, reference = make_stream(keys=2_000, orders=40_000, seed=4)
    asyncio.run(create_topic(kafka_bootstrap, topic, PARTITIONS))
    base = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SERVICE_NAME": service,
        "PARTITIONS": str(PARTITIONS),
        "STANDBY_REPLICAS": "1",
        "PYTHONPATH": str(project / "src"),
        "READ_MODEL": "off",
        "MAX_BATCH_RECORDS": "2000",
        "INTERNAL_TOKEN": INTERNAL_TOKEN,
    }

    def node(i: int) -> NodeProcess:
        return NodeProcess("customer_backbone", f"node-{i}", tmp_path, {**base, "ZONE": ZONES[i]})

    nodes = [node(i).start() for i in range(3)]
    try:
        for n in nodes:
            n.wait_ready(timeout=90)
        view = wait_for(lambda: settled(nodes, PARTITIONS, PARTITIONS), 60, "3 nodes to settle")
        check_zone_rule(view, set(ZONES), 2)

        producer = threading.Thread(
            target=lambda: asyncio.run(
                produce_over_time(kafka_bootstrap, topic, events, chunk=500, pause=0.3)
            )
        )
        producer.start()
        wait_for(lambda: produced(kafka_bootstrap, topic, PARTITIONS) > 5_000, 60, "input")

        nodes[0].kill()
        view = wait_for(lambda: settled(nodes[1:], PARTITIONS, PARTITIONS), 60, "2 nodes")
        check_zone_rule(view, {ZONES[1], ZONES[2]}, 2)

        nodes[1].kill()
        wait_for(lambda: settled(nodes[2:], PARTITIONS, 0), 60, "1 node to take over")
        unmet = assignment(nodes[2])["unmet"]
        assert unmet and any("standby" in line for line in unmet), unmet

        nodes[0] = node(0).start()
        nodes[1] = node(1).start()
        view = wait_for(lambda: settled(nodes, PARTITIONS, PARTITIONS), 90, "3 nodes again")
        check_zone_rule(view, set(ZONES), 2)

        producer.join(timeout=300)
        assert not producer.is_alive()
        wait_for(lambda: lag(kafka_bootstrap, service, topic, PARTITIONS) == 0, 120, "all input")
        wait_for(lambda: standbys_caught_up(nodes), 60, "standbys to catch up")
        # Read through any node: the query is routed to the owner.
        for key in ("k-0", "k-1", "k-2"):
            body = httpx.get(f"{nodes[0].url}/customers/{key}", timeout=10).json()
            assert (body["lifetime_value_cents"], body["order_count"]) == reference[key]
        final = assignment(nodes[0])["group"]["partitions"]
    finally:
        for n in nodes:
            n.stop()
    check_replicas(final, nodes, reference)
