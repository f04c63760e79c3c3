"""The record of replayed dead letters, so that ``dlq replay`` re-submits each one once.

A compacted topic (``Topics.dlq_replayed``) holds one record per replayed dead letter,
keyed by its DLQ partition and offset. It is written in the same Kafka transaction as the
re-submitted event: both are committed or neither is, and the processor reads the events
topic ``read_committed``. The transactional id is the service's, so a replay that starts
fences any earlier one and aborts what a killed one left open before reading the record.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from backbone.kafka_connection import KafkaConnection
from backbone.topics import durability

Letter = tuple[int, int]  # (DLQ partition, offset)

CONFIG = {"cleanup.policy": "compact"}
LEADER_TIMEOUT_S = 30.0


class Replayed(msgspec.Struct, frozen=True):
    """The value of a record: where the dead letter went."""

    topic: str


def record_key(letter: ConsumerRecord[bytes, bytes]) -> bytes:
    return f"{letter.partition}/{letter.offset}".encode()


def parse_key(key: bytes) -> Letter:
    partition, offset = key.decode().split("/")
    return int(partition), int(offset)


def transactional_producer(kafka: KafkaConnection, service: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **kafka.kwargs(),
        transactional_id=f"{service}.dlq-replay",
        enable_idempotence=True,
        acks="all",
    )


async def fence(producer: AIOKafkaProducer) -> None:
    """Take the transactional id: the broker aborts a transaction a killed replay left
    open (its events never reach the processor) and fences a replay still running."""
    await producer.begin_transaction()
    await producer.commit_transaction()


async def ensure_topic(kafka: KafkaConnection, topic: str, replication: int) -> None:
    admin = AIOKafkaAdminClient(**kafka.kwargs())
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            factor, config = await durability(admin, replication)
            new = NewTopic(topic, 1, factor, topic_configs={**CONFIG, **config})
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([new])
        await _until_led(admin, topic)
    finally:
        await admin.close()


async def _until_led(admin: AIOKafkaAdminClient, topic: str) -> None:
    """Until every partition of the new ``topic`` has a leader: a reader or a transaction
    that reaches it before then is refused with NotLeaderForPartition."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LEADER_TIMEOUT_S
    while True:
        described = await admin.describe_topics([topic])
        partitions = described[0].get("partitions") if described else None
        if partitions and all(p["leader"] >= 0 for p in partitions):
            return
        if loop.time() > deadline:
            raise RuntimeError(
                f"topic {topic} has no partition leader after {LEADER_TIMEOUT_S:.0f} s: "
                "check that the brokers are up, then run the replay again"
            )
        await asyncio.sleep(0.1)


async def replayed_letters(kafka: KafkaConnection, topic: str) -> set[Letter]:
    """Every dead letter a committed replay re-submitted."""
    consumer = AIOKafkaConsumer(
        **kafka.kwargs(),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return set()
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        done: set[Letter] = set()
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                done.update(parse_key(r.key) for r in records if r.key is not None)
        return done
    finally:
        await consumer.stop()
