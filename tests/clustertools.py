"""Helpers shared by the multi-node tests: a known event stream, its reference, Kafka lag,
node status and the stores on disk."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete

from backbone.dev.cluster import NodeProcess
from backbone.store import PartitionStore

INTERNAL_TOKEN = "test-internal-token"
ADMIN_TOKEN = "test-admin-token"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
ZONES = ["zone-a", "zone-b", "zone-c"]
Reference = dict[str, tuple[int, int]]


class Stored(msgspec.Struct):
    """The fields of the example aggregate that the reference predicts."""

    id: str
    lifetime_value_cents: int
    order_count: int


def make_stream(keys: int, orders: int, seed: int) -> tuple[list[tuple[bytes, bytes]], Reference]:
    """Registrations, then orders of known amounts; the reference is (total, count) per key."""
    rng = random.Random(seed)
    encode = msgspec.json.encode
    register = {"type": "customer_registered", "name": "K", "email": "k@x.io"}
    events = [(f"k-{i}".encode(), encode(register)) for i in range(keys)]
    totals: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for n in range(orders):
        key = f"k-{rng.randrange(keys)}"
        amount = rng.randint(1, 500)
        totals[key] += amount
        counts[key] += 1
        body = {"type": "order_placed", "order_id": f"o{n}", "amount_cents": amount}
        events.append((key.encode(), encode(body)))
    return events, {f"k-{i}": (totals[f"k-{i}"], counts[f"k-{i}"]) for i in range(keys)}


async def create_topic(
    brokers: str, topic: str, partitions: int, config: dict[str, str] | None = None
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=config or {})])
    finally:
        await admin.close()


async def produce_over_time(
    brokers: str, topic: str, events: list[tuple[bytes, bytes]], chunk: int, pause: float
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=5)
    await producer.start()
    try:
        for start in range(0, len(events), chunk):
            sent = [await producer.send(topic, v, key=k) for k, v in events[start : start + chunk]]
            await asyncio.gather(*sent)
            await asyncio.sleep(pause)
    finally:
        await producer.stop()


async def _offsets(brokers: str, topic: str, partitions: int, group: str | None) -> int:
    """Records not yet committed by ``group``, or all records when ``group`` is None."""
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        total = 0
        for tp in tps:
            total += ends[tp] - ((await consumer.committed(tp) or 0) if group else 0)
        return total
    finally:
        await consumer.stop()


def lag(brokers: str, group: str, topic: str, partitions: int) -> int:
    return asyncio.run(_offsets(brokers, topic, partitions, group))


def produced(brokers: str, topic: str, partitions: int) -> int:
    return asyncio.run(_offsets(brokers, topic, partitions, None))


def topic_starts(brokers: str, topic: str, partitions: int) -> dict[int, int]:
    async def lookup() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=brokers)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            found = await consumer.beginning_offsets(tps)
            return {tp.partition: offset for tp, offset in found.items()}
        finally:
            await consumer.stop()

    return asyncio.run(lookup())


def truncate_changelog(brokers: str, topic: str, partitions: int) -> dict[int, int]:
    """Delete every record of every partition, as retention would; returns the new starts."""

    async def delete() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=brokers)
        admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
        await consumer.start()
        await admin.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            ends = await consumer.end_offsets(tps)
            done = await admin.delete_records({tp: RecordsToDelete(ends[tp]) for tp in tps})
            return {tp.partition: offset for tp, offset in done.items()}
        finally:
            await admin.close()
            await consumer.stop()

    return asyncio.run(delete())


def last_records(brokers: str, topic: str, partitions: int) -> dict[int, dict[bytes, bytes]]:
    """Per partition, the last value of every key: what compaction would keep."""

    async def read() -> dict[int, dict[bytes, bytes]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=brokers, auto_offset_reset="earliest")
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            last: dict[int, dict[bytes, bytes]] = {p: {} for p in range(partitions)}

            async def behind() -> bool:
                return any([await consumer.position(tp) < ends[tp] for tp in tps])

            while await behind():
                for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                    for r in records:
                        if r.key:  # not a claim
                            last[tp.partition][r.key] = r.value
            return last
        finally:
            await consumer.stop()

    return asyncio.run(read())


def status(node: NodeProcess) -> dict[str, Any]:
    return (node.status() or {}) if node.alive() else {}


def assignment(node: NodeProcess) -> dict[str, Any]:
    answer = httpx.get(f"{node.url}/admin/assignment", headers=ADMIN, timeout=5)
    body: dict[str, Any] = answer.raise_for_status().json()
    return body


def settled(live: list[NodeProcess], partitions: int, standbys: int) -> dict[str, Any] | None:
    """The group's view once every partition has one ready active and its standbys."""
    statuses = [status(n) for n in live]
    if not all(s.get("ready") for s in statuses):
        return None
    actives = sorted(p for s in statuses for p in s.get("active", []))
    placed = [p for s in statuses for p in s.get("standby", [])]
    if actives != list(range(partitions)) or len(placed) != standbys:
        return None
    view: dict[str, Any] = assignment(live[0])["group"]
    return view if len(view["partitions"]) == partitions else None


def standbys_caught_up(nodes: list[NodeProcess]) -> bool:
    """Every standby a node was given follows the changelog and has read it to the end (a
    standby still bootstrapping has no lag yet: it is not caught up)."""
    for node in nodes:
        state = status(node)
        lags = state.get("standby_lag", {})
        if any(lags.get(str(p)) != 0 for p in state.get("standby", [])):
            return False
    return True


def read_store(data_dir: Path, partition: int) -> dict[bytes, bytes]:
    store = PartitionStore(data_dir / "customer" / "g0" / str(partition), partition)
    try:
        return dict(store.items())
    finally:
        store.close()


def check_replicas(final: dict[str, Any], nodes: list[NodeProcess], reference: Reference) -> None:
    """Actives hold the reference; every standby store equals its active's, byte for byte."""
    from backbone.codec import AggregateCodec

    codec = AggregateCodec(Stored)
    by_name = {n.name: n for n in nodes}
    seen: Reference = {}
    for p, replicas in final.items():
        active = read_store(by_name[replicas["active"]["node"]].data_dir, int(p))
        for value in active.values():
            state = codec.decode(value)[1]
            seen[state.id] = (state.lifetime_value_cents, state.order_count)
        for standby in replicas["standbys"]:
            copy = read_store(by_name[standby["node"]].data_dir, int(p))
            assert copy == active, f"standby of {p} on {standby['node']} differs from its active"
    wrong = {k: (seen.get(k), v) for k, v in reference.items() if seen.get(k) != v}
    assert not wrong, (
        f"{len(wrong)} aggregates differ from the reference: {list(wrong.items())[:3]}"
    )


@dataclass
class Service:
    """A baked service under test on the session's Kafka: its topics and its nodes."""

    name: str
    brokers: str
    workdir: Path
    partitions: int
    env: dict[str, str]

    @property
    def topic(self) -> str:
        return f"{self.name}.events"

    @property
    def changelog(self) -> str:
        return f"{self.name}.customer-changelog"

    def node(self, i: int, faults: dict[str, str] | None = None, **extra: str) -> NodeProcess:
        """Node ``i`` lives in zone ``i``; the same ``i`` again reuses its data dir.
        ``faults``: run it under ``backbone.dev.faults`` with these variables."""
        env = {**self.env, "ZONE": ZONES[i % len(ZONES)], **extra}
        return NodeProcess("customer_backbone", f"node-{i}", self.workdir, env, faults=faults)

    def load(self, events: list[tuple[bytes, bytes]], chunk: int, pause: float) -> threading.Thread:
        """A producer thread spreading ``events`` over time (its pause shapes the load; it
        synchronises nothing)."""
        return threading.Thread(
            target=lambda: asyncio.run(
                produce_over_time(self.brokers, self.topic, events, chunk, pause)
            )
        )

    def lag(self) -> int:
        return lag(self.brokers, self.name, self.topic, self.partitions)

    def produced(self) -> int:
        return produced(self.brokers, self.topic, self.partitions)


def new_service(
    kind: str,
    project: Path,
    brokers: str,
    workdir: Path,
    partitions: int,
    events_config: dict[str, str] | None = None,
    **settings: str,
) -> Service:
    """A fresh service name (so topics and groups never collide) with its events topic."""
    name = f"{kind}-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topic(brokers, f"{name}.events", partitions, events_config))
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": brokers,
        "SERVICE_NAME": name,
        "PARTITIONS": str(partitions),
        "PYTHONPATH": str(project / "src"),
        "READ_MODEL": "off",
        "INTERNAL_TOKEN": INTERNAL_TOKEN,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        **settings,
    }
    return Service(name, brokers, workdir, partitions, env)
