"""The partition lifecycle's ports, wired to this node's Kafka clients and processor."""

from __future__ import annotations

from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from backbone.changelog.reader import ChangelogReader
from backbone.processing.processor import Processor
from backbone.snapshot.bootstrap import Bootstrapper
from backbone.store import PartitionStore
from backbone.store.registry import StoreRegistry


class NodePorts:
    def __init__(
        self,
        stores: StoreRegistry,
        bootstrap_min_lag: int,
        events_topic: str,
        consumer: AIOKafkaConsumer,
        reader: ChangelogReader,
        bootstrapper: Bootstrapper,
        processor: Processor,
        history_in_input: bool = True,
    ) -> None:
        self.history_in_input = history_in_input
        self.stores = stores
        self.bootstrap_min_lag = bootstrap_min_lag
        self.events_topic = events_topic
        self.consumer = consumer
        self.reader = reader
        self.bootstrapper = bootstrapper
        self.processor = processor

    def _tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.events_topic, partition)

    async def changelog_bounds(self, partition: int) -> tuple[int, int]:
        return await self.reader.bounds(partition)

    async def restore(self, store: PartitionStore, allow_gap: bool) -> set[bytes]:
        return (await self.reader.restore(store, allow_gap=allow_gap)).stale

    def tail(self, store: PartitionStore) -> None:
        self.reader.tail(store)

    def untail(self, partition: int) -> None:
        self.reader.remove(partition)

    async def bootstrap(self, partition: int, path: Path, begin: int, end: int) -> None:
        await self.bootstrapper.bootstrap(partition, path, begin, end)

    async def claim(self, store: PartitionStore) -> bool:
        return await self.processor.claim(store)

    async def republish(self, store: PartitionStore, stale: set[bytes]) -> None:
        async with self.processor.idle():
            sent = await self.processor.writer.republish(store, stale, {})
            if sent is not None:
                store.write((), changelog_offset=sent.end)

    async def events_begin(self, partition: int) -> int:
        tp = self._tp(partition)
        return int((await self.consumer.beginning_offsets([tp]))[tp])

    async def committed(self, partition: int) -> int:
        return int(await self.consumer.committed(self._tp(partition)) or 0)

    async def commit(self, partition: int, offset: int) -> None:
        await self.consumer.commit({self._tp(partition): offset})

    def activate(self, partition: int, position: int, quiet_until: int | None) -> None:
        tp = self._tp(partition)
        if tp not in self.consumer.assignment():
            return  # revoked while it was being taken over
        if quiet_until is not None:
            self.processor.quiet[partition] = quiet_until
        self.consumer.seek(tp, position)
        self.processor.ready.add(partition)
        self.consumer.resume(tp)

    def deactivate(self, partition: int) -> None:
        self.processor.ready.discard(partition)
        self.processor.quiet.pop(partition, None)
        tp = self._tp(partition)
        if tp in self.consumer.assignment():
            self.consumer.pause(tp)
