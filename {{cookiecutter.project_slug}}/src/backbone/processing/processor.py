"""The active side: consume input batches, apply them, and make the result durable.

Order per batch, so that nothing is lost and nothing is applied twice: changelog, output
and dead-letter records are acknowledged by Kafka, then the store's WriteBatch (data +
offsets) is written, then input offsets are committed. A crash between any two steps is
repaired by restore + the per-aggregate fence.

Pipelined: batch n+1 is fetched and applied while the records of batch n are in flight,
over an overlay of batch n's state (never a half-written store). Batch n is then written
and committed, and only then is n+1 sent; a partition of n that a newer writer took over
drops out of n+1. So at most one batch is in flight, and a crash loses nothing that was
committed. Changelog writes go through ``ChangelogWriter``, which guards them against
zombies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from opentelemetry import propagate, trace

from backbone.changelog.writer import ChangelogWriter, Sent
from backbone.observability import tracing_on
from backbone.processing.apply import (
    BatchApplier,
    BatchResult,
    Folded,
    dead_letter_headers,
    step,
)
from backbone.processing.window import AppliedWindow
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


@dataclass
class Staged:
    """A batch applied in memory; once sent, the batch in flight."""

    started: float
    results: list[BatchResult] = field(default_factory=list)
    starts: dict[TopicPartition, int] = field(default_factory=dict)
    spans: list[trace.Span] = field(default_factory=list)
    sending: list[asyncio.Future[Sent | None]] = field(default_factory=list)
    caught_up: set[int] = field(default_factory=set)  # rebuilt partitions past their quiet

    def folded(self, partition: int) -> dict[bytes, Folded] | None:
        for result in self.results:
            if result.partition == partition:
                return result.folded
        return None

    def drop(self, partitions: set[int]) -> None:
        if partitions:
            self.results = [r for r in self.results if r.partition not in partitions]
            self.starts = {tp: o for tp, o in self.starts.items() if tp.partition not in partitions}

    def end_spans(self) -> None:
        for span in self.spans:
            span.end()
        self.spans.clear()


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
        self.window = AppliedWindow()
        self._tail_checked = time.monotonic()
        self._inflight: Staged | None = None  # sent, not yet acknowledged and written

    async def run(self) -> None:
        while True:
            # With a batch in flight, the next is taken only if it is here already: when none
            # is, the one in flight is finished at once instead of after an idle wait.
            wait = 0 if self._inflight is not None else 500
            batches = await self.consumer.getmany(timeout_ms=wait, max_records=self.max_records)
            async with self.lock:
                if batches:
                    await self._advance(await self._stage(batches))
                    self._tail_checked = time.monotonic()
                    continue
                await self._advance(None)
                if time.monotonic() - self._tail_checked >= TAIL_CHECK_S:
                    # Busy partitions are checked with every batch; idle ones here.
                    held = {p: st for p in self.ready if (st := self.stores.get(p)) is not None}
                    await self.writer.check_tails(held)
                    self._tail_checked = time.monotonic()

    @asynccontextmanager
    async def idle(self) -> AsyncIterator[None]:
        """The processor with no batch in flight: taken once the one in flight (if any) is
        written and committed, and held for the block."""
        async with self.lock:
            await self._advance(None)
            yield

    async def claim(self, store: PartitionStore) -> bool:
        """Take the changelog partition of ``store`` over (``ChangelogWriter.claim``), as a
        confirmed member of the group: a zombie must not claim."""
        tp = TopicPartition(self.topics.events, store.partition)
        if not await self._still_owner({tp: await self.consumer.committed(tp) or 0}, "claim"):
            return False
        return await self.writer.claim(store)

    async def _stage(
        self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> Staged:
        """Apply ``batches`` in memory, over the state of the batch in flight. The event loop
        turns at the fold's pauses, so that the batch in flight is sent and acknowledged
        meanwhile: without them, its requests would wait until this batch is applied."""
        staged = Staged(started=time.perf_counter())
        inflight = self._inflight
        traced = tracing_on()
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
            if traced:
                staged.spans.extend(self._spans(records))
            self.window.starting()
            pending = None if inflight is None else inflight.folded(tp.partition)
            result = await _folded(self.applier.fold(store, records, pending))
            quiet = self.quiet.get(tp.partition)
            if quiet is not None:
                result.emitted = [e for e in result.emitted if e.input_offset >= quiet]
                result.dead = [d for d in result.dead if d.record.offset >= quiet]
                if result.next_offset >= quiet:
                    del self.quiet[tp.partition]
                    staged.caught_up.add(tp.partition)
            staged.results.append(result)
            staged.starts[tp] = records[0].offset
        return staged

    async def _advance(self, staged: Staged | None) -> None:
        """Finish the batch in flight; then send ``staged``, which becomes the one in flight.

        One commit carries the finished batch's input offsets and confirms that this node
        still owns the partitions of ``staged`` (``_still_owner``): it is sent only then,
        and only for partitions whose previous batch was not superseded, since it was
        applied over that batch's state."""
        inflight, self._inflight = self._inflight, None
        offsets: dict[TopicPartition, int] = {}
        superseded: set[int] = set()
        caught_up: list[int] = []
        if inflight is not None:
            done, superseded = await self._finish(inflight)
            for r in done:
                if r.partition in self.ready:
                    offsets[TopicPartition(self.topics.events, r.partition)] = r.next_offset
                if r.partition in inflight.caught_up:
                    caught_up.append(r.partition)
        if staged is not None:
            staged.drop(superseded)
            for tp, start in staged.starts.items():
                offsets.setdefault(tp, start)
            if not staged.results:
                staged.end_spans()
                staged = None
        if not offsets:
            return
        confirmed = await self._still_owner(offsets, "batch" if staged is not None else "commit")
        for partition in caught_up:
            self.on_caught_up(partition)
        if not confirmed:
            if staged is not None:
                for tp, start in staged.starts.items():
                    if tp in self.consumer.assignment():
                        self.consumer.seek(tp, start)  # again once membership is settled
                staged.end_spans()
            return
        if staged is not None:
            await self._send(staged)
            self._inflight = staged

    async def _send(self, staged: Staged) -> None:
        """Start sending every partition's records of ``staged``; ``_acked`` waits for them."""
        staged.sending = [asyncio.ensure_future(self._publish(r)) for r in staged.results]

    async def _acked(self, inflight: Staged) -> list[Sent | None]:
        return list(await asyncio.gather(*inflight.sending))

    async def _finish(self, inflight: Staged) -> tuple[list[BatchResult], set[int]]:
        """Wait for the acks of the batch in flight, then write its stores. Returns the
        results written and the partitions a newer writer took over meanwhile."""
        done: list[BatchResult] = []
        superseded: set[int] = set()
        try:
            sent = await self._acked(inflight)
            for result, changelog in zip(inflight.results, sent, strict=True):
                store = self.stores.get(result.partition)
                if store is None:
                    continue
                changelog_end = None
                if changelog is not None:
                    changelog_end = await self.writer.verify(store, changelog, result.dirty)
                    if changelog_end is None:
                        superseded.add(result.partition)
                        continue  # this node's store must not take the batch
                store.write(
                    result.dirty.items(),
                    changelog_offset=changelog_end,
                    input_offset=result.next_offset,
                )
                self.processed += result.applied
                self.dead_letters += len(result.dead)
                done.append(result)
            self.window.applied()
            for hook in on_batch:
                hook(self, time.perf_counter() - inflight.started)
        finally:
            inflight.end_spans()
        return done, superseded

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
        Committing offsets already reached (a batch's start, the end of a batch written, or
        the committed offset) changes nothing, but the coordinator refuses it from a member
        of an old group generation. A refused commit of a written batch is safe: the store
        holds the input offset and every aggregate its fence."""
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


async def _folded(steps: Generator[None, None, BatchResult]) -> BatchResult:
    """Run a fold, letting the event loop turn at each of its pauses and at its end (a batch
    of many partitions with few records each has no pauses in its folds)."""
    while (result := step(steps)) is None:
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    return result
