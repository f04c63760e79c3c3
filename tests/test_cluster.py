"""Three nodes in three zones with one standby: failover without loss (issue 4's proof).

Events keep flowing while nodes are SIGKILLed one after another and brought back. At the
end every aggregate equals a reference computed from the events, every standby store
equals its active's, and the zone rule held whenever the live nodes spanned two zones.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from backbone.codec import AggregateCodec
from backbone.devcluster import NodeProcess
from backbone.store import PartitionStore

from conftest import Bake

pytestmark = pytest.mark.kafka

PARTITIONS = 6
KEYS = 2_000
ORDERS = 40_000
ZONES = ["zone-a", "zone-b", "zone-c"]
SEED = 4


class Stored(msgspec.Struct):
    id: str
    lifetime_value_cents: int
    order_count: int


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def make_stream() -> tuple[list[tuple[bytes, bytes]], dict[str, tuple[int, int]]]:
    rng = random.Random(SEED)
    encode = msgspec.json.encode
    events = [
        (f"k-{i}".encode(), encode({"type": "customer_registered", "name": "K", "email": "k@x.io"}))
        for i in range(KEYS)
    ]
    totals: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for n in range(ORDERS):
        key = f"k-{rng.randrange(KEYS)}"
        amount = rng.randint(1, 500)
        totals[key] += amount
        counts[key] += 1
        events.append(
            (
                key.encode(),
                encode({"type": "order_placed", "order_id": f"o{n}", "amount_cents": amount}),
            )
        )
    return events, {f"k-{i}": (totals[f"k-{i}"], counts[f"k-{i}"]) for i in range(KEYS)}


async def produce_over_time(bootstrap: str, topic: str, events: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for start in range(0, len(events), 500):
            sent = [await producer.send(topic, v, key=k) for k, v in events[start : start + 500]]
            await asyncio.gather(*sent)
            await asyncio.sleep(0.3)
    finally:
        await producer.stop()


async def lag(bootstrap: str, group: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        total = 0
        for tp in tps:
            total += ends[tp] - (await consumer.committed(tp) or 0)
        return total
    finally:
        await consumer.stop()


async def produced(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


def status(node: NodeProcess) -> dict[str, Any]:
    return node.status() or {} if node.alive() else {}


def assignment(node: NodeProcess) -> dict[str, Any]:
    return httpx.get(f"{node.url}/admin/assignment", timeout=5).json()


def settled(live: list[NodeProcess], standbys_expected: int) -> dict[str, Any] | None:
    """The group's view once every partition has one ready active and its standbys."""
    statuses = [status(n) for n in live]
    if not all(s.get("ready") for s in statuses):
        return None
    actives = sorted(p for s in statuses for p in s.get("active", []))
    standbys = [p for s in statuses for p in s.get("standby", [])]
    if actives != list(range(PARTITIONS)) or len(standbys) != standbys_expected:
        return None
    view = assignment(live[0])["group"]
    if len(view["partitions"]) != PARTITIONS:
        return None
    return view


def check_zone_rule(view: dict[str, Any], live_zones: set[str], replicas: int) -> None:
    if len(live_zones) >= replicas:
        assert view["zone_conflicts"] == [], view
    for p, replicas_of_p in view["partitions"].items():
        nodes = [replicas_of_p["active"]["node"]] + [r["node"] for r in replicas_of_p["standbys"]]
        assert len(set(nodes)) == len(nodes), f"partition {p} has two replicas on one node"


def read_store(node: NodeProcess, partition: int) -> dict[bytes, bytes]:
    store = PartitionStore(node.data_dir / "customer" / "g0" / str(partition), partition)
    try:
        return dict(store.items())
    finally:
        store.close()


def test_failover_keeps_every_event_once_and_standbys_equal_actives(
    bake: Bake, kafka_bootstrap: str, tmp_path: Path
) -> None:
    project = bake()
    service = f"cluster-{random.Random().randrange(10**8)}"
    topic = f"{service}.events"
    events, reference = make_stream()

    async def create_topic() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        finally:
            await admin.close()

    asyncio.run(create_topic())
    base = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SERVICE_NAME": service,
        "PARTITIONS": str(PARTITIONS),
        "STANDBY_REPLICAS": "1",
        "PYTHONPATH": str(project / "src"),
        "READ_MODEL": "off",
        "MAX_BATCH_RECORDS": "2000",
    }

    def node(i: int) -> NodeProcess:
        return NodeProcess("customer_backbone", f"node-{i}", tmp_path, {**base, "ZONE": ZONES[i]})

    nodes = [node(i).start() for i in range(3)]
    try:
        for n in nodes:
            n.wait_ready(timeout=90)
        view = wait_for(lambda: settled(nodes, PARTITIONS), 60, "3 nodes to settle")
        check_zone_rule(view, set(ZONES), 2)

        producer = threading.Thread(
            target=lambda: asyncio.run(produce_over_time(kafka_bootstrap, topic, events))
        )
        producer.start()
        wait_for(
            lambda: asyncio.run(lag(kafka_bootstrap, service, topic)) < len(events), 30, "input"
        )

        nodes[0].kill()
        view = wait_for(lambda: settled(nodes[1:], PARTITIONS), 60, "2 nodes to take over")
        check_zone_rule(view, {ZONES[1], ZONES[2]}, 2)

        nodes[1].kill()
        wait_for(lambda: settled(nodes[2:], 0), 60, "1 node to take over")
        unmet = assignment(nodes[2])["unmet"]
        assert unmet and any("standby" in line for line in unmet), unmet

        nodes[0] = node(0).start()
        nodes[1] = node(1).start()
        view = wait_for(lambda: settled(nodes, PARTITIONS), 90, "3 nodes to settle again")
        check_zone_rule(view, set(ZONES), 2)

        producer.join(timeout=300)
        assert not producer.is_alive()
        wait_for(lambda: asyncio.run(lag(kafka_bootstrap, service, topic)) == 0, 120, "all input")
        wait_for(
            lambda: all(
                all(v == 0 for v in status(n).get("standby_lag", {}).values()) for n in nodes
            ),
            60,
            "standbys to catch up",
        )
        # Read through any node: the query is routed to the owner.
        for key in ("k-0", "k-1", "k-2"):
            body = httpx.get(f"{nodes[0].url}/customers/{key}", timeout=10).json()
            assert (body["lifetime_value_cents"], body["order_count"]) == reference[key]
        final = assignment(nodes[0])["group"]["partitions"]
    finally:
        for n in nodes:
            n.stop()

    codec = AggregateCodec(Stored)
    by_node = {n.name: n for n in nodes}
    seen: dict[str, tuple[int, int]] = {}
    for p, replicas in final.items():
        active = by_node[str(replicas["active"]["node"])]
        active_values = read_store(active, int(p))
        for value in active_values.values():
            state = codec.decode(value)[1]
            seen[state.id] = (state.lifetime_value_cents, state.order_count)
        for standby in replicas["standbys"]:
            assert read_store(by_node[standby["node"]], int(p)) == active_values, (
                f"standby of partition {p} on {standby['node']} differs from its active"
            )
    assert seen == reference
