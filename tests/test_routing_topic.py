"""Nodes learn who holds what from the routing topic the group leader publishes to.

Two nodes, one standby: after the group settles, after one node restarted on other ports,
and after one node is gone, every live node's ``/admin/assignment`` shows every
partition's active and standby at the live nodes' endpoints, as the latest record of the
group's key on ``<service>.routing`` says; a routing table started outside any node (as
the admin commands start one) reads the same owners.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from backbone.assignment import RoutingView, decode_view
from backbone.dev.cluster import NodeProcess, wait_until
from backbone.kafka_connection import KafkaConnection
from backbone.node.routing import RoutingTable

from clustertools import assignment, new_service, status
from conftest import Bake

pytestmark = pytest.mark.kafka

PARTITIONS = 4


async def _latest_view(brokers: str, topic: str, group: str) -> RoutingView | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        latest = None
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                for r in records:
                    if r.key == group.encode() and r.value is not None:
                        latest = decode_view(r.value)
        return latest
    finally:
        await consumer.stop()


def latest_view(brokers: str, topic: str, group: str) -> RoutingView | None:
    return asyncio.run(_latest_view(brokers, topic, group))


def routing_topic(brokers: str, topic: str) -> tuple[int, str]:
    """(partitions, cleanup.policy) of ``topic``."""

    async def describe() -> tuple[int, str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
            configs = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
            entries = configs[0].to_object()["resources"][0]["config_entries"]
            policy = next(
                e["config_value"] for e in entries if e["config_names"] == "cleanup.policy"
            )
            return len(described["partitions"]), policy
        finally:
            await admin.close()

    return asyncio.run(describe())


def owners_outside_a_node(brokers: str, group: str, topic: str) -> dict[int, str]:
    """What ``accept-loss`` and ``bootstrap`` see: a table of their own, read to the end."""

    async def read() -> dict[int, str]:
        table = RoutingTable(KafkaConnection(brokers), group, topic)
        await table.start()
        try:
            await table.refresh()
        finally:
            await table.stop()
        return {p: r.node for p in range(PARTITIONS) if (r := table.owner(p)) is not None}

    return asyncio.run(read())


def routed(nodes: list[NodeProcess], standbys: int) -> list[dict[str, Any]] | None:
    """Every node's group view, once each is stable and places every partition's active
    and its standbys on live nodes at their current internal ports, and all agree."""
    ports = {n.name: f":{n.internal_port}" for n in nodes}
    if not all(status(n).get("ready") for n in nodes):
        return None
    views = [assignment(n)["group"] for n in nodes]
    for view in views:
        if view["state"] != "Stable" or sorted(view["partitions"]) != [
            str(p) for p in range(PARTITIONS)
        ]:
            return None
        for of_p in view["partitions"].values():
            replicas = [of_p["active"], *of_p["standbys"]]
            if len(of_p["standbys"]) != standbys or not all(
                r["node"] in ports and r["endpoint"].endswith(ports[r["node"]]) for r in replicas
            ):
                return None
    return views if all(v == views[0] for v in views) else None


def check_against_topic(view: dict[str, Any], service_name: str, brokers: str) -> None:
    published = latest_view(brokers, f"{service_name}.routing", service_name)
    assert published is not None, "no routing view was published"
    assert published.generation == view["generation"]
    for p, of_p in view["partitions"].items():
        member = published.members[published.active[int(p)]]
        assert of_p["active"]["endpoint"] == member.endpoint
        assert [r["endpoint"] for r in of_p["standbys"]] == [
            published.members[m].endpoint for m in published.standbys[int(p)]
        ]


def test_nodes_learn_the_routes_from_the_routing_topic(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    service = new_service(
        "routing",
        bake(),
        kafka_brokers,
        tmp_path,
        PARTITIONS,
        STANDBY_REPLICAS="1",
        # long enough for a killed node to come back as the same static member, which gets
        # its assignment back without a rebalance
        SESSION_TIMEOUT_MS="30000",
    )
    topic = f"{service.name}.routing"
    nodes = [service.node(i).start() for i in range(2)]
    try:
        for n in nodes:
            n.wait_ready(timeout=90)
        assert routing_topic(kafka_brokers, topic) == (1, "compact")
        views = wait_until(lambda: routed(nodes, 1), 90, "both nodes to route every partition")
        check_against_topic(views[0], service.name, kafka_brokers)
        first = views[0]["generation"]
        by_node = {p: of_p["active"]["node"] for p, of_p in views[0]["partitions"].items()}
        assert set(by_node.values()) == {"node-0", "node-1"}
        assert owners_outside_a_node(kafka_brokers, service.name, topic) == {
            int(p): node for p, node in by_node.items()
        }

        nodes[1].kill()
        nodes[1] = service.node(1).start()  # other ports, same static member
        nodes[1].wait_ready(timeout=90)
        views = wait_until(lambda: routed(nodes, 1), 90, "node 1's new endpoint in the routes")
        check_against_topic(views[0], service.name, kafka_brokers)

        nodes[1].stop()
        views = wait_until(lambda: routed(nodes[:1], 0), 120, "node 0 to route it all alone")
        assert views[0]["generation"] > first
        assert {of_p["active"]["node"] for of_p in views[0]["partitions"].values()} == {"node-0"}
        check_against_topic(views[0], service.name, kafka_brokers)
    finally:
        for n in nodes:
            n.stop()
