"""Dynamic repartitioning on a live cluster (issue 11): split 6 -> 12, then merge 12 -> 6.

3 nodes in 3 zones with 1 standby, while three producers run: two post over HTTP to the
nodes in turn (so one producer's events for a key reach different nodes one after
another), and one writes straight to the previous generation's topic with its partition
count, as an external producer that was never told of the change. Each producer owns its
keys and numbers its events per key (the aggregate's ``name`` carries the number).

At the end every aggregate equals the reference folded from what the producers had
acknowledged, every standby store equals its active's byte for byte, no replicas share a
zone, and each key's numbers never go down along its changelogs, generation after
generation: nothing lost, nothing applied twice, each producer's order kept.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from backbone.codec import AggregateCodec
from backbone.dev.cluster import NodeProcess, wait_until
from backbone.partitioning import partition_for
from backbone.store import PartitionStore

from clustertools import assignment, new_service, status
from conftest import Bake

pytestmark = pytest.mark.kafka


class Customer(msgspec.Struct):
    id: str
    name: str
    lifetime_value_cents: int
    order_count: int


class Ledger:
    """What one producer had acknowledged, per key: (last number, total, orders)."""

    def __init__(self, name: str, keys: int) -> None:
        self.name = name
        self.keys = [f"{name}-{i}" for i in range(keys)]
        self.state: dict[str, tuple[int, int, int]] = {k: (0, 0, 0) for k in self.keys}
        self.sent = 0
        self.stop = threading.Event()
        self.rng = random.Random(name)

    def next_events(self) -> tuple[str, list[bytes], tuple[int, int, int]]:
        key = self.rng.choice(self.keys)
        number, total, orders = self.state[key]
        amount = self.rng.randint(1, 500)
        events = [
            msgspec.json.encode(
                {"type": "customer_registered", "name": f"{number + 1}", "email": "k@x.io"}
            )
            if number == 0
            else msgspec.json.encode({"type": "profile_updated", "name": f"{number + 1}"}),
            msgspec.json.encode(
                {"type": "order_placed", "order_id": f"{key}-{number}", "amount_cents": amount}
            ),
        ]
        return key, events, (number + 1, total + amount, orders + 1)


def http_producer(ledger: Ledger, nodes: list[NodeProcess], plural: str) -> None:
    """POSTs in turn to each node; a 503 (writes paused, node switching) is retried."""
    turn = itertools.cycle(nodes)
    with httpx.Client(timeout=30) as client:
        while not ledger.stop.is_set():
            key, events, after = ledger.next_events()
            for body in events:
                while True:
                    node = next(turn)
                    try:
                        answer = client.post(f"{node.url}/{plural}/{key}/events", content=body)
                    except httpx.TransportError:
                        continue  # refused before it was sent: nothing was produced
                    if answer.status_code == 202:
                        break
                    assert answer.status_code == 503, answer.text
                    assert answer.headers.get("retry-after"), answer.headers
                    ledger.stop.wait(0.05)  # back off as Retry-After asks (pacing only)
            ledger.state[key] = after
            ledger.sent += len(events)
            ledger.stop.wait(0.01)  # the load's pace; it synchronises nothing


def kafka_producer(ledger: Ledger, brokers: str, topic: str, partitions: int) -> None:
    """An external producer that keeps its topic and partition count whatever happens."""

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all")
        await producer.start()
        try:
            while not ledger.stop.is_set():
                key, events, after = ledger.next_events()
                for body in events:
                    await producer.send_and_wait(
                        topic,
                        body,
                        key=key.encode(),
                        partition=partition_for(key.encode(), partitions),
                    )
                ledger.state[key] = after
                ledger.sent += len(events)
                await asyncio.sleep(0.01)  # the load's pace; it synchronises nothing
        finally:
            await producer.stop()

    asyncio.run(run())


def start(target: Any, *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def cli(node: NodeProcess, *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "customer_backbone", *args],
        env=node.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def settled(nodes: list[NodeProcess], generation: int, partitions: int) -> bool:
    statuses = [status(n) for n in nodes]
    if not all(s.get("ready") and s.get("generation") == generation for s in statuses):
        return False
    actives = sorted(p for s in statuses for p in s.get("active", []))
    standbys = [p for s in statuses for p in s.get("standby", [])]
    lags = all(
        s.get("standby_lag", {}).get(str(p)) == 0 for s in statuses for p in s.get("standby", [])
    )
    return actives == list(range(partitions)) and len(standbys) == partitions and lags


def matches(
    nodes: list[NodeProcess], ledgers: list[Ledger], plural: str
) -> list[tuple[str, Any, Any]]:
    """Keys whose aggregate, read through the nodes in turn, differs from the reference."""
    wrong = []
    turn = itertools.cycle(nodes)
    with httpx.Client(timeout=10) as client:
        for ledger in ledgers:
            for key, (number, total, orders) in ledger.state.items():
                if number == 0:
                    continue
                answer = client.get(f"{next(turn).url}/{plural}/{key}")
                got = answer.json() if answer.status_code == 200 else {}
                seen = (got.get("name"), got.get("lifetime_value_cents"), got.get("order_count"))
                if seen != (str(number), total, orders):
                    wrong.append((key, (str(number), total, orders), seen))
    return wrong


def wait_matching(nodes: list[NodeProcess], ledgers: list[Ledger], plural: str, what: str) -> None:
    wrong: list[tuple[str, Any, Any]] = []

    def check() -> bool:
        nonlocal wrong
        wrong = matches(nodes, ledgers, plural)
        return not wrong

    try:
        wait_until(check, 120, what)
    except TimeoutError:
        raise AssertionError(
            f"{len(wrong)} keys differ (key, expected, got): {wrong[:5]}"
        ) from None


def read_model_differs(node: NodeProcess, ledgers: list[Ledger], plural: str) -> list[str]:
    """Keys whose row in the node's read model differs from the reference."""
    answer = httpx.get(f"{node.url}/{plural}", params={"limit": 1000}, timeout=10)
    rows = {row["id"]: row for row in answer.json()["items"]} if answer.status_code == 200 else {}
    wrong = []
    for ledger in ledgers:
        for key, (number, total, orders) in ledger.state.items():
            row = rows.get(key, {})
            if number and (
                row.get("name"),
                row.get("lifetime_value_cents"),
                row.get("order_count"),
            ) != (str(number), total, orders):
                wrong.append(key)
    return wrong


def changelog_numbers(brokers: str, topic: str, partitions: int) -> dict[str, list[int]]:
    """Per key, the numbers its changelog records carry, in changelog order."""
    codec = AggregateCodec(Customer)

    async def read() -> dict[str, list[int]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=brokers, auto_offset_reset="earliest")
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            found: dict[str, list[int]] = defaultdict(list)
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    for record in records:
                        if record.key and record.value:
                            state = codec.decode(record.value)[1]
                            found[state.id].append(int(state.name))
            return found
        finally:
            await consumer.stop()

    return asyncio.run(read())


def stores(node: NodeProcess, generation: int) -> dict[int, dict[bytes, bytes]]:
    root = node.data_dir / "customer" / f"g{generation}"
    found = {}
    for path in sorted(root.iterdir()):
        store = PartitionStore(path, int(path.name))
        try:
            found[int(path.name)] = dict(store.items())
        finally:
            store.close()
    return found


def test_split_then_merge_under_load(bake: Bake, kafka_brokers: str, tmp_path: Path) -> None:
    project = bake()
    service = new_service(
        "split",
        project,
        kafka_brokers,
        tmp_path,
        6,
        STANDBY_REPLICAS="1",
        REPARTITION_RETIRE_AFTER_S="-1",
        READ_MODEL="on",  # each node projects every generation's changelog into SQLite
    )
    plural = "customers"
    nodes = [service.node(i).start() for i in range(3)]
    try:
        wait_until(lambda: settled(nodes, 0, 6), 120, "the first generation to settle")
        web_a, web_b, late = Ledger("a", 40), Ledger("b", 40), Ledger("c", 40)
        producers = [
            start(http_producer, web_a, nodes, plural),
            start(http_producer, web_b, list(reversed(nodes)), plural),
            start(kafka_producer, late, kafka_brokers, f"{service.name}.events", 6),
        ]
        wait_until(lambda: min(web_a.sent, web_b.sent, late.sent) > 100, 60, "load to start")

        # A write of generation 0 whose position is presented after the split.
        body = msgspec.json.encode({"type": "customer_registered", "name": "1", "email": "t@x.io"})
        posted = httpx.post(f"{nodes[0].url}/{plural}/token-key/events", content=body, timeout=10)
        assert posted.status_code == 202 and posted.json()["generation"] == 0, posted.text

        out = cli(nodes[0], "repartition", "--partitions", "12", "--timeout", "240")
        assert '"generation": 1' in out.splitlines()[-1], out
        wait_until(lambda: settled(nodes, 1, 12), 180, "generation 1 (12 partitions) to settle")
        for node in nodes:
            answer = httpx.get(
                f"{node.url}/{plural}/token-key",
                params={"position": posted.json()["position"]},
                timeout=10,
            )
            assert answer.status_code == 200 and answer.json()["name"] == "1", answer.text
            assert answer.headers["x-backbone-generation"] == "1", answer.headers
        sent_after_split = late.sent
        wait_until(lambda: late.sent > sent_after_split + 100, 60, "late records after the switch")

        # The late producer stops before the previous generation is retired: its topic goes.
        late.stop.set()
        producers[2].join(30)
        wait_matching(nodes, [late], plural, "late records to be applied")
        late_forwarded = sum(
            int(
                httpx.get(
                    f"{n.internal_url}/internal/repartition",
                    timeout=5,
                    headers={"authorization": f"Bearer {service.env['INTERNAL_TOKEN']}"},
                )
                .json()
                .get("late_records_forwarded", 0)
            )
            for n in nodes
        )
        assert late_forwarded > 0
        cli(nodes[0], "repartition", "--retire")
        wait_until(
            lambda: not any((n.data_dir / "customer" / "g0").exists() for n in nodes),
            30,
            "every node to delete the retired generation's stores",
        )

        # Merge, with the late producer now on generation 1's topic and count.
        late.stop.clear()
        producers[2] = start(kafka_producer, late, kafka_brokers, f"{service.name}.events-g1", 12)
        out = cli(nodes[0], "repartition", "--partitions", "6", "--timeout", "240")
        assert '"generation": 2' in out.splitlines()[-1], out
        wait_until(lambda: settled(nodes, 2, 6), 180, "generation 2 (6 partitions) to settle")

        for ledger in (web_a, web_b, late):
            ledger.stop.set()
        for thread in producers:
            thread.join(60)
        ledgers = [web_a, web_b, late]
        wait_matching(nodes, ledgers, plural, "every aggregate to match")
        for node in nodes:
            wait_until(
                lambda node=node: not read_model_differs(node, ledgers, plural),
                60,
                f"the read model of {node.name} to match",
            )
        wait_until(lambda: settled(nodes, 2, 6), 60, "standbys to catch up")
        view = assignment(nodes[0])["group"]
        assert view["zone_conflicts"] == [], view
    finally:
        for node in nodes:
            node.stop()

    by_name = {n.name: n for n in nodes}
    held = {n.name: stores(n, 2) for n in nodes}
    for p, replicas in view["partitions"].items():
        active = held[replicas["active"]["node"]][int(p)]
        assert active, f"partition {p} is empty"
        for standby in replicas["standbys"]:
            assert held[standby["node"]][int(p)] == active, f"standby of {p} differs"
    assert by_name

    numbers: dict[str, list[int]] = defaultdict(list)
    for topic, count in (
        (f"{service.name}.customer-changelog-g1", 12),
        (f"{service.name}.customer-changelog-g2", 6),
    ):
        for key, seen in changelog_numbers(kafka_brokers, topic, count).items():
            numbers[key].extend(seen)
    backwards = {k: v for k, v in numbers.items() if v != sorted(v)}
    assert not backwards, f"order broken for {len(backwards)} keys: {list(backwards.items())[:2]}"
