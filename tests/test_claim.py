"""Claims (backbone.changelog.epochs) against a real broker: a claim holds only where the restore
ended, a new epoch follows every claim, readers skip an older writer's records, and a
consumer that is not a member of the group cannot claim at all."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from backbone.changelog.epochs import epoch_header
from backbone.changelog.reader import ChangelogReader
from backbone.changelog.writer import ChangelogWriter, send_to_partition
from backbone.kafka_connection import KafkaConnection
from backbone.processing.processor import Processor
from backbone.store import PartitionStore
from backbone.topics import Topics

from clustertools import create_topic

pytestmark = pytest.mark.kafka


async def member(brokers: str, topics: Topics) -> AIOKafkaConsumer:
    """A consumer that joined the service's group and holds its one partition."""
    consumer = AIOKafkaConsumer(topics.events, bootstrap_servers=brokers, group_id=topics.group)
    await consumer.start()
    async with asyncio.timeout(60):
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)
    return consumer


def processor(
    consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, topics: Topics, reader: ChangelogReader
) -> Processor:
    unused: Any = None  # claim() needs neither the stores nor the handlers
    writer = ChangelogWriter(producer, topics.changelog, reader, on_superseded=lambda _: None)
    return Processor(consumer, producer, unused, unused, topics, writer, max_records=10)


def test_claims_take_turns_and_readers_skip_the_loser(kafka_brokers: str, tmp_path: Path) -> None:
    topics = Topics(f"claim-{uuid.uuid4().hex[:8]}", "customer")

    async def run() -> None:
        await create_topic(kafka_brokers, topics.events, 1)
        await create_topic(kafka_brokers, topics.changelog, 1)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_brokers, acks="all")
        reader = ChangelogReader(KafkaConnection(kafka_brokers), topics.changelog, "test")
        consumer = await member(kafka_brokers, topics)
        outsider = AIOKafkaConsumer(bootstrap_servers=kafka_brokers, group_id=topics.group)
        await producer.start()
        await reader.start()
        await outsider.start()
        store = PartitionStore(tmp_path / "store", 0)
        try:

            async def write(key: bytes, value: bytes, epoch: int) -> None:
                await send_to_partition(
                    producer, topics.changelog, 0, [(key, value, [epoch_header(epoch)])]
                )

            # Somebody wrote after the end this store was restored to (offset 0).
            await write(b"a", b"from-another-writer", 0)
            mine = processor(consumer, producer, topics, reader)
            assert not await mine.claim(store)
            assert store.meta().changelog_offset == 0 and 0 not in mine.writer.epochs

            # Restored again (the record and the refused claim), it claims with a new epoch.
            await reader.restore(store)
            assert store.meta().writer_epoch == 1
            assert await mine.claim(store)
            assert mine.writer.epochs[0] == 2
            assert (store.meta().changelog_offset, store.meta().writer_epoch) == (3, 2)

            # A writer of epoch 1 that wakes up now is skipped by a reader.
            await write(b"a", b"stale", 1)
            await write(b"b", b"stale", 1)
            await write(b"c", b"current", 2)
            copy = PartitionStore(tmp_path / "copy", 0)
            try:
                progress = await reader.restore(copy)
                assert dict(copy.items()) == {b"a": b"from-another-writer", b"c": b"current"}
                assert progress.stale == {b"a", b"b"}
            finally:
                copy.close()

            # A consumer outside the group (a node that lost its membership) cannot claim.
            before = await reader.end_offsets({0})
            assert not await processor(outsider, producer, topics, reader).claim(store)
            assert await reader.end_offsets({0}) == before, "it wrote a claim record"
            assert store.meta().writer_epoch == 2
        finally:
            store.close()
            await outsider.stop()
            await reader.stop()
            await consumer.stop()
            await producer.stop()

    asyncio.run(run())
