"""Reading a changelog into partition stores: restore of actives (until caught up) and,
later, tailing for standbys. One consumer with manual assignment serves every partition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from backbone.changelog.epochs import EpochFilter
from backbone.kafka_connection import KafkaConnection
from backbone.store import PartitionStore

log = structlog.get_logger(__name__)

WRITE_BATCH_RECORDS = 20_000
PROGRESS_EVERY_S = 2.0


class ChangelogMismatchError(RuntimeError):
    """The store's offsets cannot come from this changelog (it was recreated or truncated)."""


class ChangelogGapError(RuntimeError):
    """Retention deleted records a store still needed while it was reading: it must be
    bootstrapped again rather than jump ahead (which would silently lose keys)."""


_Keys = set[bytes]  # spelled outside Progress, whose ``bytes`` field shadows the type


@dataclass(slots=True)
class Progress:
    partition: int
    start: int
    target: int | None
    position: int
    records: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    # Keys of records a zombie wrote, which the restore skipped (backbone.changelog.epochs).
    stale: _Keys = field(default_factory=set)

    def as_dict(self) -> dict[str, object]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        out: dict[str, object] = {
            "partition": self.partition,
            "position": self.position,
            "target": self.target,
            "records": self.records,
            "bytes": self.bytes,
            "seconds": round(elapsed, 3),
            "records_per_s": round(self.records / elapsed, 1),
        }
        if self.target is not None:
            total = max(self.target - self.start, 1)
            done = min(max(self.position - self.start, 0), total)
            rate = done / elapsed
            out["percent"] = round(100.0 * done / total, 1)
            out["eta_s"] = round((total - done) / rate, 1) if rate > 0 else None
        return out


@dataclass(slots=True)
class _Task:
    store: PartitionStore
    progress: Progress
    done: asyncio.Future[Progress] | None
    epochs: EpochFilter


class ChangelogReader:
    def __init__(
        self,
        kafka: KafkaConnection,
        topic: str,
        client_id: str,
        on_gap: Callable[[int], None] = lambda _: None,
    ) -> None:
        self.topic = topic
        self.on_gap = on_gap
        self._consumer = AIOKafkaConsumer(
            **kafka.kwargs(),
            client_id=f"{client_id}-changelog",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        # Offset lookups wait behind the reader's long-poll fetches on a shared connection:
        # a client of their own answers them at once (it speeds up failover).
        self._lookup = AIOKafkaConsumer(
            **kafka.kwargs(),
            client_id=f"{client_id}-offsets",
            group_id=None,
            auto_offset_reset="earliest",
        )
        self._tasks: dict[int, _Task] = {}
        self._ranges = asyncio.Lock()  # read_range() assigns the lookup client
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        await self._lookup.start()
        self._runner = asyncio.create_task(self._run(), name="changelog-reader")

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        for task in self._tasks.values():
            if task.done is not None and not task.done.done():
                task.done.cancel()
        self._tasks.clear()
        await self._consumer.stop()
        await self._lookup.stop()

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The reading loop, once started (``/health/live`` watches it)."""
        return self._runner

    def progress(self) -> list[dict[str, object]]:
        return [t.progress.as_dict() for t in self._tasks.values() if t.done is not None]

    async def bounds(self, partition: int) -> tuple[int, int]:
        tp = TopicPartition(self.topic, partition)
        begin = (await self._lookup.beginning_offsets([tp]))[tp]
        end = (await self._lookup.end_offsets([tp]))[tp]
        return begin, end

    async def end_offset(self, partition: int) -> int:
        return (await self.bounds(partition))[1]

    async def end_offsets(self, partitions: set[int]) -> dict[int, int]:
        tps = [TopicPartition(self.topic, p) for p in partitions]
        ends = await self._lookup.end_offsets(tps) if tps else {}
        return {tp.partition: offset for tp, offset in ends.items()}

    async def read_range(
        self, partition: int, start: int, end: int, timeout_s: float = 30.0
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """The records of ``[start, end)`` that still exist (an active inspecting records
        it did not write)."""
        tp = TopicPartition(self.topic, partition)
        found: list[ConsumerRecord[bytes, bytes]] = []
        async with self._ranges:
            self._lookup.assign([tp])
            self._lookup.seek(tp, start)
            deadline = time.monotonic() + timeout_s
            try:
                while await self._lookup.position(tp) < end:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"reading {self.topic}[{partition}] {start}..{end} took over "
                            f"{timeout_s}s"
                        )
                    batches = await self._lookup.getmany(tp, timeout_ms=500)
                    found.extend(r for r in batches.get(tp, []) if r.offset < end)
            finally:
                self._lookup.assign([])
        return found

    async def restore(self, store: PartitionStore, allow_gap: bool = False) -> Progress:
        """Bring ``store`` up to the changelog's current end; returns when it is there.

        ``allow_gap`` applies what is left of a truncated changelog, for a store that will
        then be rebuilt from the input."""
        partition = store.partition
        begin, end = await self.bounds(partition)
        start = store.meta().changelog_offset
        if allow_gap and start < begin:
            store.write((), changelog_offset=begin)
            start = begin
        if start > end:
            raise ChangelogMismatchError(
                f"store {store.path} has applied changelog {self.topic}[{partition}] up to offset "
                f"{start}, but the changelog ends at {end}: the changelog was recreated or "
                f"truncated. Delete {store.path} so that it is rebuilt, then restart."
            )
        if start < begin:
            raise ChangelogMismatchError(
                f"store {store.path} stops at changelog offset {start} but the changelog now "
                f"starts at {begin}: records in between are gone. Bootstrap the partition from "
                f"a peer, or delete {store.path} to rebuild from the changelog."
            )
        progress = Progress(partition, start, end, start)
        if start >= end:
            return progress
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Progress] = loop.create_future()
        self._assign(
            partition, _Task(store, progress, done, EpochFilter(store.meta().writer_epoch))
        )
        log.info("restore_started", partition=partition, start=start, target=end)
        try:
            return await done
        finally:
            self.remove(partition)

    def tail(self, store: PartitionStore) -> None:
        """Keep ``store`` following the changelog (a standby) until :meth:`remove`."""
        partition = store.partition
        if partition in self._tasks and self._tasks[partition].done is None:
            return
        meta = store.meta()
        start = meta.changelog_offset
        progress = Progress(partition, start, None, start)
        self._assign(partition, _Task(store, progress, None, EpochFilter(meta.writer_epoch)))
        log.info("standby_tailing", partition=partition, start=start)

    def standby_lag(self) -> dict[int, int | None]:
        """Records each standby is behind the changelog's end, as of its last fetch."""
        lags: dict[int, int | None] = {}
        for partition, task in self._tasks.items():
            if task.done is None:
                tp = TopicPartition(self.topic, partition)
                highwater = self._consumer.highwater(tp)
                lags[partition] = None if highwater is None else highwater - task.progress.position
        return lags

    @property
    def tailing(self) -> set[int]:
        return {p for p, t in self._tasks.items() if t.done is None}

    def remove(self, partition: int) -> None:
        if self._tasks.pop(partition, None) is not None:
            self._reassign()

    async def _deleted(self, tp: TopicPartition, position: int) -> bool:
        """Whether ``position`` is below the log start: a hole, not compaction."""
        begin = (await self._lookup.beginning_offsets([tp]))[tp]
        return bool(begin > position)

    async def _find_silent_jumps(self, gaps: dict[TopicPartition, int]) -> None:
        """A consumer reset past deleted records, with nothing after them yet, moves its
        position without returning a record: without this check such a store would sit
        short of those records, looking merely behind, until the next write."""
        assigned = self._consumer.assignment()
        for partition, task in self._tasks.items():
            tp = TopicPartition(self.topic, partition)
            if tp in gaps or tp not in assigned:
                continue
            position = await self._consumer.position(tp)
            if position <= task.progress.position:
                continue
            if await self._deleted(tp, task.progress.position):
                gaps[tp] = task.progress.position
            else:  # records compacted away: nothing is missing
                task.progress.position = position

    def _gap(self, positions: dict[TopicPartition, int]) -> None:
        for tp, offset in positions.items():
            task = self._tasks.pop(tp.partition, None)
            if task is None:
                continue
            log.error("changelog_gap", partition=tp.partition, position=offset)
            if task.done is not None and not task.done.done():
                task.done.set_exception(
                    ChangelogGapError(
                        f"changelog records from offset {offset} of partition {tp.partition} "
                        "were deleted while they were being read"
                    )
                )
            elif task.done is None:
                self.on_gap(tp.partition)
        self._reassign()

    def _assign(self, partition: int, task: _Task) -> None:
        self._tasks[partition] = task
        self._reassign()

    def _reassign(self) -> None:
        tps = {TopicPartition(self.topic, p): t for p, t in self._tasks.items()}
        self._consumer.assign(list(tps))
        for tp, task in tps.items():
            # assign() forgets positions: every store resumes from its own offset.
            self._consumer.seek(tp, task.store.meta().changelog_offset)
        self._wake.set()

    async def _run(self) -> None:
        last_report = time.monotonic()
        while True:
            if not self._tasks:
                self._wake.clear()
                await self._wake.wait()
                continue
            batches = await self._consumer.getmany(timeout_ms=200, max_records=WRITE_BATCH_RECORDS)
            gaps: dict[TopicPartition, int] = {}
            for tp, records in batches.items():
                task = self._tasks.get(tp.partition)
                if task is None or not records:
                    continue
                fresh = [r for r in records if r.offset >= task.progress.position]
                if not fresh:
                    continue
                if fresh[0].offset > task.progress.position and await self._deleted(
                    tp, task.progress.position
                ):
                    # The consumer jumped over records retention deleted: applying the rest
                    # would silently lose keys, and the store would no longer hold what
                    # the active holds.
                    gaps[tp] = task.progress.position
                    continue
                stale = len(task.epochs.stale)
                admitted = [r for r in fresh if task.epochs.admit(r)]
                task.store.write(
                    ((r.key, r.value) for r in admitted if r.key is not None),
                    changelog_offset=fresh[-1].offset + 1,
                    writer_epoch=task.epochs.epoch,
                )
                if len(task.epochs.stale) > stale:
                    log.warning(
                        "stale_changelog_records_skipped",
                        partition=tp.partition,
                        keys=len(task.epochs.stale) - stale,
                        epoch=task.epochs.epoch,
                    )
                task.progress.position = fresh[-1].offset + 1
                task.progress.records += len(fresh)
                task.progress.bytes += sum(len(r.value or b"") + len(r.key or b"") for r in fresh)
            await self._find_silent_jumps(gaps)
            if gaps:
                self._gap(gaps)
            for partition, task in list(self._tasks.items()):
                if task.done is None or task.progress.target is None or task.done.done():
                    continue
                tp = TopicPartition(self.topic, partition)
                if not self._consumer.assignment() or tp not in self._consumer.assignment():
                    continue
                position = await self._consumer.position(tp)
                task.progress.position = max(task.progress.position, position)
                if position >= task.progress.target:
                    log.info("restore_finished", **task.progress.as_dict())
                    task.progress.stale = task.epochs.stale
                    task.done.set_result(task.progress)
            if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                last_report = time.monotonic()
                for progress in self.progress():
                    log.info("restore_progress", **progress)
