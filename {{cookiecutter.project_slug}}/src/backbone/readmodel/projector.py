"""The projector: tails every changelog partition into the read model, in a thread.

Each fetched batch (all its partitions) is one SQL transaction, run by ``asyncio.to_thread``
so the node's event loop never waits for the database (SQLite and psycopg release the GIL
while they work). The projector reports its lag (records between what the database holds
and the changelog's ends) and its death: a task that ended with an error, or was cancelled
by anything but ``stop``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from backbone.changelog.sources import ChangelogSource
from backbone.kafka_connection import KafkaConnection
from backbone.readmodel.model import Applied, ReadModel

A = TypeVar("A", bound=msgspec.Struct)
log = structlog.get_logger(__name__)

MAX_RECORDS = 50_000  # per fetched batch, so per transaction
FETCH_MAX_BYTES = 64 * 1024 * 1024
PARTITION_FETCH_BYTES = 8 * 1024 * 1024
# The broker holds a fetch until 1 MiB is there or 100 ms have passed: under a steady trickle
# of writes, one transaction per 100 ms instead of one per changelog batch (its fixed cost
# took CPU from the HTTP answers in bench/ingest.py); a backlog is read at once.
FETCH_MIN_BYTES = 1024 * 1024
FETCH_MAX_WAIT_MS = 100
# A failing transaction is tried this many times, waiting 0.5 s, 1 s, 2 s ... in between;
# then the projector stops and the node reports it dead (/health/live).
ATTEMPTS = 5
SWAP_CHECK_S = 1.0


def changelog_consumer(kafka: KafkaConnection) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **kafka.kwargs(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=FETCH_MAX_BYTES,
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
        fetch_min_bytes=FETCH_MIN_BYTES,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )


class Projector(Generic[A]):
    """Tails every partition of the changelog into the read model. ``sources()`` names the
    changelogs of the generations in force, oldest first: after a repartitioning the
    previous one is read to its end before the next, so no older value overwrites a newer."""

    def __init__(
        self,
        kafka: KafkaConnection,
        sources: Callable[[], list[ChangelogSource]],
        model: ReadModel[A],
    ) -> None:
        self.sources = sources
        self.model = model
        self.kafka = kafka
        self.rows = 0
        self.failure: str | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._source: ChangelogSource | None = None
        # Of the source being read: the next offsets the database held when last looked at
        # (a rebuild's swap is seen as a step back from these), the same less any records
        # retention deleted (for the lag), and the changelog's ends as last seen.
        self._seen: dict[int, int] = {}
        self._stored: dict[int, int] = {}
        self._ends: dict[int, int] = {}
        self._swap_checked = 0.0

    async def start(self) -> None:
        self._consumer = changelog_consumer(self.kafka)
        await self._consumer.start()
        *older, current = self.sources()
        for source in older:
            if source.topic in await self._consumer.topics():
                await self._assign(self._consumer, source)
                await self._finish(self._consumer, source)
        await self._assign(self._consumer, current)
        self._task = asyncio.create_task(self._run(self._consumer), name="read-model")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping:
            return
        if task.cancelled():
            self.failure = "the projector task was cancelled"
        else:
            exc = task.exception()
            self.failure = f"{type(exc).__name__}: {exc}" if exc else "the projector task ended"
        log.error("read_model_projector_dead", failure=self.failure)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def lag(self) -> int | None:
        """Records of the current changelog not in the database yet; None before start."""
        if self._source is None or not self._ends:
            return None
        return sum(max(0, end - self._stored.get(p, 0)) for p, end in self._ends.items())

    def status(self) -> dict[str, Any]:
        return {
            "alive": self.alive,
            "failure": self.failure,
            "topic": None if self._source is None else self._source.topic,
            "lag": self.lag(),
            "rows_written": self.rows,
        }

    async def _assign(self, consumer: AIOKafkaConsumer, source: ChangelogSource) -> None:
        self._source = source
        tps = [TopicPartition(source.topic, p) for p in range(source.partitions)]
        consumer.assign(tps)
        stored = await asyncio.to_thread(self.model.next_offsets, source.topic)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        gaps = sorted(
            tp.partition
            for tp in tps
            if max(stored.get(tp.partition, 0), source.first_offset) < begins[tp]
        )
        if gaps:
            # Retention deleted changelog records this read model never saw: aggregates not
            # changed since then are missing until they change again.
            log.error(
                "read_model_incomplete",
                topic=source.topic,
                partitions=gaps,
                remedy="use a shared READ_MODEL_URL that outlives nodes, or keep the changelog "
                "complete (CHANGELOG_RETENTION_MS=-1) where every node projects into SQLite",
            )
        self._seen = {tp.partition: stored.get(tp.partition, 0) for tp in tps}
        self._stored = {}
        for tp in tps:
            start = max(stored.get(tp.partition, 0), begins[tp])
            consumer.seek(tp, start)
            self._stored[tp.partition] = start
        self._ends = {tp.partition: ends[tp] for tp in tps}

    async def _finish(self, consumer: AIOKafkaConsumer, source: ChangelogSource) -> None:
        """Project ``source`` up to its current end (it no longer grows)."""
        tps = [TopicPartition(source.topic, p) for p in range(source.partitions)]
        ends = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            await self._project(consumer, source)
        log.info("read_model_generation_done", topic=source.topic)

    async def _project(self, consumer: AIOKafkaConsumer, source: ChangelogSource) -> None:
        fetched = await consumer.getmany(timeout_ms=500, max_records=MAX_RECORDS)
        for tp in fetched:
            end = consumer.highwater(tp)
            if end is not None:
                self._ends[tp.partition] = end
        batches = {tp.partition: records for tp, records in fetched.items() if records}
        if not batches:
            await self._look_for_a_swap(consumer, source)
            return
        seen = {p: self._seen.get(p, 0) for p in batches}
        done = await self._apply(source.topic, batches, seen)
        self.rows += done.rows
        self._seen.update(done.next_offsets)
        self._stored.update(done.next_offsets)
        await self._seek_back(consumer, source, done.behind)

    async def _look_for_a_swap(self, consumer: AIOKafkaConsumer, source: ChangelogSource) -> None:
        """While idle, at most every SWAP_CHECK_S: a rebuild's swap leaves the stored offsets
        behind what this consumer read, and partitions that get no new record would never
        show it in ``Applied.behind``."""
        now = time.monotonic()
        if now - self._swap_checked < SWAP_CHECK_S:
            return
        self._swap_checked = now
        stored = await asyncio.to_thread(self.model.next_offsets, source.topic)
        behind = {p: stored.get(p, 0) for p, seen in self._seen.items() if stored.get(p, 0) < seen}
        await self._seek_back(consumer, source, behind)

    async def _seek_back(
        self, consumer: AIOKafkaConsumer, source: ChangelogSource, behind: dict[int, int]
    ) -> None:
        """The database is behind what this consumer read: a rebuild swapped the tables.
        Read again from what it holds, so nothing after the rebuild's end is missing."""
        for p, stored in behind.items():
            tp = TopicPartition(source.topic, p)
            begin = (await consumer.beginning_offsets([tp]))[tp]
            start = max(stored, begin)
            log.info("read_model_seek_back", topic=source.topic, partition=p, offset=start)
            consumer.seek(tp, start)
            self._seen[p] = stored
            self._stored[p] = start

    async def _apply(
        self, topic: str, batches: dict[int, list[Any]], seen: dict[int, int]
    ) -> Applied:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await asyncio.to_thread(self.model.apply_batch, topic, batches, seen)
            except Exception as exc:
                if attempt == ATTEMPTS:
                    raise
                log.warning(
                    "read_model_retry", attempt=attempt, error=f"{type(exc).__name__}: {exc}"
                )
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            current = self.sources()[-1]
            if self._source is not None and current.topic != self._source.topic:
                await self._finish(consumer, self._source)
                await self._assign(consumer, current)
            assert self._source is not None
            await self._project(consumer, self._source)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
        self.model.close()
