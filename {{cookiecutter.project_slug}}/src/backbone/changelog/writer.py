"""An active node's changelog writes, guarded by writer epochs (backbone.changelog.epochs).

It claims a partition at takeover, tags every record with its epoch, and checks that only
its own records lie between its store's changelog offset and what it just wrote: it reports
itself superseded on a newer epoch, and writes its state again after an older one's records.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from backbone.changelog.epochs import (
    CLAIM_KEY,
    claim_record,
    epoch_header,
    foreign_ranges,
    record_epoch,
)
from backbone.changelog.reader import ChangelogReader
from backbone.store import PartitionStore

log = structlog.get_logger(__name__)

Record = tuple[bytes, bytes | None, list[tuple[str, bytes]]]


@dataclass(frozen=True)
class Sent:
    """Where records went: the half-open offset range of each record batch, and the end."""

    ranges: list[tuple[int, int]]
    end: int


async def send_to_partition(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    records: Iterable[Record],
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
        batch.close()  # complete: sent without lingering
        pending.append(await producer.send_batch(batch, topic, partition=partition))
        counts.append(count)
    ranges = []
    for future, n in zip(pending, counts, strict=True):
        metadata = await future
        ranges.append((metadata.offset, metadata.offset + n))
    return Sent(ranges, ranges[-1][1] if ranges else -1)


class ChangelogWriter:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        reader: ChangelogReader,
        on_superseded: Callable[[int], None],
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.reader = reader
        self.on_superseded = on_superseded
        self.epochs: dict[int, int] = {}  # the epoch this node claimed, per active partition

    async def claim(self, store: PartitionStore) -> bool:
        """Take the changelog partition of ``store`` over with a new epoch. False when a
        record landed between the end the store was restored to and the claim: the caller
        restores again (reading it) and claims again."""
        meta = store.meta()
        epoch = meta.writer_epoch + 1
        sent = await send_to_partition(
            self.producer, self.topic, store.partition, [claim_record(epoch)]
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

    async def publish(self, partition: int, records: Iterable[Record]) -> Sent:
        """Send records (at least one), tagged with this node's epoch; wait for the acks.
        Each record's header list gets the epoch appended."""
        epoch = epoch_header(self.epochs.get(partition, 0))

        def tagged() -> Iterator[Record]:
            for record in records:
                record[2].append(epoch)  # the caller's fresh list: no copy per record
                yield record

        return await send_to_partition(self.producer, self.topic, partition, tagged())

    async def verify(
        self, store: PartitionStore, sent: Sent, dirty: Mapping[bytes, bytes | None]
    ) -> int | None:
        """The store's new changelog offset, once only this writer's records lie before it;
        None if a newer writer got in between."""
        foreign = foreign_ranges(store.meta().changelog_offset, sent.ranges)
        if not foreign:
            return sent.end
        return await self._settle(store, foreign, sent.end, dirty)

    async def check_tails(self, stores: Mapping[int, PartitionStore]) -> None:
        """Records at the end of idle partitions' changelogs that this node did not write."""
        ends = await self.reader.end_offsets(set(stores))
        for partition, end in ends.items():
            store = stores[partition]
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
        sent = await self.publish(
            store.partition,
            ((k, dirty[k] if k in dirty else store.get(k), []) for k in keys),
        )
        log.warning("stale_changelog_records_superseded", partition=store.partition, keys=len(keys))
        return sent

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
                self.epochs.pop(partition, None)
                self.on_superseded(partition)
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
