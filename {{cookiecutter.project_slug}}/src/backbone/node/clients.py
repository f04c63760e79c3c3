"""The Kafka and HTTP clients of one node, built in one place with their tuning."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from backbone.assignment import BackboneAssignor
from backbone.changelog.reader import ChangelogReader
from backbone.kafka_connection import kafka_connection
from backbone.membership.removal import instance_id
from backbone.node.routing import RoutingTable, ViewPublisher
from backbone.node.tls import client_tls
from backbone.settings import EngineSettings
from backbone.topics import Topics


@dataclass(frozen=True)
class Clients:
    producer: AIOKafkaProducer
    consumer: AIOKafkaConsumer
    reader: ChangelogReader
    routing: RoutingTable
    http: aiohttp.ClientSession  # to peers' internal APIs: forwarded reads


def make_producer(settings: EngineSettings) -> AIOKafkaProducer:
    """The node's producer: it outlives a generation, so that writes go on while the
    partition count changes."""
    return AIOKafkaProducer(
        **kafka_connection(settings).kwargs(),
        client_id=f"{settings.service}-{settings.node_id}",
        acks="all",
        enable_idempotence=True,
        # 2 ms, not 0: under load a request carries more records, for less CPU per POST
        # (wrk at c=64 on one node, alternating, 3 pairs: more POSTs/s in each); a lone POST
        # waits for it (c=1: p50 about 3.4 ms against 0.8 ms).
        linger_ms=2,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
    )


def group_generation(consumer: AIOKafkaConsumer) -> int:
    """The Kafka group generation ``consumer`` has joined, -1 while it has none. aiokafka
    (0.x) sets it from the JoinGroup answer, before the leader's ``assign`` runs."""
    coordinator = getattr(consumer, "_coordinator", None)
    generation = getattr(coordinator, "generation", -1)
    return generation if isinstance(generation, int) else -1


def request_rejoin(consumer: AIOKafkaConsumer) -> None:
    """Make ``consumer`` join its group again (with its current metadata)."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is not None:
        coordinator.request_rejoin()


def kafka_clients(
    settings: EngineSettings,
    producer: AIOKafkaProducer,
    topics: Topics,
    assignor: BackboneAssignor,
    on_gap: Callable[[int], None],
) -> Clients:
    """Call inside the running event loop: aiokafka binds its clients to it.

    When this node leads the group, ``assignor`` publishes the routing view of each plan
    through ``producer`` to the routing topic; every node's routing table follows it."""
    client_id = f"{settings.service}-{settings.node_id}"
    tls = client_tls(settings)
    kafka = kafka_connection(settings)
    consumer = AIOKafkaConsumer(
        **kafka.kwargs(),
        client_id=client_id,
        group_id=topics.group,
        # Static membership: a restarted node takes its partitions back without a
        # rebalance of the whole group.
        group_instance_id=instance_id(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        # Large per partition: a batch then holds many events of few partitions, so more
        # of them fold into one changelog record per key (bench/throughput.py: 155k
        # instead of 245k changelog records for 1M events, 4.6-6.0 instead of 5.8-8.1 µs
        # of CPU per event, against 4 MiB in alternating runs).
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
        session_timeout_ms=settings.session_timeout_ms,
        # Survivors learn of a rebalance at their next heartbeat: keep it short.
        heartbeat_interval_ms=max(settings.session_timeout_ms // 12, 100),
        partition_assignment_strategy=(assignor,),
    )
    assignor.publish = ViewPublisher(producer, topics.routing, topics.group)
    assignor.group_generation = lambda: group_generation(consumer)
    return Clients(
        producer=producer,
        consumer=consumer,
        reader=ChangelogReader(kafka, topics.changelog, client_id, on_gap),
        routing=RoutingTable(
            kafka,
            topics.group,
            topics.routing,
            local_generation=lambda: group_generation(consumer),
            self_endpoint=settings.internal_url,
            rejoin=lambda: request_rejoin(consumer),
        ),
        # aiohttp, not httpx: a forwarded read cost the forwarding node about 1 ms of CPU
        # in httpx, 0.15 ms in aiohttp.
        http=aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls if tls else True, limit=256),
            timeout=aiohttp.ClientTimeout(total=10.0),
        ),
    )
