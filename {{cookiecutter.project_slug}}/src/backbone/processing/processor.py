"""The active side: consume input batches, apply them, and make the result durable.

Order per batch (invariant 1): changelog, output and dead-letter records are acknowledged
by Kafka, then the store's WriteBatch (data + offsets) is written, then input offsets are
committed. A crash between any two steps is repaired by restore + the per-aggregate fence.
Changelog records carry the writer's epoch, and nothing but this writer's records may lie
between its store's changelog offset and what it just wrote (backbone.fencing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from opentelemetry import propagate, trace

from backbone.changelog import ChangelogReader
from backbone.fencing import CLAIM_KEY, claim_record, epoch_header, foreign_ranges, record_epoch
from backbone.processing.apply import BatchApplier, BatchResult, dead_letter_headers
from backbone.store import PartitionStore
from backbone.store.registry import StoreRegistry
from backbone.topics import Topics

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("backbone.processing")

INPUT_OFFSET_HEADER = "input-offset"
# How often an idle active looks for records it did not write at its changelog's end.
TAIL_CHECK_S = 5.0


@dataclass(frozen=True)
class Sent:
    """Where records went: the half-open offset range of each record batch, and the end."""

    ranges: list[tuple[int, int]]
    end: int


async def send_to_partition(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    records: Iterable[tuple[bytes, bytes | None, list[tuple[str, bytes]]]],
) -> Sent:
    """Produce records in as few record batches as possible and wait for every ack."""
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
    ranges = []
    for future, n in zip(pending, counts, strict=True):
        metadata = await future
        ranges.append((metadata.offset, metadata.offset + n))
    return Sent(ranges, ranges[-1][1] if ranges else -1)


class Processor:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        stores: StoreRegistry,
        applier: BatchApplier[Any],
        topics: Topics,
        reader: ChangelogReader,
        max_records: int,
        on_fenced: Callable[[int], None] = lambda _: None,
        fault_delay_s: float = 0.0,
        fault_stall_s: float = 0.0,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.stores = stores
        self.applier = applier
        self.topics = topics
        self.reader = reader
        self.max_records = max_records
        self.on_fenced = on_fenced
        self.fault_delay_s = fault_delay_s
        self.fault_stall_s = fault_stall_s
        self.lock = asyncio.Lock()
        self.ready: set[int] = set()
        self.epochs: dict[int, int] = {}  # the epoch this node claimed, per active partition
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
                    await self.check_tails()
                    self._tail_checked = time.monotonic()

    async def claim(self, store: PartitionStore) -> bool:
        """Take the changelog partition of ``store`` over with a new epoch. False when a
        record landed between the end the store was restored to and the claim: the caller
        restores again (reading it) and claims again."""
        # A zombie must not claim: only a member of the current generation may commit.
        tp = TopicPartition(self.topics.events, store.partition)
        try:
            committed = await self.consumer.committed(tp)
            await self.consumer.commit({tp: committed or 0})
        except KafkaError as exc:
            log.warning("claim_deferred_membership_unconfirmed", error=str(exc))
            return False
        meta = store.meta()
        epoch = meta.writer_epoch + 1
        sent = await send_to_partition(
            self.producer, self.topics.changelog, store.partition, [claim_record(epoch)]
        )
        if sent.ranges[0][0] != meta.changelog_offset:
            log.warning(
                "changelog_contended",
                partition=store.partition,
                restored_to=meta.changelog_offset,
                claim_at=sent.ranges[0][0],
            )
            return False
        store.write((), changelog_offset=sent.end, writer_epoch=epoch)
        self.epochs[store.partition] = epoch
        log.info("changelog_claimed", partition=store.partition, epoch=epoch)
        return True

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
            if self.fault_stall_s:
                # Fault injection for the zombie test: a window in which the test freezes
                # the node, after the membership check and before the changelog write.
                log.warning("fault_stall", partitions=sorted(r.partition for r in results))
                await asyncio.sleep(self.fault_stall_s)
            sent = await asyncio.gather(*(self._publish(r) for r in results))
            if self.fault_delay_s:
                # Fault injection for crash tests: widen the changelog-acked, store-not-yet-
                # written window so that a SIGKILL lands in it.
                await asyncio.sleep(self.fault_delay_s)
            done = []
            for result, changelog in zip(results, sent, strict=True):
                store = self.stores.get(result.partition)
                if store is None:
                    continue
                changelog_end = None
                if changelog is not None:
                    changelog_end = await self._verify(store, changelog, result.dirty)
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
        finally:
            for span in spans:
                span.end()

    async def check_tails(self) -> None:
        """Records at the end of an idle active's changelog that it did not write."""
        ends = await self.reader.end_offsets(set(self.ready))
        for partition, end in ends.items():
            store = self.stores.get(partition)
            if store is None or partition not in self.ready:
                continue
            expected = store.meta().changelog_offset
            if end > expected:
                settled = await self._settle(store, [(expected, end)], end, {})
                if settled is not None:
                    store.write((), changelog_offset=settled)

    async def republish(
        self, store: PartitionStore, keys: Iterable[bytes], dirty: Mapping[bytes, bytes | None]
    ) -> Sent | None:
        """Write this node's current state of ``keys`` (``dirty`` first, then the store)
        after whatever a zombie wrote; None when there is nothing to write."""
        keys = sorted(keys)
        if not keys:
            return None
        partition = store.partition
        header = [epoch_header(self.epochs[partition])]
        sent = await send_to_partition(
            self.producer,
            self.topics.changelog,
            partition,
            ((k, dirty[k] if k in dirty else store.get(k), header) for k in keys),
        )
        log.warning("stale_changelog_records_superseded", partition=partition, keys=len(keys))
        return sent

    async def _verify(
        self, store: PartitionStore, sent: Sent, dirty: Mapping[bytes, bytes | None]
    ) -> int | None:
        """The store's new changelog offset, once only this writer's records lie before it;
        None if a newer writer got in between."""
        foreign = foreign_ranges(store.meta().changelog_offset, sent.ranges)
        if not foreign:
            return sent.end
        return await self._settle(store, foreign, sent.end, dirty)

    async def _settle(
        self,
        store: PartitionStore,
        foreign: list[tuple[int, int]],
        examined: int,
        dirty: Mapping[bytes, bytes | None],
    ) -> int | None:
        """Deal with records in ``foreign`` that this writer did not write, in a changelog
        examined up to ``examined``; returns the new end, or None if superseded."""
        partition = store.partition
        mine = self.epochs.get(partition, 0)
        for _ in range(3):
            records = [
                r
                for start, stop in foreign
                for r in await self.reader.read_range(partition, start, stop)
            ]
            newer = max((record_epoch(r) for r in records), default=0)
            if newer >= mine:
                log.error(
                    "changelog_writer_superseded",
                    partition=partition,
                    epoch=mine,
                    newer_epoch=newer,
                    detail="another node claimed this partition: this one takes it over "
                    "again if the group still gives it here",
                )
                self.ready.discard(partition)
                self.epochs.pop(partition, None)
                self.consumer.pause(TopicPartition(self.topics.events, partition))
                self.on_fenced(partition)
                return None
            log.error(
                "zombie_changelog_records", partition=partition, records=len(records), epoch=mine
            )
            stale = {r.key for r in records if r.key is not None and r.key != CLAIM_KEY}
            sent = await self.republish(store, stale, dirty)
            if sent is None:
                return examined
            foreign = foreign_ranges(examined, sent.ranges)
            examined = sent.end
            if not foreign:
                return examined
        return examined

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
            epoch = epoch_header(self.epochs.get(result.partition, 0))
            sent = await send_to_partition(
                self.producer,
                self.topics.changelog,
                result.partition,
                (
                    (
                        key,
                        value,
                        [
                            (INPUT_OFFSET_HEADER, str(result.last_input_offset[key]).encode()),
                            epoch,
                        ],
                    )
                    for key, value in result.dirty.items()
                ),
            )
        await asyncio.gather(*waits)
        return sent

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
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            # Safe to go on: the store holds the input offset and every aggregate its fence.
            log.warning(
                "commit_failed", error=str(exc), partitions=sorted(o.partition for o in offsets)
            )
