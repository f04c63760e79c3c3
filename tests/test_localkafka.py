"""backbone.dev.localkafka starts a real 3-node Kafka that replicates, survives a broker's death
and stops without leaving a JVM behind."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from backbone.dev import localkafka
from backbone.dev.cluster import wait_until
from backbone.dev.localkafka import LocalKafka

TOPIC = "replicated"
TP = TopicPartition(TOPIC, 0)


async def create_topic(brokers: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        config = {"min.insync.replicas": "1"}
        await admin.create_topics([NewTopic(TOPIC, 1, 3, topic_configs=config)])
    finally:
        await admin.close()


async def replicas(brokers: str) -> list[int]:
    """The topic's replica brokers; empty while the broker answering lacks its metadata."""
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        [described] = await admin.describe_topics([TOPIC])
        return sorted(described["partitions"][0]["replicas"]) if described["partitions"] else []
    finally:
        await admin.close()


async def produce(brokers: str, value: bytes) -> int:
    """Send with acks=all; return the partition leader's node id that took the write."""
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all")
    await producer.start()
    try:
        # Bounded: after a broker's death the producer retries until the leader moves.
        await asyncio.wait_for(producer.send_and_wait(TOPIC, value, key=b"k"), 45)
        return int(producer.client.cluster.leader_for_partition(TP))
    finally:
        await producer.stop()


async def read_all(brokers: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TP])
        await consumer.seek_to_beginning(TP)
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(values) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(TP, timeout_ms=1000)
            values += [r.value for r in batches.get(TP, [])]
        return values
    finally:
        await consumer.stop()


def java_alive(pid: int) -> bool:
    try:  # a zombie has an empty cmdline: it is dead
        return b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_three_nodes_replicate_survive_a_kill_and_stop_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kafka = LocalKafka(tmp_path / "kafka", nodes=3)
    address = ["address", "--dir", str(tmp_path / "kafka")]
    brokers = kafka.start(timeout=90)  # stops what it started if it fails
    try:
        assert len(brokers.split(",")) == 3
        assert localkafka.main(address) == 0  # what a second terminal asks for
        assert capsys.readouterr().out == brokers + "\n"
        state = json.loads((tmp_path / "kafka" / "cluster.json").read_text())
        pids = [node["pid"] for node in state["nodes"]]
        assert all(java_alive(pid) for pid in pids)

        asyncio.run(create_topic(brokers))
        placed = wait_until(lambda: asyncio.run(replicas(brokers)), 30, "the topic's metadata")
        assert placed == [0, 1, 2]
        leader = asyncio.run(produce(brokers, b"before"))
        assert asyncio.run(read_all(brokers, 1)) == [b"before"]

        kafka.kill_node(leader)  # the leader, so the write below needs a failover
        assert not java_alive(pids[leader])
        new_leader = asyncio.run(produce(brokers, b"after"))
        assert new_leader != leader
        assert asyncio.run(read_all(brokers, 2)) == [b"before", b"after"]
    finally:
        kafka.stop()
    assert not any(java_alive(pid) for pid in pids)
    assert localkafka.main(address) == 1
    said = capsys.readouterr()
    assert said.out == ""
    assert "no cluster is running in" in said.err and "localkafka start" in said.err
