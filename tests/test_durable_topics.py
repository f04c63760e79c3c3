"""On 3 brokers the topics a node creates have 3 replicas and min.insync.replicas=2, so a
broker killed under load loses nothing and the service keeps processing."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from backbone.dev.cluster import wait_until
from backbone.dev.localkafka import LocalKafka
from backbone.topics import durability

from clustertools import INTERNAL_TOKEN, Reference, Service, make_stream
from conftest import Bake

PARTITIONS = 3


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    cluster = LocalKafka(tmp_path_factory.mktemp("kafka-3"), nodes=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def durable_service(project: Path, brokers: str, workdir: Path) -> Service:
    """A service whose node creates every topic itself, the input included."""
    name = f"durable-{uuid.uuid4().hex[:8]}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": brokers,
        "SERVICE_NAME": name,
        "PARTITIONS": str(PARTITIONS),
        "PYTHONPATH": str(project / "src"),
        "READ_MODEL": "off",
        "INTERNAL_TOKEN": INTERNAL_TOKEN,
    }
    return Service(name, brokers, workdir, PARTITIONS, env)


async def layout(brokers: str, topics: list[str]) -> dict[str, tuple[set[int], str]]:
    """Per topic: the replica counts of its partitions and its min.insync.replicas."""
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        configs = {}
        for response in await admin.describe_configs(resources):
            for _, _, _, name, entries in response.resources:
                configs[name] = next(e[1] for e in entries if e[0] == "min.insync.replicas")
        return {
            t["topic"]: ({len(p["replicas"]) for p in t["partitions"]}, configs[t["topic"]])
            for t in described
        }
    finally:
        await admin.close()


async def leader_of_first_partition(brokers: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        return int(next(p["leader"] for p in described["partitions"] if p["partition"] == 0))
    finally:
        await admin.close()


async def produce(brokers: str, topic: str, events: list[tuple[bytes, bytes]]) -> None:
    """Idempotent, so a send retried across the broker's death is written once."""
    producer = AIOKafkaProducer(
        bootstrap_servers=brokers, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        for start in range(0, len(events), 50):
            chunk = events[start : start + 50]
            await asyncio.gather(*[await producer.send(topic, v, key=k) for k, v in chunk])
            await asyncio.sleep(0.02)  # spreads the load over the kill; synchronises nothing
    finally:
        await producer.stop()


def aggregates(url: str, reference: Reference) -> Reference:
    seen: Reference = {}
    with httpx.Client(timeout=10) as client:
        for key in reference:
            answer = client.get(f"{url}/customers/{key}")
            if answer.status_code == 200:
                body = answer.json()
                seen[key] = (body["lifetime_value_cents"], body["order_count"])
    return seen


class Brokers:
    """An admin client's cluster description, for ``durability``."""

    def __init__(self, count: int) -> None:
        self.count = count

    async def describe_cluster(self) -> dict[str, Any]:
        return {"brokers": [{"node_id": i} for i in range(self.count)]}


@pytest.mark.parametrize(
    ("brokers", "setting", "expected"),
    [
        (1, 0, (1, {})),
        (2, 0, (2, {})),
        (5, 0, (3, {"min.insync.replicas": "2"})),
        (5, 2, (2, {})),
        (1, 3, (3, {"min.insync.replicas": "2"})),
    ],
)
def test_the_replication_factor_follows_the_brokers_unless_set(
    brokers: int, setting: int, expected: tuple[int, dict[str, str]]
) -> None:
    assert asyncio.run(durability(Brokers(brokers), setting)) == expected  # type: ignore[arg-type]


@pytest.mark.kafka
def test_topics_have_three_replicas_and_a_broker_killed_under_load_loses_nothing(
    bake: Bake, kafka: LocalKafka, tmp_path: Path
) -> None:
    service = durable_service(bake(), kafka.brokers, tmp_path)
    events, reference = make_stream(keys=100, orders=6000, seed=21)
    node = service.node(0).start()
    try:
        node.wait_ready(timeout=120)
        created = [
            service.topic,
            service.changelog,
            f"{service.name}.dlq",
            f"{service.name}.out",
            f"{service.name}.routing",
            f"{service.name}.control",
        ]
        assert asyncio.run(layout(kafka.brokers, created)) == dict.fromkeys(created, ({3}, "2"))

        victim = asyncio.run(leader_of_first_partition(kafka.brokers, service.topic))
        load = threading.Thread(
            target=lambda: asyncio.run(produce(kafka.brokers, service.topic, events))
        )
        load.start()
        try:
            at_kill = wait_until(
                lambda: (n := service.produced()) >= len(events) // 3 and n,
                60,
                "a third of the load",
            )
            kafka.kill_node(victim)
        finally:
            load.join(timeout=120)
        assert at_kill < len(events), "the load was over before the broker was killed"
        assert not load.is_alive(), "the producer did not finish after the broker's death"
        assert service.produced() == len(events)
        wait_until(lambda: service.lag() == 0, 120, "the node to process every event")
        seen = wait_until(
            lambda: (found := aggregates(node.url, reference)) == reference and found,
            60,
            "the aggregates to equal the reference",
        )
        assert seen == reference
        assert node.alive(), node.log_tail()
    finally:
        node.stop()
