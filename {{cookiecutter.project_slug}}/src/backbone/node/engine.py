"""One node of a service: the composition root that builds its parts and starts them.

Every part is handed what it needs: the Kafka clients (``node.clients``), the processor
and the changelog writer, the partition lifecycle's ports, the queries. The parts report
to the partitions they concern (a gap, a supersession, a rebalance), never back up here.

The parts belong to one generation (a partition count, ``backbone.repartition``); when
the control log says the count changed, the node stops them and starts the next
generation's. The producer, the write gate and the control log outlive generations.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient

from backbone.assignment import BackboneAssignor
from backbone.changelog.writer import ChangelogWriter
from backbone.domain import Domain, Event
from backbone.kafka_connection import kafka_connection
from backbone.membership.removal import leave, remove_dead
from backbone.node.clients import Clients, kafka_clients, make_producer
from backbone.node.generations import NodeGenerations
from backbone.node.liveness import dead_parts
from backbone.node.metrics import register_metrics
from backbone.node.partitions import PartitionSet
from backbone.node.peer_watch import PeerWatch
from backbone.node.peers import GroupPeers
from backbone.node.ports import NodePorts
from backbone.node.positions import Position
from backbone.node.queries import Queries, submit_event
from backbone.node.reads import LocalReads, UnavailableError
from backbone.node.status import assignment_view, node_status
from backbone.node.tls import client_tls
from backbone.processing.apply import BatchApplier
from backbone.processing.processor import Processor
from backbone.repartition.coordinator import Coordinator
from backbone.repartition.gate import Target, WriteGate
from backbone.repartition.plan import Generation
from backbone.settings import EngineSettings
from backbone.snapshot.bootstrap import Bootstrapper, Limits
from backbone.store import PartitionStore
from backbone.store.registry import StoreRegistry
from backbone.topics import Topics, changelog_config, ensure_topics

A = TypeVar("A", bound=msgspec.Struct)
log = structlog.get_logger(__name__)

__all__ = ["Engine"]

# A part that does not stop within this is left behind, so that a node still switches
# generations or shuts down.
STOP_PART_S = 15.0


async def _bounded(part: str, stopping: Awaitable[Any]) -> None:
    try:
        await asyncio.wait_for(stopping, STOP_PART_S)
    except TimeoutError:
        log.error("part_did_not_stop", part=part, waited_s=STOP_PART_S)


@dataclass(frozen=True)
class Parts(Generic[A]):
    """What a started node is made of."""

    clients: Clients
    assignor: BackboneAssignor
    processor: Processor
    bootstrapper: Bootstrapper
    partitions: PartitionSet
    queries: Queries[A]
    watch: PeerWatch


async def _leave(s: EngineSettings, group: str, watch: PeerWatch) -> None:
    generation = watch.routing.routes.generation  # the peers' until they rejoin
    await leave(s, group)
    await watch.nudge(generation)


def _announce(s: EngineSettings, generation: Generation) -> None:
    if not s.internal_token:
        log.warning(
            "internal_token_missing",
            detail="INTERNAL_TOKEN is not set: peers cannot bootstrap from this node, "
            "and queries for partitions owned elsewhere cannot be forwarded",
        )
    log.info(
        "engine_started",
        service=s.service,
        node=s.node_id,
        zone=s.zone,
        partitions=generation.partitions,
        generation=generation.number,
    )


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
        self.applier: BatchApplier[A] = BatchApplier(domain)
        self.generation = Generation(0, settings.partitions)
        self.topics = Topics(settings.service, settings.store)
        self.stores = StoreRegistry(settings.data_dir, settings.store)
        self.generations = NodeGenerations(settings)
        self.parts: Parts[A] | None = None  # None until started, and during a switch
        self.failure: str | None = None
        self._joined = False
        self._processing: asyncio.Task[None] | None = None
        self._handoff: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._coordinator: Coordinator | None = None
        self._switching = asyncio.Lock()
        self.processed_before = 0  # by earlier generations' processors

    @property
    def gate(self) -> WriteGate:
        return self.generations.gate

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("the engine has not started")
        return self._producer

    def _use(self, generation: Generation) -> None:
        s = self.settings
        self.generation = generation
        self.topics = Topics(s.service, s.store, generation.number)
        self.stores = StoreRegistry(s.data_dir, s.store, generation.number)

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
        clients = kafka_clients(s, self.producer, self.topics, assignor, on_gap=lambda _: None)
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
            generation=self.generation.number,
        )
        ports = NodePorts(
            self.stores,
            s.bootstrap_min_lag,
            self.topics.events,
            clients.consumer,
            clients.reader,
            bootstrapper,
            processor,
            history_in_input=self.generation.number == 0,
        )
        partitions = PartitionSet(ports, self.generation.partitions)
        # Gaps and supersessions go straight to the partition they concern.
        clients.reader.on_gap = partitions.changelog_gap
        writer.on_superseded = partitions.superseded
        processor.on_caught_up = partitions.caught_up
        local = LocalReads(
            self.applier,
            partitions,
            clients.reader,
            self.generation,
            s.node_id,
            s.store,
            lambda: self.generations.previous,
            lambda: self.generations.frozen,
        )
        queries = Queries(
            local, clients.routing, clients.http, s.zone, s.internal_url, s.internal_token
        )
        group = self.topics.group
        watch = PeerWatch(clients, s, lambda endpoint: remove_dead(s, group, endpoint))
        return Parts(clients, assignor, processor, bootstrapper, partitions, queries, watch)

    async def start(self) -> None:
        s = self.settings
        producer = self._producer = make_producer(s)
        await producer.start()
        self._use(await self.generations.start(producer))
        self.gate.resume(
            Target(self.topics.events, self.generation.partitions, self.generation.number)
        )
        for leftover in ("incoming", "checkpoints"):
            # Half-received or half-served checkpoints of a process that was killed.
            shutil.rmtree(s.data_dir / leftover, ignore_errors=True)
        await self._start_parts()
        register_metrics(self)
        assert self.generations.control is not None
        self._coordinator = Coordinator(self, self.generations.control)
        self._coordinator.start()
        _announce(s, self.generation)

    async def _start_parts(self) -> None:
        parts = self._compose()
        admin = AIOKafkaAdminClient(**kafka_connection(self.settings).kwargs())
        await admin.start()
        try:
            await ensure_topics(
                admin,
                self.topics,
                self.generation.partitions,
                self.settings.replication_factor,
                changelog_config(
                    self.settings.changelog_retention_ms,
                    self.settings.changelog_retention_bytes,
                    self.settings.changelog_segment_ms,
                ),
            )
        finally:
            await admin.close()
        parts.partitions.scan_disk()
        clients = parts.clients
        await clients.reader.start()
        await clients.routing.start()
        await clients.consumer.start()
        clients.consumer.subscribe([self.topics.events], listener=_Rebalance(self))
        self._joined = False
        self.parts = parts
        self._processing = asyncio.create_task(self._process(parts), name="processor")
        parts.watch.start()

    async def _process(self, parts: Parts[A]) -> None:
        try:
            await parts.processor.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            log.exception("processor_failed")
            raise

    def hand_off(self) -> asyncio.Task[None]:
        """On SIGTERM, while the HTTP servers drain: commit, stop processing and leave the
        group, so that standbys take over at once. ``stop`` waits for it."""
        if self._handoff is None:
            log.info("engine_handing_off")
            self._handoff = asyncio.create_task(self._hand_off(), name="handoff")
        return self._handoff

    async def _hand_off(self) -> None:
        if self._coordinator is not None:
            await self._coordinator.stop()  # first: it may start parts of a generation
        await self._stop_parts(leave_group=self.settings.leave_group_on_stop)

    async def stop(self) -> None:
        await self.hand_off()
        await self._hand_off()  # again: a SIGTERM while starting came before the parts
        await self.generations.stop()
        if self._producer is not None:
            await self._producer.stop()
        log.info("engine_stopped")

    async def _stop_parts(self, leave_group: bool = False) -> None:
        parts = self.parts
        if parts is None:
            return
        clients = parts.clients
        await parts.watch.stop()
        async with parts.processor.idle():  # the batch in flight finishes and commits first
            if self._processing is not None:
                self._processing.cancel()
                await asyncio.gather(self._processing, return_exceptions=True)
            held = list(parts.partitions.held.values())
            parts.partitions.close_all()
            await _bounded("partitions", asyncio.gather(*(p.wait() for p in held)))
        # Outside the lock: stopping mid-join calls the revoke listener, which takes it.
        self.parts = None
        await _bounded("consumer", clients.consumer.stop())
        if leave_group:  # a static member does not leave by itself: its standbys take over now
            await _bounded("group leave", _leave(self.settings, self.topics.group, parts.watch))
        self.processed_before += parts.processor.processed
        await _bounded("changelog reader", clients.reader.stop())
        await _bounded("routing", clients.routing.stop())
        await clients.http.close()
        self.stores.close_all()

    async def switch(self, generation: Generation, drained: dict[int, int]) -> None:
        """Stop this generation's parts, start those of ``generation``; the old stores
        (``drained``: their changelog ends) answer GETs for a while (``get_frozen``)."""
        async with self._switching:
            if generation == self.generation:
                return
            old, old_root = self.generation, self.stores.root
            log.info("generation_switch", source=old.number, target=generation.number)
            await self._stop_parts()
            self.generations.freeze(old_root, old.partitions, drained)
            self._use(generation)
            try:
                await self._start_parts()
            except BaseException:
                self._use(old)  # so that the next attempt switches again
                raise
            log.info(
                "generation_switched",
                generation=generation.number,
                partitions=generation.partitions,
            )

    # --- rebalance -------------------------------------------------------------------
    async def on_revoked(self, partitions: set[int]) -> None:
        parts = self.parts
        if parts is None:
            return  # these parts are stopping: they close every partition themselves
        self._joined = False  # not ready until the rebalance ends: it holds nothing meanwhile
        async with parts.processor.idle():  # the batch in flight finishes and commits first
            parts.partitions.revoke(partitions)

    async def on_assigned(self, partitions: set[int]) -> None:
        parts = self.parts
        if parts is None:
            return
        self._joined = True
        standbys = set(parts.assignor.standbys) - partitions
        tps = [TopicPartition(self.topics.events, p) for p in partitions]
        if tps:
            parts.clients.consumer.pause(*tps)  # each resumes once its partition is active
        parts.partitions.assign(partitions, standbys)
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

    @property
    def queries(self) -> Queries[A]:
        if self.parts is None:
            raise UnavailableError("this node is switching generations")
        return self.parts.queries

    async def submit(self, aggregate_id: str, event: Event) -> Position:
        return await submit_event(self.applier, self.gate, self.producer, aggregate_id, event)

    def repartition_status(self) -> dict[str, Any]:
        coordinator = self._coordinator
        return self.generations.status(None if coordinator is None else coordinator.failure)

    def accept_loss(self, partition: int) -> dict[str, Any]:
        return self._started().partitions.accept_loss(partition, self.settings.node_id)

    def status(self) -> dict[str, Any]:
        return node_status(self, self.parts, self._joined, self.liveness())

    def liveness(self) -> list[str]:
        """Why this node is dead: a task of its parts ended; empty while it lives."""
        return dead_parts(self.parts, self._processing)

    def assignment_view(self) -> dict[str, Any]:
        return assignment_view(self, self._started())
