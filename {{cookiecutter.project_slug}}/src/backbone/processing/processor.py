"""The active side: consume input batches, apply them, and make the result durable.

Order per batch, so that nothing is lost and nothing is applied twice: changelog, output
and dead-letter records are acknowledged by Kafka, then the store's WriteBatch (data +
offsets) is written, then input offsets are committed. A crash between any two steps is
repaired by restore + the per-aggregate fence.
Changelog writes go through ``ChangelogWriter``, which guards them against zombies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from opentelemetry import propagate, trace

from backbone.changelog.writer import ChangelogWriter, Sent
from backbone.processing.apply import BatchApplier, BatchResult, dead_letter_headers
from backbone.store import PartitionStore
from backbone.store.registry import StoreRegistry
from backbone.topics import Topics

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("backbone.processing")

INPUT_OFFSET_HEADER = "input-offset"
# How often an idle active looks for records it did not write at its changelog's end.
TAIL_CHECK_S = 5.0
# Told each applied batch's processor and duration in seconds (backbone.http.metrics).
on_batch: list[Callable[[Processor, float], None]] = []


class Processor:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        stores: StoreRegistry,
        applier: BatchApplier[Any],
        topics: Topics,
        writer: ChangelogWriter,
        max_records: int,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.stores = stores
        self.applier = applier
        self.topics = topics
        self.writer = writer
        self.max_records = max_records
        self.lock = asyncio.Lock()
        self.ready: set[int] = set()
        # Per partition being rebuilt from its input: the input offset below which its
        # output events and dead letters were sent before, so they are not sent again.
        self.quiet: dict[int, int] = {}
        # Told a partition whose rebuild has applied its input past its quiet offset.
        self.on_caught_up: Callable[[int], None] = lambda _: None
        # While the partition count changes: per partition, the barrier offset that this
        # generation applies its input up to, and no further (backbone.repartition).
        self.drain_to: dict[int, int] | None = None
        self.processed = 0
        self.dead_letters = 0
        self._tail_checked = time.monotonic()

    async def run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=500, max_records=self.max_records)
            async with self.lock:
                if batches:
                    await self.process(batches)
                    self._tail_checked = time.monotonic()
                elif time.monotonic() - self._tail_checked >= TAIL_CHECK_S:
                    # Busy partitions are checked with every batch; idle ones here.
                    held = {p: st for p in self.ready if (st := self.stores.get(p)) is not None}
                    await self.writer.check_tails(held)
                    self._tail_checked = time.monotonic()

    async def claim(self, store: PartitionStore) -> bool:
        """Take the changelog partition of ``store`` over (``ChangelogWriter.claim``), as a
        confirmed member of the group: a zombie must not claim."""
        tp = TopicPartition(self.topics.events, store.partition)
        if not await self._still_owner({tp: await self.consumer.committed(tp) or 0}, "claim"):
            return False
        return await self.writer.claim(store)

    async def process(
        self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        started = time.perf_counter()
        results: list[BatchResult] = []
        spans = []
        starts: dict[TopicPartition, int] = {}
        caught_up: set[int] = set()
        for tp, records in batches.items():
            store = self.stores.get(tp.partition)
            if store is None or tp.partition not in self.ready or not records:
                continue  # revoked or still restoring: the records are fetched again later
            if self.drain_to is not None:
                limit = self.drain_to.get(tp.partition, 0)
                if records[-1].offset >= limit:
                    self.consumer.pause(tp)  # the rest belongs to the next generation
                    records = [r for r in records if r.offset < limit]
                    if not records:
                        continue
            spans.extend(self._spans(records))
            result = self.applier.apply(store, records)
            quiet = self.quiet.get(tp.partition)
            if quiet is not None:
                result.emitted = [e for e in result.emitted if e.input_offset >= quiet]
                result.dead = [d for d in result.dead if d.record.offset >= quiet]
                if result.next_offset >= quiet:
                    del self.quiet[tp.partition]
                    caught_up.add(tp.partition)
            results.append(result)
            starts[tp] = records[0].offset
        if not results:
            return
        if not await self._still_owner(starts, "batch"):
            for tp, offset in starts.items():
                self.consumer.seek(tp, offset)  # read again once membership is settled
            for span in spans:
                span.end()
            return
        try:
            sent = await self._publish_all(results)
            done = []
            for result, changelog in zip(results, sent, strict=True):
                store = self.stores.get(result.partition)
                if store is None:
                    continue
                changelog_end = None
                if changelog is not None:
                    changelog_end = await self.writer.verify(store, changelog, result.dirty)
                    if changelog_end is None:
                        continue  # superseded: this node's store must not take the batch
                store.write(
                    result.dirty.items(),
                    changelog_offset=changelog_end,
                    input_offset=result.next_offset,
                )
                self.processed += result.applied
                self.dead_letters += len(result.dead)
                done.append(result)
            await self._commit(done)
            for result in done:
                if result.partition in caught_up:
                    self.on_caught_up(result.partition)
            for hook in on_batch:
                hook(self, time.perf_counter() - started)
        finally:
            for span in spans:
                span.end()

    async def _publish_all(self, results: list[BatchResult]) -> list[Sent | None]:
        """Publish every partition's records of the batch; returns once all are acked."""
        return list(await asyncio.gather(*(self._publish(r) for r in results)))

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

    async def _publish(self, result: BatchResult) -> Sent | None:
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
        sent = None
        if result.dirty:
            sent = await self.writer.publish(
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
        return sent

    async def _still_owner(self, offsets: dict[TopicPartition, int], what: str) -> bool:
        """Stop a zombie: a node that was frozen past its session (GC pause, SIGSTOP,
        network partition) must not write the changelog of partitions now owned elsewhere.
        Committing offsets already reached (a batch's start, or the committed offset)
        changes nothing, but the coordinator refuses it from a member of an old group generation."""
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            log.warning(
                f"{what}_deferred_membership_unconfirmed",
                error=str(exc),
                partitions=sorted(tp.partition for tp in offsets),
            )
            return False
        return True

    async def _commit(self, results: list[BatchResult]) -> None:
        offsets = {
            TopicPartition(self.topics.events, r.partition): r.next_offset
            for r in results
            if r.partition in self.ready
        }
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            # Safe to go on: the store holds the input offset and every aggregate its fence.
            log.warning(
                "commit_failed", error=str(exc), partitions=sorted(o.partition for o in offsets)
            )
