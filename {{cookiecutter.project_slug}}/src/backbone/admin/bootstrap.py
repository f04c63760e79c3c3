"""``<service> bootstrap``: copy a partition's store from a peer while the node is stopped."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from backbone.admin.repartition import current_generation
from backbone.kafka_connection import kafka_connection
from backbone.node.peers import GroupPeers
from backbone.node.routing import RoutingTable
from backbone.node.tls import client_tls
from backbone.settings import EngineSettings
from backbone.snapshot.bootstrap import Bootstrapper, FixedPeers, Limits, Peers
from backbone.snapshot.checkpoint import Manifest
from backbone.store.registry import StoreRegistry
from backbone.topics import Topics


async def bootstrap_offline(
    settings: EngineSettings,
    partition: int,
    sources: Sequence[str] = (),
    deadline_s: float | None = None,
) -> Manifest:
    """``<service> bootstrap``: replace a stopped node's store of ``partition`` by a peer's
    checkpoint; the node tails the changelog from there when it starts. A store that
    RocksDB cannot open is quarantined first."""
    generation = await current_generation(settings)
    count = generation.partitions
    if not 0 <= partition < count:
        raise ValueError(f"partition {partition} does not exist: use 0..{count - 1}")
    stores = StoreRegistry(settings.data_dir, settings.store, generation.number)
    stores.open(partition)  # StoreLockedError while the node runs: it must be stopped first
    stores.close(partition)
    topics = Topics(settings.service, settings.store, generation.number)
    kafka = kafka_connection(settings)
    consumer = AIOKafkaConsumer(**kafka.kwargs())
    routing = RoutingTable(kafka, topics.group, topics.routing)
    await consumer.start()
    await routing.start()
    try:
        tp = TopicPartition(topics.changelog, partition)
        begin = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        peers: Peers = (
            FixedPeers(sources)
            if sources
            else GroupPeers(routing, settings.zone, settings.internal_url)
        )
        limits = Limits.from_settings(settings)
        if deadline_s is not None:
            limits = Limits(deadline_s, limits.min_bytes_per_s, limits.stall_window_s)

        async def current_end(_: int) -> int:
            return int((await consumer.end_offsets([tp]))[tp])

        bootstrapper = Bootstrapper(
            peers,
            client_tls(settings),
            settings.internal_token,
            settings.data_dir / "incoming",
            limits,
            changelog_end=current_end,
            generation=generation.number,
        )
        return await bootstrapper.bootstrap(partition, stores.path(partition), begin, end)
    finally:
        await routing.stop()
        await consumer.stop()
