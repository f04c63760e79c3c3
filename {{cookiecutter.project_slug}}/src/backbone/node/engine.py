"""One node of a service: Kafka clients, stores, restore and processing, started together."""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation

from backbone.assignment import BackboneAssignor
from backbone.changelog.reader import ChangelogMismatchError, ChangelogReader
from backbone.codec import NO_OFFSET
from backbone.domain import Domain, Event
from backbone.http.tls import client_tls
from backbone.node.peers import GroupPeers
from backbone.node.routing import RoutingTable
from backbone.partitioning import partition_for
from backbone.processing.apply import BatchApplier
from backbone.processing.processor import Processor
from backbone.settings import EngineSettings
from backbone.snapshot.bootstrap import Bootstrapper, Limits, NoSourceError
from backbone.store import PartitionStore
from backbone.store.registry import StoreRegistry
from backbone.topics import Topics, changelog_config, ensure_topics

A = TypeVar("A", bound=msgspec.Struct)
log = structlog.get_logger(__name__)
tracer = trace.get_tracer("backbone.node.engine")

RESTORE_RETRY_S = 2.0
CLAIM_ATTEMPTS = 5
# How often a partition whose every copy is gone looks for one again (a holder may return).
INCOMPLETE_RETRY_S = 15.0


@dataclass(frozen=True, slots=True)
class Missing:
    """Changelog records a store needed that retention deleted: [since, begin)."""

    since: int
    begin: int


@dataclass(slots=True)
class Incomplete:
    """An active partition whose every copy is lost and whose history is partly deleted:
    never served as ready until an operator accepts the loss (invariant 8)."""

    partition: int
    changelog: Missing
    events_begin: int  # input offsets [0, events_begin) are deleted
    since: float = field(default_factory=time.time)
    accepted: asyncio.Event = field(default_factory=asyncio.Event)

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "missing_changelog_offsets": [self.changelog.since, self.changelog.begin],
            "missing_event_offsets": [0, self.events_begin],
            "since": round(self.since, 3),
            "accept_with": f"accept-loss --partition {self.partition}",
        }


class NotOwnedError(LookupError):
    """The partition of this key is not active on this node."""


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
        self.assigned: set[int] = set()
        self.standbys: set[int] = set()
        # Changelog offsets of stores on local disk, reported to the group leader so that a
        # partition moves preferably to a node that already has its state.
        self._known_offsets: dict[int, int] = {}
        self._restores: dict[int, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._joined = False
        self.failure: str | None = None
        self.producer: AIOKafkaProducer
        self.consumer: AIOKafkaConsumer
        self.reader: ChangelogReader
        self.processor: Processor
        self.assignor: BackboneAssignor
        self.routing: RoutingTable
        self._http: httpx.AsyncClient
        self.bootstrapper: Bootstrapper
        self._standby_tasks: dict[int, asyncio.Task[None]] = {}
        self.incomplete: dict[int, Incomplete] = {}

    def _create_clients(self) -> None:
        # aiokafka clients must be created inside the running event loop.
        self.assignor = BackboneAssignor(
            node=self.settings.host or self.settings.node_id,
            zone=self.settings.zone,
            endpoint=self.settings.internal_url,
            standby_replicas=self.settings.standby_replicas,
            local_state=self._local_state,
            acceptable_lag=self.settings.acceptable_lag,
        )
        self.routing = RoutingTable(self.settings.brokers, self.topics.group)
        tls = client_tls(self.settings)
        self._http = httpx.AsyncClient(timeout=10.0, verify=tls if tls else True)
        self.bootstrapper = Bootstrapper(
            GroupPeers(self.routing, self.settings.zone, self.settings.internal_url),
            tls,
            self.settings.internal_token,
            self.settings.data_dir / "incoming",
            Limits.from_settings(self.settings),
        )
        client_id = f"{self.settings.service}-{self.settings.node_id}"
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.brokers,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            max_batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
        )
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.brokers,
            client_id=client_id,
            group_id=self.topics.group,
            # Static membership: a restarted node takes its partitions back without a
            # rebalance of the whole group.
            group_instance_id=f"{self.settings.service}-{self.settings.node_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
            session_timeout_ms=self.settings.session_timeout_ms,
            # Survivors learn of a rebalance at their next heartbeat: keep it short.
            heartbeat_interval_ms=max(self.settings.session_timeout_ms // 12, 100),
            partition_assignment_strategy=(self.assignor,),
        )
        self.reader = ChangelogReader(
            self.settings.brokers, self.topics.changelog, client_id, self._on_gap
        )
        self.processor = Processor(
            self.consumer,
            self.producer,
            self.stores,
            self.applier,
            self.topics,
            self.reader,
            self.settings.max_batch_records,
            on_fenced=self._on_fenced,
        )

    def _register_metrics(self) -> None:
        meter = metrics.get_meter("backbone")

        def unmet(_: CallbackOptions) -> list[Observation]:
            return [Observation(len(self.assignor.unmet))]

        def standby_lag(_: CallbackOptions) -> list[Observation]:
            return [
                Observation(lag, {"partition": p})
                for p, lag in self.reader.standby_lag().items()
                if lag is not None
            ]

        def processed(_: CallbackOptions) -> list[Observation]:
            return [Observation(self.processor.processed)]

        meter.create_observable_gauge(
            "backbone.assignment.unmet_constraints",
            [unmet],
            description="assignment constraints the group leader could not meet",
        )
        meter.create_observable_gauge(
            "backbone.standby.lag", [standby_lag], description="records behind the changelog"
        )
        meter.create_observable_counter(
            "backbone.events.processed", [processed], description="events applied"
        )

        def incomplete(_: CallbackOptions) -> list[Observation]:
            return [Observation(len(self.incomplete))]

        meter.create_observable_gauge(
            "backbone.partitions.incomplete",
            [incomplete],
            description="active partitions whose every copy was lost, waiting for accept-loss",
        )

    async def start(self) -> None:
        self._create_clients()
        self._register_metrics()
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
        self._known_offsets = self._scan_disk()
        await self.producer.start()
        await self.reader.start()
        await self.routing.start()
        await self.consumer.start()
        self.consumer.subscribe([self.topics.events], listener=_Rebalance(self))
        self._tasks.append(asyncio.create_task(self._process(), name="processor"))
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

    async def _process(self) -> None:
        try:
            await self.processor.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            log.exception("processor_failed")
            raise

    async def stop(self) -> None:
        if not hasattr(self, "processor"):
            return
        async with self.processor.lock:  # the batch in flight finishes and commits first
            tasks = [*self._tasks, *self._restores.values(), *self._standby_tasks.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.consumer.stop()
        await self.reader.stop()
        await self.routing.stop()
        await self._http.aclose()
        await self.producer.stop()
        self.stores.close_all()
        log.info("engine_stopped")

    # --- rebalance -------------------------------------------------------------------
    async def on_revoked(self, partitions: set[int]) -> None:
        async with self.processor.lock:  # let the batch in flight finish and commit
            for p in partitions:
                task = self._restores.pop(p, None)
                if task is not None:
                    task.cancel()
                self.processor.ready.discard(p)
                self.processor.quiet.pop(p, None)
                self.incomplete.pop(p, None)
            self.assigned -= partitions

    async def on_assigned(self, partitions: set[int]) -> None:
        self._joined = True
        standbys = set(self.assignor.standbys) - partitions
        for p in (self.reader.tailing | set(self._standby_tasks)) - standbys:
            task = self._standby_tasks.pop(p, None)
            if task is not None:
                task.cancel()
            self.reader.remove(p)
        for p in self.stores.partitions - partitions - standbys:
            self._close(p)  # stores given back in this rebalance stay open
        self.assigned = set(partitions)
        self.standbys = standbys
        tps = [TopicPartition(self.topics.events, p) for p in partitions]
        if tps:
            self.consumer.pause(*tps)
        for p in sorted(partitions):
            self._restores[p] = asyncio.create_task(self._restore(p), name=f"restore-{p}")
        for p in sorted(standbys - self.reader.tailing - set(self._standby_tasks)):
            self._standby_tasks[p] = asyncio.create_task(self._standby(p), name=f"standby-{p}")
        self.routing.refresh_soon()
        log.info(
            "partitions_assigned",
            active=sorted(partitions),
            standby=sorted(standbys),
            unmet=self.assignor.unmet,
        )

    async def _ensure_state(self, partition: int) -> tuple[PartitionStore, Missing | None]:
        """Open the store, bootstrapping it from a peer when it is missing, behind the
        changelog's start, or far behind. Returns the store and, when no copy exists in
        the group and the changelog no longer reaches back to the store, what is missing.

        Raises NoSourceError while a member still holds a copy that no source could serve
        yet: the caller retries, it never rebuilds past an existing copy (invariant 7)."""
        store = self.stores.open(partition)
        begin, end = await self.reader.bounds(partition)
        offset = store.meta().changelog_offset
        log.info("store_checked", partition=partition, offset=offset, begin=begin, end=end)
        if offset < begin:
            reason = f"store at changelog offset {offset} is older than its first offset {begin}"
        elif end - offset > self.settings.bootstrap_min_lag:
            reason = f"store is {end - offset} changelog records behind"
        else:
            return store, None
        log.warning("bootstrap_needed", partition=partition, reason=reason)
        path = self.stores.path(partition)
        self.stores.close(partition)
        try:
            await self.bootstrapper.bootstrap(partition, path, begin, end)
        except NoSourceError as exc:
            if exc.copy_exists:
                self.stores.open(partition)
                raise
            # Far behind but without a gap, the changelog still completes the store.
            gap = offset < begin
            log.error(
                "bootstrap_unavailable",
                partition=partition,
                error=str(exc),
                fallback="rebuild from the events topic" if gap else "changelog replay",
            )
            # A store with a gap is kept: with the input, its fences still count.
            return self.stores.open(partition), Missing(offset, begin) if gap else None
        return self.stores.open(partition), None

    async def _standby(self, partition: int) -> None:
        """Follow the changelog of a standby partition, bootstrapping it first if needed."""
        try:
            while partition in self.standbys:
                try:
                    store, missing = await self._ensure_state(partition)
                except Exception as exc:
                    log.warning("standby_failed_retrying", partition=partition, error=str(exc))
                    await asyncio.sleep(RESTORE_RETRY_S)
                    continue
                if missing is None:
                    self.reader.tail(store)
                    return
                log.error("standby_waiting_for_a_peer", partition=partition)
                await asyncio.sleep(5 * RESTORE_RETRY_S)
        finally:
            self._standby_tasks.pop(partition, None)

    def _on_fenced(self, partition: int) -> None:
        """Another node claimed an active partition of this one: restore and claim again
        while the group gives it here (a rebalance that moves it cancels this)."""
        if partition in self.assigned and partition not in self._restores:
            self._restores[partition] = asyncio.create_task(
                self._restore(partition), name=f"restore-{partition}"
            )

    def _on_gap(self, partition: int) -> None:
        """A standby fell behind the changelog's start: bootstrap it again."""
        if partition in self.standbys and partition not in self._standby_tasks:
            self._standby_tasks[partition] = asyncio.create_task(
                self._standby(partition), name=f"standby-{partition}"
            )

    def held_store(self, partition: int) -> PartitionStore | None:
        """The store of a partition this node serves checkpoints of (active or standby)."""
        if partition in self.processor.ready or partition in self.reader.tailing:
            return self.stores.get(partition)
        return None

    def _close(self, partition: int) -> None:
        store = self.stores.get(partition)
        if store is not None:
            self._known_offsets[partition] = store.meta().changelog_offset
            self.stores.close(partition)

    def _scan_disk(self) -> dict[int, int]:
        offsets: dict[int, int] = {}
        for p in range(self.settings.partitions):
            if self.stores.path(p).exists():
                try:
                    offsets[p] = self.stores.open(p).meta().changelog_offset
                finally:
                    self.stores.close(p)
        return offsets

    def _local_state(self) -> tuple[dict[int, int], frozenset[int], frozenset[int]]:
        offsets = dict(self._known_offsets)
        for p in self.stores.partitions:
            store = self.stores.get(p)
            if store is not None:
                offsets[p] = store.meta().changelog_offset
        return offsets, frozenset(self.assigned), frozenset(self.standbys)

    async def _restore(self, partition: int) -> None:
        tp = TopicPartition(self.topics.events, partition)
        try:
            store, missing = await self._ensure_state(partition)
            rebuild = missing is not None
            if missing is not None:
                store, rebuild = await self._settle_loss(partition, store, missing)
            stale = (await self.reader.restore(store, allow_gap=rebuild)).stale
            for _ in range(CLAIM_ATTEMPTS):
                if await self.processor.claim(store):
                    break
                stale |= (await self.reader.restore(store)).stale  # what landed meanwhile
            else:
                raise RuntimeError(f"partition {partition}: other writers kept claiming it")
            async with self.processor.lock:
                # Records a zombie wrote are skipped by every reader; their keys get this
                # node's state written after them, the record compaction keeps.
                sent = await self.processor.writer.republish(store, stale, {})
                if sent is not None:
                    store.write((), changelog_offset=sent.end)
            committed = await self.consumer.committed(tp) or 0
            if rebuild:
                await self._start_rebuild(store, tp, committed)
            meta = store.meta()
            # Also after a superseded batch, whose input this store never took.
            position = meta.input_offset if rebuild else max(meta.input_offset, committed)
            if meta.outputs_sent > position:
                self.processor.quiet[partition] = meta.outputs_sent
            self.consumer.seek(tp, position)
            if partition in self.assigned:
                self.incomplete.pop(partition, None)
                self.processor.ready.add(partition)
                self.consumer.resume(tp)
        except asyncio.CancelledError:
            raise
        except ChangelogMismatchError as exc:
            # Needs an operator: retrying would fail the same way.
            self.failure = f"partition {partition}: {exc}"
            log.error("restore_refused", partition=partition, error=str(exc))
        except Exception as exc:
            log.warning("restore_failed_retrying", partition=partition, error=str(exc))
            await asyncio.sleep(RESTORE_RETRY_S)
            if partition in self.assigned:
                self._restores[partition] = asyncio.create_task(
                    self._restore(partition), name=f"restore-{partition}"
                )
                return
        self._restores.pop(partition, None)

    async def _settle_loss(
        self, partition: int, store: PartitionStore, missing: Missing
    ) -> tuple[PartitionStore, bool]:
        """No copy of the partition exists and the changelog has a gap before the store.
        If the events topic still starts at 0, rebuilding from it is complete. Otherwise
        the partition waits, reported incomplete, until a copy turns up (bootstrapped as
        usual: returns False) or an operator accepts the loss (returns True: rebuild)."""
        tp = TopicPartition(self.topics.events, partition)
        events_begin = (await self.consumer.beginning_offsets([tp]))[tp]
        if events_begin == 0:
            return store, True
        entry = Incomplete(partition, missing, events_begin)
        self.incomplete[partition] = entry
        while True:
            log.error("partition_incomplete", **entry.as_dict())
            try:
                await asyncio.wait_for(entry.accepted.wait(), INCOMPLETE_RETRY_S)
            except TimeoutError:
                try:
                    store, still = await self._ensure_state(partition)
                except NoSourceError as exc:  # a copy turned up but could not be served yet
                    log.warning("incomplete_copy_unavailable", partition=partition, error=str(exc))
                    continue
                if still is None:
                    log.info("partition_recovered_from_a_copy", partition=partition)
                    return store, False
                continue
            log.warning("loss_accepted", **entry.as_dict())
            return store, True

    async def _start_rebuild(
        self, store: PartitionStore, tp: TopicPartition, committed: int
    ) -> None:
        """Read the input again from its first offset. The fences of the aggregates the
        store and changelog still hold keep this exactly-once; output events and dead
        letters below what was processed before are not sent again. Recorded in the
        store and the group before the first event, so a crash continues the rebuild."""
        begin = (await self.consumer.beginning_offsets([tp]))[tp]
        sent = max(committed, store.meta().input_offset)
        store.write((), input_offset=begin, outputs_sent=sent)
        await self.consumer.commit({tp: begin})
        log.error(
            "rebuilding_from_input",
            partition=tp.partition,
            topic=self.topics.events,
            from_offset=begin,
            outputs_already_sent_below=sent,
        )

    def accept_loss(self, partition: int) -> dict[str, Any]:
        """An operator accepts that the history of an incomplete partition is gone."""
        entry = self.incomplete.get(partition)
        if entry is None:
            raise LookupError(
                f"partition {partition} is not waiting for accept-loss on node "
                f"{self.settings.node_id}: incomplete here are {sorted(self.incomplete)}"
            )
        entry.accepted.set()
        return entry.as_dict()

    # --- queries and commands --------------------------------------------------------
    def partition_of(self, aggregate_id: str) -> int:
        return partition_for(aggregate_id.encode(), self.settings.partitions)

    def get_local(self, aggregate_id: str) -> A | None:
        """The aggregate from the local store; NotOwnedError when this node lacks it."""
        key = aggregate_id.encode()
        partition = self.partition_of(aggregate_id)
        store = self.stores.get(partition)
        if store is None or partition not in self.processor.ready:
            raise NotOwnedError(f"partition {partition} is not active on this node")
        raw = store.get(key)
        if raw is None:
            return None
        offset, aggregate = self.applier.aggregates.decode(raw)
        return None if offset == NO_OFFSET else aggregate

    async def forward_get(self, aggregate_id: str) -> tuple[int, bytes] | None:
        """Ask the node that owns the key; None when no other node is known to own it."""
        owner = self.routing.owner(self.partition_of(aggregate_id))
        if owner is None or owner.endpoint == self.settings.internal_url:
            self.routing.refresh_soon()
            return None
        try:
            response = await self._http.get(
                f"{owner.endpoint}/internal/aggregates/{quote(aggregate_id, safe='')}",
                headers={
                    "authorization": f"Bearer {self.settings.internal_token}",
                    "x-backbone-forwarded-by": self.settings.node_id,
                },
            )
        except httpx.HTTPError as exc:
            log.warning("forward_failed", owner=owner.endpoint, error=str(exc))
            self.routing.refresh_soon()
            return None
        if response.status_code == 503:
            self.routing.refresh_soon()  # the owner moved since the last refresh
        return response.status_code, response.content

    def assignment_view(self) -> dict[str, Any]:
        plan = self.assignor.last_plan
        return {
            "node": self.settings.node_id,
            "zone": self.settings.zone,
            "active": sorted(self.assigned),
            "standby": sorted(self.standbys),
            "standby_lag": self.reader.standby_lag(),
            "unmet": self.assignor.unmet,
            "leader_plan": None
            if plan is None
            else {
                "unmet": plan.unmet,
                "zone_conflicts": plan.zone_conflicts,
                "missing_standbys": plan.missing_standbys,
            },
            "group": self.routing.routes.as_dict(),
        }

    async def submit(self, aggregate_id: str, event: Event) -> tuple[int, int]:
        """Produce ``event`` for ``aggregate_id``; returns (partition, offset) once acked."""
        value, headers = self.applier.events.encode(event)
        key = aggregate_id.encode()
        partition = partition_for(key, self.settings.partitions)
        with tracer.start_as_current_span(
            f"send {self.topics.events}",
            kind=trace.SpanKind.PRODUCER,
            attributes={"messaging.destination.partition.id": str(partition)},
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            headers.extend((k, v.encode()) for k, v in carrier.items())
            metadata = await self.producer.send_and_wait(
                self.topics.events, value, key=key, partition=partition, headers=headers
            )
            log.info(
                "event_accepted",
                aggregate_id=aggregate_id,
                partition=metadata.partition,
                offset=metadata.offset,
            )
        return metadata.partition, metadata.offset

    def status(self) -> dict[str, Any]:
        if not hasattr(self, "processor"):
            return {"ready": False, "node": self.settings.node_id, "starting": True}
        restoring = self.reader.progress()
        ready = (
            self._joined
            and not self._restores
            and self.failure is None
            and self.assigned <= self.processor.ready
        )
        return {
            "ready": ready,
            "node": self.settings.node_id,
            "zone": self.settings.zone,
            "active": sorted(self.processor.ready),
            "assigned": sorted(self.assigned),
            "standby": sorted(self.standbys),
            "standby_lag": self.reader.standby_lag(),
            "restoring": restoring,
            "incomplete": [i.as_dict() for i in self.incomplete.values()],
            "bootstrapping": [p.as_dict() for p in self.bootstrapper.progress.values()],
            "processed": self.processor.processed,
            "dead_letters": self.processor.dead_letters,
            "failure": self.failure,
        }
