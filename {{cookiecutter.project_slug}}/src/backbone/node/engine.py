"""One node of a service: the composition root that builds its parts and starts them.

Every part is handed what it needs: the Kafka clients (``node.clients``), the processor
and the changelog writer, the partition lifecycle's ports, the queries. The parts report
to the partitions they concern (a gap, a supersession, a rebalance), never back up here.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import structlog
from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient

from backbone.assignment import BackboneAssignor
from backbone.changelog.writer import ChangelogWriter
from backbone.domain import Domain, Event
from backbone.node.clients import Clients, kafka_clients
from backbone.node.metrics import register_metrics
from backbone.node.partitions import PartitionSet
from backbone.node.peers import GroupPeers
from backbone.node.ports import NodePorts
from backbone.node.queries import NotOwnedError, Queries
from backbone.node.status import assignment_view, node_status
from backbone.node.tls import client_tls
from backbone.processing.apply import BatchApplier
from backbone.processing.processor import Processor
from backbone.settings import EngineSettings
from backbone.snapshot.bootstrap import Bootstrapper, Limits
from backbone.store import PartitionStore
from backbone.store.registry import StoreRegistry
from backbone.topics import Topics, changelog_config, ensure_topics

A = TypeVar("A", bound=msgspec.Struct)
log = structlog.get_logger(__name__)

__all__ = ["Engine", "NotOwnedError"]


@dataclass(frozen=True)
class Parts(Generic[A]):
    """What a started node is made of."""

    clients: Clients
    assignor: BackboneAssignor
    processor: Processor
    bootstrapper: Bootstrapper
    partitions: PartitionSet
    queries: Queries[A]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, engine: Engine[Any]) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.engine.on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.engine.on_assigned({tp.partition for tp in assigned})


class Engine(Generic[A]):
    def __init__(self, settings: EngineSettings, domain: Domain[A]) -> None:
        self.settings = settings
        self.domain = domain
        self.topics = Topics(settings.service, settings.store)
        self.applier: BatchApplier[A] = BatchApplier(domain)
        self.stores = StoreRegistry(settings.data_dir, settings.store)
        self.parts: Parts[A] | None = None  # None until started
        self.failure: str | None = None
        self._joined = False
        self._processing: asyncio.Task[None] | None = None

    def _compose(self) -> Parts[A]:
        s = self.settings
        partitions: PartitionSet | None = None

        def local_state() -> tuple[dict[int, int], frozenset[int], frozenset[int]]:
            assert partitions is not None
            return partitions.local_state()

        assignor = BackboneAssignor(
            node=s.host or s.node_id,
            zone=s.zone,
            endpoint=s.internal_url,
            standby_replicas=s.standby_replicas,
            local_state=local_state,
            acceptable_lag=s.acceptable_lag,
        )
        clients = kafka_clients(s, self.topics, assignor, on_gap=lambda _: None)
        writer = ChangelogWriter(
            clients.producer, self.topics.changelog, clients.reader, on_superseded=lambda _: None
        )
        processor = Processor(
            clients.consumer,
            clients.producer,
            self.stores,
            self.applier,
            self.topics,
            writer,
            s.max_batch_records,
        )
        bootstrapper = Bootstrapper(
            GroupPeers(clients.routing, s.zone, s.internal_url),
            client_tls(s),
            s.internal_token,
            s.data_dir / "incoming",
            Limits.from_settings(s),
            changelog_end=clients.reader.end_offset,
        )
        ports = NodePorts(
            self.stores,
            s.bootstrap_min_lag,
            self.topics.events,
            clients.consumer,
            clients.reader,
            bootstrapper,
            processor,
        )
        partitions = PartitionSet(ports, s.partitions)
        # Gaps and supersessions go straight to the partition they concern.
        clients.reader.on_gap = partitions.changelog_gap
        writer.on_superseded = partitions.superseded
        queries = Queries(
            self.applier,
            partitions,
            s.partitions,
            self.topics.events,
            clients.producer,
            clients.routing,
            clients.http,
            s.node_id,
            s.internal_url,
            s.internal_token,
        )
        return Parts(clients, assignor, processor, bootstrapper, partitions, queries)

    async def start(self) -> None:
        parts = self.parts = self._compose()
        register_metrics(parts)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.brokers)
        await admin.start()
        try:
            await ensure_topics(
                admin,
                self.topics,
                self.settings.partitions,
                self.settings.replication_factor,
                changelog_config(
                    self.settings.changelog_retention_ms,
                    self.settings.changelog_retention_bytes,
                    self.settings.changelog_segment_ms,
                ),
            )
        finally:
            await admin.close()
        for leftover in ("incoming", "checkpoints"):
            # Half-received or half-served checkpoints of a process that was killed.
            shutil.rmtree(self.settings.data_dir / leftover, ignore_errors=True)
        parts.partitions.scan_disk()
        clients = parts.clients
        await clients.producer.start()
        await clients.reader.start()
        await clients.routing.start()
        await clients.consumer.start()
        clients.consumer.subscribe([self.topics.events], listener=_Rebalance(self))
        self._processing = asyncio.create_task(self._process(parts), name="processor")
        if not self.settings.internal_token:
            log.warning(
                "internal_token_missing",
                detail="INTERNAL_TOKEN is not set: peers cannot bootstrap from this node, "
                "and queries for partitions owned elsewhere cannot be forwarded",
            )
        log.info(
            "engine_started",
            service=self.settings.service,
            node=self.settings.node_id,
            zone=self.settings.zone,
            partitions=self.settings.partitions,
        )

    async def _process(self, parts: Parts[A]) -> None:
        try:
            await parts.processor.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            log.exception("processor_failed")
            raise

    async def stop(self) -> None:
        parts = self.parts
        if parts is None:
            return
        clients = parts.clients
        async with parts.processor.lock:  # the batch in flight finishes and commits first
            if self._processing is not None:
                self._processing.cancel()
                await asyncio.gather(self._processing, return_exceptions=True)
            held = list(parts.partitions.held.values())
            parts.partitions.close_all()
            await asyncio.gather(*(p.wait() for p in held))
            await clients.consumer.stop()
        await clients.reader.stop()
        await clients.routing.stop()
        await clients.http.aclose()
        await clients.producer.stop()
        self.stores.close_all()
        log.info("engine_stopped")

    # --- rebalance -------------------------------------------------------------------
    async def on_revoked(self, partitions: set[int]) -> None:
        parts = self._started()
        async with parts.processor.lock:  # let the batch in flight finish and commit
            parts.partitions.revoke(partitions)

    async def on_assigned(self, partitions: set[int]) -> None:
        parts = self._started()
        self._joined = True
        standbys = set(parts.assignor.standbys) - partitions
        tps = [TopicPartition(self.topics.events, p) for p in partitions]
        if tps:
            parts.clients.consumer.pause(*tps)  # each resumes once its partition is active
        parts.partitions.assign(partitions, standbys)
        parts.clients.routing.refresh_soon()
        log.info(
            "partitions_assigned",
            active=sorted(partitions),
            standby=sorted(standbys),
            unmet=parts.assignor.unmet,
        )

    def _started(self) -> Parts[A]:
        if self.parts is None:
            raise RuntimeError("the engine has not started")
        return self.parts

    # --- what the HTTP APIs use ------------------------------------------------------
    def held_store(self, partition: int) -> PartitionStore | None:
        """The store of a partition this node serves checkpoints of (active or standby)."""
        return None if self.parts is None else self.parts.partitions.serving(partition)

    async def holds_usable_copy(self, partition: int) -> bool:
        """Whether this node has a store of ``partition`` that the changelog completes,
        served or not (a peer that asks must not give up on it while it restores)."""
        if self.parts is None:
            return False
        offset = self.parts.partitions.local_offset(partition)
        if not offset:
            return False
        begin, _ = await self.parts.clients.reader.bounds(partition)
        return offset >= begin

    def get_local(self, aggregate_id: str) -> A | None:
        if self.parts is None:
            raise NotOwnedError("this node is starting")
        return self.parts.queries.get_local(aggregate_id)

    async def forward_get(self, aggregate_id: str) -> tuple[int, bytes] | None:
        return await self._started().queries.forward_get(aggregate_id)

    async def submit(self, aggregate_id: str, event: Event) -> tuple[int, int]:
        return await self._started().queries.submit(aggregate_id, event)

    def accept_loss(self, partition: int) -> dict[str, Any]:
        return self._started().partitions.accept_loss(partition, self.settings.node_id)

    def status(self) -> dict[str, Any]:
        return node_status(self, self.parts, self._joined)

    def assignment_view(self) -> dict[str, Any]:
        return assignment_view(self, self._started())
