"""The active side: consume input batches, apply them, and make the result durable.

Order per batch (invariant 1): changelog, output and dead-letter records are acknowledged
by Kafka, then the store's WriteBatch (data + offsets) is written, then input offsets are
committed. A crash between any two steps is repaired by restore + the per-aggregate fence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from opentelemetry import propagate, trace

from backbone.processing.apply import BatchApplier, BatchResult, dead_letter_headers
from backbone.store.registry import StoreRegistry
from backbone.topics import Topics

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("backbone.processing")

INPUT_OFFSET_HEADER = "input-offset"


async def send_to_partition(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    records: Iterable[tuple[bytes, bytes | None, list[tuple[str, bytes]]]],
) -> int:
    """Produce records in as few record batches as possible; returns the next offset."""
    pending: list[Awaitable[RecordMetadata]] = []
    counts: list[int] = []
    batch = producer.create_batch()
    count = 0
    for key, value, headers in records:
        while batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            if count == 0:
                raise ValueError(f"a record of {len(value or b'')} bytes exceeds the batch size")
            pending.append(await producer.send_batch(batch, topic, partition=partition))
            counts.append(count)
            batch, count = producer.create_batch(), 0
        count += 1
    if count:
        pending.append(await producer.send_batch(batch, topic, partition=partition))
        counts.append(count)
    last = -1
    for future, n in zip(pending, counts, strict=True):
        metadata = await future
        last = metadata.offset + n
    return last


class Processor:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        stores: StoreRegistry,
        applier: BatchApplier[Any],
        topics: Topics,
        max_records: int,
        fault_delay_s: float = 0.0,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.stores = stores
        self.applier = applier
        self.topics = topics
        self.max_records = max_records
        self.fault_delay_s = fault_delay_s
        self.lock = asyncio.Lock()
        self.ready: set[int] = set()
        self.processed = 0
        self.dead_letters = 0

    async def run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=500, max_records=self.max_records)
            if not batches:
                continue
            async with self.lock:
                await self.process(batches)

    async def process(
        self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        results: list[BatchResult] = []
        spans = []
        starts: dict[TopicPartition, int] = {}
        for tp, records in batches.items():
            store = self.stores.get(tp.partition)
            if store is None or tp.partition not in self.ready or not records:
                continue  # revoked or still restoring: the records are fetched again later
            spans.extend(self._spans(records))
            results.append(self.applier.apply(store, records))
            starts[tp] = records[0].offset
        if not results:
            return
        if not await self._still_owner(starts):
            for span in spans:
                span.end()
            return
        try:
            changelog_ends = await asyncio.gather(*(self._publish(r) for r in results))
            if self.fault_delay_s:
                # Fault injection for crash tests: widen the changelog-acked, store-not-yet-
                # written window so that a SIGKILL lands in it.
                await asyncio.sleep(self.fault_delay_s)
            for result, changelog_end in zip(results, changelog_ends, strict=True):
                store = self.stores.get(result.partition)
                if store is None:
                    continue
                store.write(
                    result.dirty.items(),
                    changelog_offset=changelog_end,
                    input_offset=result.next_offset,
                )
                self.processed += result.applied
                self.dead_letters += len(result.dead)
            await self._commit(results)
        finally:
            for span in spans:
                span.end()

    def _spans(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[trace.Span]:
        spans = []
        for record in records:
            carrier = {
                k: v.decode(errors="replace") for k, v in record.headers if k == "traceparent"
            }
            if carrier:
                ctx = propagate.extract(carrier)
                span = tracer.start_span(
                    "process event",
                    context=ctx,
                    kind=trace.SpanKind.CONSUMER,
                    attributes={
                        "messaging.destination.name": record.topic,
                        "messaging.destination.partition.id": str(record.partition),
                        "messaging.kafka.offset": record.offset,
                    },
                )
                spans.append(span)
        return spans

    async def _publish(self, result: BatchResult) -> int | None:
        """Send changelog, output and dead letters of one partition; wait for every ack."""
        waits: list[Awaitable[Any]] = []
        for emitted in result.emitted:
            waits.append(
                await self.producer.send(
                    self.topics.out, emitted.value, key=emitted.key, headers=emitted.headers
                )
            )
        for letter in result.dead:
            record = letter.record
            waits.append(
                await self.producer.send(
                    self.topics.dlq,
                    record.value,
                    key=record.key,
                    partition=record.partition,
                    headers=dead_letter_headers(letter),
                )
            )
            log.warning(
                "dead_letter",
                reason=letter.reason,
                error=letter.error,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
        changelog_end = None
        if result.dirty:
            changelog_end = await send_to_partition(
                self.producer,
                self.topics.changelog,
                result.partition,
                (
                    (
                        key,
                        value,
                        [(INPUT_OFFSET_HEADER, str(result.last_input_offset[key]).encode())],
                    )
                    for key, value in result.dirty.items()
                ),
            )
        await asyncio.gather(*waits)
        return changelog_end

    async def _still_owner(self, starts: dict[TopicPartition, int]) -> bool:
        """Fence a zombie: a node that was frozen past its session (GC pause, SIGSTOP,
        network partition) must not write the changelog of partitions now owned elsewhere.
        Committing the offsets the batch starts from changes nothing, but the coordinator
        refuses it from a member of an old generation."""
        try:
            await self.consumer.commit(starts)
        except KafkaError as exc:
            for tp, offset in starts.items():
                self.consumer.seek(tp, offset)  # read again once membership is settled
            log.warning(
                "batch_deferred_membership_unconfirmed",
                error=str(exc),
                partitions=sorted(tp.partition for tp in starts),
            )
            return False
        return True

    async def _commit(self, results: list[BatchResult]) -> None:
        offsets = {
            TopicPartition(self.topics.events, r.partition): r.next_offset
            for r in results
            if r.partition in self.ready
        }
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            # Safe to go on: the store holds the input offset and every aggregate its fence.
            log.warning(
                "commit_failed", error=str(exc), partitions=sorted(o.partition for o in offsets)
            )
