"""Reads and writes of one aggregate: served from a local active store, forwarded to the
node that owns the key, or submitted to the events topic."""

from __future__ import annotations

from typing import Generic, TypeVar
from urllib.parse import quote

import httpx
import msgspec
import structlog
from aiokafka import AIOKafkaProducer
from opentelemetry import propagate, trace

from backbone.domain import Event
from backbone.node.partitions import PartitionSet
from backbone.node.routing import RoutingTable
from backbone.partitioning import partition_for
from backbone.processing.apply import BatchApplier
from backbone.repartition.gate import WriteGate

A = TypeVar("A", bound=msgspec.Struct)
log = structlog.get_logger(__name__)
tracer = trace.get_tracer("backbone.node.queries")

FORWARDED_HEADER = "x-backbone-forwarded-by"


class NotOwnedError(LookupError):
    """The partition of this key is not active on this node."""


class Queries(Generic[A]):
    def __init__(
        self,
        applier: BatchApplier[A],
        partitions: PartitionSet,
        count: int,
        routing: RoutingTable,
        http: httpx.AsyncClient,
        node_id: str,
        internal_url: str,
        token: str,
    ) -> None:
        self.applier = applier
        self.partitions = partitions
        self.count = count
        self.routing = routing
        self.http = http
        self.node_id = node_id
        self.internal_url = internal_url
        self.token = token

    def partition_of(self, aggregate_id: str) -> int:
        return partition_for(aggregate_id.encode(), self.count)

    def get_local(self, aggregate_id: str) -> A | None:
        """The aggregate from the local store; NotOwnedError when this node lacks it."""
        partition = self.partition_of(aggregate_id)
        store = self.partitions.active_store(partition)
        if store is None:
            raise NotOwnedError(f"partition {partition} is not active on this node")
        raw = store.get(aggregate_id.encode())
        if raw is None:
            return None
        _, aggregate = self.applier.aggregates.decode(raw)
        return aggregate

    async def forward_get(self, aggregate_id: str) -> tuple[int, bytes] | None:
        """Ask the node that owns the key; None when no other node is known to own it."""
        owner = self.routing.owner(self.partition_of(aggregate_id))
        if owner is None or owner.endpoint == self.internal_url:
            self.routing.refresh_soon()
            return None
        try:
            response = await self.http.get(
                f"{owner.endpoint}/internal/aggregates/{quote(aggregate_id, safe='')}",
                headers={"authorization": f"Bearer {self.token}", FORWARDED_HEADER: self.node_id},
            )
        except httpx.HTTPError as exc:
            log.warning("forward_failed", owner=owner.endpoint, error=str(exc))
            self.routing.refresh_soon()
            return None
        if response.status_code == 503:
            self.routing.refresh_soon()  # the owner moved since the last refresh
        return response.status_code, response.content


async def submit_event(
    applier: BatchApplier[A],
    gate: WriteGate,
    producer: AIOKafkaProducer,
    aggregate_id: str,
    event: Event,
) -> tuple[int, int]:
    """Produce ``event`` for ``aggregate_id`` to the generation's input that the write gate
    names; returns (partition, offset) once acked. WritesPausedError while it is paused."""
    value, headers = applier.events.encode(event)
    key = aggregate_id.encode()
    async with gate.writing() as target:
        partition = partition_for(key, target.partitions)
        with tracer.start_as_current_span(
            f"send {target.topic}",
            kind=trace.SpanKind.PRODUCER,
            attributes={"messaging.destination.partition.id": str(partition)},
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            headers.extend((k, v.encode()) for k, v in carrier.items())
            metadata = await producer.send_and_wait(
                target.topic, value, key=key, partition=partition, headers=headers
            )
            log.info(
                "event_accepted",
                aggregate_id=aggregate_id,
                partition=metadata.partition,
                offset=metadata.offset,
            )
    return metadata.partition, metadata.offset
