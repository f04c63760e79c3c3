"""Re-submitting dead letters to the events topic once the cause is fixed, each one once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import NotLeaderForPartitionError

from backbone.admin import replayed
from backbone.kafka_connection import KafkaConnection
from backbone.repartition.faults import fault_point
from backbone.topics import Topics

log = structlog.get_logger(__name__)

REPLAYED_FROM = "dlq-replayed-from"
BATCH = 500  # dead letters per transaction
SUBMIT_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters to replay; every given criterion must match."""

    partition: int | None = None
    offsets: frozenset[int] = frozenset()
    reason: str | None = None

    def matches(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        if self.partition is not None and record.partition != self.partition:
            return False
        if self.offsets and record.offset not in self.offsets:
            return False
        if self.reason is not None:
            reason = dict(record.headers).get("dlq-reason", b"").decode()
            if reason != self.reason:
                return False
        return True


@dataclass(slots=True)
class ReplayReport:
    scanned: int = 0
    replayed: list[tuple[int, int]] = field(default_factory=list)
    skipped: int = 0  # selected, but re-submitted by an earlier replay


async def _submit(
    producer: AIOKafkaProducer, topics: Topics, letters: list[ConsumerRecord[bytes, bytes]]
) -> None:
    """The letters to the events topic and their record, in one transaction."""
    record = msgspec.json.encode(replayed.Replayed(topics.events))
    async with producer.transaction():
        sent = []
        for letter in letters:
            headers = [(k, v) for k, v in letter.headers if not k.startswith("dlq-")]
            origin = f"{letter.topic}/{letter.partition}/{letter.offset}".encode()
            headers.append((REPLAYED_FROM, origin))
            sent.append(
                await producer.send(topics.events, letter.value, key=letter.key, headers=headers)
            )
            key = replayed.record_key(letter)
            sent.append(await producer.send(topics.dlq_replayed, record, key=key))
        await asyncio.gather(*sent)
        fault_point("dlq_replay_sent")


class _Submitter:
    """Sends dead letters in transactions (``_submit``). A transaction refused while a
    partition elects its leader (on a fresh broker, the coordinator's own) is aborted and
    sent again by a new producer, which fences the old one: after a refusal the old one's
    sequence numbers are out of step."""

    def __init__(self, kafka: KafkaConnection, topics: Topics) -> None:
        self.kafka = kafka
        self.topics = topics
        self.producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        producer = replayed.transactional_producer(self.kafka, self.topics.service)
        await producer.start()
        self.producer = producer
        await replayed.fence(producer)

    async def submit(self, letters: list[ConsumerRecord[bytes, bytes]]) -> None:
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            assert self.producer is not None
            try:
                await _submit(self.producer, self.topics, letters)
                return
            except NotLeaderForPartitionError as exc:
                if attempt == SUBMIT_ATTEMPTS:
                    raise
                log.warning("dlq_replay_retry", attempt=attempt, error=str(exc))
                await self.stop()
                await asyncio.sleep(0.2 * attempt)
                await self.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None


async def replay(
    kafka: KafkaConnection,
    topics: Topics,
    selection: Selection,
    dry_run: bool = False,
    on_record: Callable[[ConsumerRecord[bytes, bytes]], None] | None = None,
    replication: int = 1,
    batch: int = BATCH,
) -> ReplayReport:
    """Copy the selected DLQ records (as they were first produced) back to the events topic,
    skipping those an earlier replay re-submitted (``backbone.admin.replayed``).

    Reads the DLQ up to its end at the time of the call, so a record that fails again and
    lands in the DLQ once more is not replayed in a loop.
    """
    partitions = await _partitions(kafka, topics.dlq)
    consumer = AIOKafkaConsumer(**kafka.kwargs(), group_id=None, enable_auto_commit=False)
    # A dry run writes nothing, so it takes no transactional id (it would fence a replay).
    submitter = None if dry_run else _Submitter(kafka, topics)
    await consumer.start()
    report = ReplayReport()
    try:
        if submitter is not None:
            await replayed.ensure_topic(kafka, topics.dlq_replayed, replication)
            await submitter.start()
        done = await replayed.replayed_letters(kafka, topics.dlq_replayed)
        pending: list[ConsumerRecord[bytes, bytes]] = []
        tps = [
            TopicPartition(topics.dlq, p)
            for p in partitions
            if selection.partition is None or p == selection.partition
        ]
        async for record in _dead_letters(consumer, tps):
            report.scanned += 1
            if not selection.matches(record):
                continue
            if (record.partition, record.offset) in done:
                report.skipped += 1
                continue
            if on_record is not None:
                on_record(record)
            report.replayed.append((record.partition, record.offset))
            pending.append(record)
            if len(pending) >= batch and submitter is not None:
                await submitter.submit(pending)
                pending = []
        if pending and submitter is not None:
            await submitter.submit(pending)
        log.info(
            "dlq_replayed",
            scanned=report.scanned,
            replayed=len(report.replayed),
            skipped=report.skipped,
            dry_run=dry_run,
        )
        return report
    finally:
        await consumer.stop()
        if submitter is not None:
            await submitter.stop()


async def _partitions(kafka: KafkaConnection, dlq: str) -> list[int]:
    admin = AIOKafkaAdminClient(**kafka.kwargs())
    await admin.start()
    try:
        if dlq not in await admin.list_topics():
            raise LookupError(f"topic {dlq} does not exist: has the service run yet?")
        (described,) = await admin.describe_topics([dlq])
        return sorted(p["partition"] for p in described["partitions"])
    finally:
        await admin.close()


async def _dead_letters(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition]
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """The records of these DLQ partitions up to their end as of now."""
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)
    remaining = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
    while remaining:
        batches = await consumer.getmany(*remaining, timeout_ms=1000)
        for tp, records in batches.items():
            for record in records:
                if record.offset < ends[tp]:
                    yield record
        for tp in list(remaining):
            if await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
