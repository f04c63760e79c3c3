"""A node's projector reads again what a rebuild's swap left out, also for partitions that
get no new record afterwards.

A rebuild projects the changelog into side tables up to some end, then swaps them in; what
the changelog got between that end and the swap is read again by every node's projector,
which finds the stored offsets behind what it read. Here the projector has projected every
record of an idle topic, and a rebuild that saw only the first half of each partition is
swapped in: the table must come back to every record without another one produced. Real
Kafka; SQLite and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from test_readmodel_epochs import CODEC, Record, Thing, projection, rows, url  # noqa: F401

from backbone.changelog.epochs import epoch_header
from backbone.changelog.sources import ChangelogSource
from backbone.kafka_connection import KafkaConnection
from backbone.readmodel import ReadModel
from backbone.readmodel.projector import Projector
from backbone.readmodel.rebuild import SideTables

pytestmark = pytest.mark.kafka

PARTITIONS = 3
PER_PARTITION = 40


async def _until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _swap_on_an_idle_topic(brokers: str, url: str) -> None:  # noqa: F811
    topic = f"swap-{uuid.uuid4().hex[:8]}-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all")
    await producer.start()
    written: dict[int, list[Record]] = {p: [] for p in range(PARTITIONS)}
    try:
        for p in range(PARTITIONS):
            for i in range(PER_PARTITION):
                key, value = f"k{p}-{i % 10}", CODEC.encode(i, Thing(id=f"k{p}-{i % 10}", n=i))
                meta = await producer.send_and_wait(
                    topic, value, key=key.encode(), partition=p, headers=[epoch_header(1)]
                )
                written[p].append(Record(key.encode(), value, meta.offset, [epoch_header(1)]))
    finally:
        await producer.stop()
    final = {f"k{p}-{j}": PER_PARTITION - 10 + j for p in range(PARTITIONS) for j in range(10)}

    model = ReadModel(url, projection(), Thing)
    projector = Projector(
        KafkaConnection(brokers), lambda: [ChangelogSource(topic, PARTITIONS)], model
    )
    await projector.start()
    try:
        await _until(lambda: projector.lag() == 0, 60, "the projector caught up")
        assert await asyncio.to_thread(rows, model) == final

        # A rebuild that ended halfway through every partition, swapped in now.
        side = SideTables(model)
        half = {p: records[: PER_PARTITION // 2] for p, records in written.items()}
        model.apply_batch(topic, half, None, side.tables)
        side.swap([topic])
        assert rows(model) != final

        await _until(lambda: rows(model) == final, 30, "the rows after the swap")
        await _until(lambda: projector.lag() == 0, 30, "no lag after the swap")
        assert model.next_offsets(topic) == {p: PER_PARTITION for p in range(PARTITIONS)}
        assert projector.alive
    finally:
        await projector.stop()


def test_a_swap_is_caught_up_without_new_records(kafka_brokers: str, url: str) -> None:  # noqa: F811
    asyncio.run(_swap_on_an_idle_topic(kafka_brokers, url))
