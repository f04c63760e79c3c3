"""One node's part in a repartitioning: it follows the control log and does each step
that falls to it. Every step can be done again after a crash, and every decision made
once is the first record of it in the log, so any node can carry the change on.

Steps: requested → every node pauses its writes (paused) → one node records the input's
end offsets (barrier) and writes resume to the new topic → each old partition's active
applies its input up to the barrier (drained) → every node holding a drained copy derives
the new partitions from it (derived) → once each new partition has its copies, one node
records the switch, and every node restarts its engine parts on the new generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import RecordMetadata

from backbone.changelog.epochs import claim_record
from backbone.kafka_connection import KafkaConnection, kafka_connection
from backbone.repartition.control import ControlLog
from backbone.repartition.derive import FIRST_CHANGELOG_OFFSET, derive
from backbone.repartition.faults import fault_point
from backbone.repartition.gate import Target
from backbone.repartition.plan import (
    BARRIER,
    DERIVED,
    DRAINED,
    PAUSED,
    RETIRED,
    SWITCHED,
    Generations,
    Plan,
)
from backbone.snapshot.checkpoint import create_checkpoint
from backbone.store.registry import StoreRegistry
from backbone.topics import Topics, changelog_config, ensure_topics

if TYPE_CHECKING:
    from backbone.node.engine import Engine

log = structlog.get_logger(__name__)

# How long the barrier waits for a node that has not paused: its later writes still land
# in the old topic and are forwarded as late records, so nothing is lost by going on.
PAUSE_WAIT_S = 10.0
# How long the switch waits, once every new partition has one copy, for the rest.
REPLICA_WAIT_S = 20.0
RETRY_S = 2.0


class Coordinator:
    def __init__(self, engine: Engine[Any], control: ControlLog) -> None:
        self.engine = engine
        self.control = control
        self.node = engine.settings.node_id
        self._prepared: set[int] = set()
        self._cleaned: int | None = None  # the generation whose older stores were removed
        self._derived: set[tuple[int, int]] = set()  # (generation, parent) done here
        self._all_once: float | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._deriving: asyncio.Task[None] | None = None
        self.failure: str | None = None

    def start(self) -> None:
        self.control.follow()
        self._task = asyncio.create_task(self._run(), name="repartition")

    async def stop(self) -> None:
        for task in (self._deriving, self._task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        await self.control.stop()

    async def _run(self) -> None:
        while True:
            try:
                await self.step(self.control.state)
                self.failure = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failure = f"{type(exc).__name__}: {exc}"
                log.exception("repartition_step_failed")
                await asyncio.sleep(RETRY_S)
            await self.control.wait_changed(0.5)

    async def step(self, state: Generations) -> None:
        engine = self.engine
        plan = state.plan
        if plan is None:
            if engine.generation != state.current:
                drained = state.previous.drained if state.previous is not None else {}
                await engine.switch(state.current, drained)
                fault_point("after_switch")
            engine.gate.resume(
                Target(engine.topics.events, engine.generation.partitions, engine.generation.number)
            )
            await self._retire(state)
            return
        await self._prepare(plan)
        if plan.barrier is None:
            await self._pause(plan)
            return
        target = engine.topics.of(plan.target.number)
        engine.gate.resume(Target(target.events, plan.target.partitions, plan.target.number))
        processor = engine.parts.processor if engine.parts is not None else None
        if processor is not None and processor.drain_to is not plan.barrier:
            processor.drain_to = plan.barrier
            async with processor.idle():
                pass  # a batch fetched before the barrier was known ends first: drained counts it
        await self._record_drained(plan)
        self._derive_held(plan)
        await self._maybe_switch(plan)

    # --- requested -------------------------------------------------------------------
    async def _prepare(self, plan: Plan) -> None:
        if plan.target.number not in self._prepared:
            await create_generation_topics(self.engine, plan)
            self._prepared.add(plan.target.number)

    # --- paused, barrier -------------------------------------------------------------
    async def _pause(self, plan: Plan) -> None:
        engine = self.engine
        number = plan.target.number
        await engine.gate.pause()
        if self.node not in plan.paused:
            fault_point("before_paused")
            await self.control.append(number, PAUSED, self.node, at=time.time())
            return
        expected = self._members()
        waited = time.time() - plan.requested_at
        if not expected <= set(plan.paused) and waited < PAUSE_WAIT_S:
            return
        if expected - set(plan.paused):
            log.warning(
                "repartition_pause_unconfirmed",
                nodes=sorted(expected - set(plan.paused)),
                detail="going on: their writes still reach the old topic and are forwarded",
            )
        fault_point("before_barrier")
        topic = engine.topics.events
        found = await end_offsets(
            engine, [TopicPartition(topic, p) for p in range(plan.source.partitions)]
        )
        ends = {tp.partition: offset for tp, offset in found.items()}
        await self.control.append(
            number, BARRIER, self.node, offsets={str(p): o for p, o in ends.items()}
        )
        log.info("repartition_barrier", generation=number, offsets=ends)

    def _members(self) -> set[str]:
        parts = self.engine.parts
        if parts is None:
            return {self.node}
        routes = parts.clients.routing.routes
        nodes = {r.node for r in routes.active.values()}
        nodes |= {r.node for rs in routes.standbys.values() for r in rs}
        return nodes or {self.node}

    # --- drained ---------------------------------------------------------------------
    async def _record_drained(self, plan: Plan) -> None:
        parts = self.engine.parts
        assert plan.barrier is not None and parts is not None
        for p in range(plan.source.partitions):
            if p in plan.drained:
                continue
            store = parts.partitions.active_store(p)
            if store is None:
                continue
            meta = store.meta()
            position = meta.input_offset
            if position < plan.barrier.get(p, 0):
                # A store copied from a standby carries an older input offset; what the
                # group committed was applied, and is in the changelog this store restored.
                tp = TopicPartition(self.engine.topics.events, p)
                position = max(position, await parts.clients.consumer.committed(tp) or 0)
            if position < plan.barrier.get(p, 0):
                continue
            fault_point("before_drained")
            await self.control.append(
                plan.target.number,
                DRAINED,
                f"{p}/{self.node}",
                partition=p,
                changelog_end=meta.changelog_offset,
            )
            log.info("repartition_drained", partition=p, input_offset=position)

    # --- derived ---------------------------------------------------------------------
    def _derive_held(self, plan: Plan) -> None:
        if self._deriving is not None and not self._deriving.done():
            return
        parts = self.engine.parts
        assert parts is not None
        held = {}
        for p in range(plan.source.partitions):
            store = parts.partitions.serving(p)
            if store is not None:
                held[p] = store.meta().changelog_offset
        done = {p for n, p in self._derived if n == plan.target.number}
        todo = [p for p in plan.derivable(held) if p not in done]
        if todo:
            self._deriving = asyncio.create_task(self._derive(plan, todo), name="derive")

    async def _derive(self, plan: Plan, parents: list[int]) -> None:
        engine = self.engine
        s = engine.settings
        root = StoreRegistry(s.data_dir, s.store, plan.target.number).root
        work = s.data_dir / "checkpoints"
        pool = self._executor()
        loop = asyncio.get_running_loop()
        jobs = []
        try:
            for p in parents:
                parts = engine.parts
                store = parts.partitions.serving(p) if parts is not None else None
                if store is None:
                    continue
                directory, _ = await asyncio.to_thread(create_checkpoint, store, work)
                sources = [directory]
                jobs.append((p, plan.children(p), sources))
                if not plan.split:
                    await self._gather(plan, p, work, sources)
            fault_point("before_derive")
            futures = [
                loop.run_in_executor(
                    pool, derive, sources, root, plan.target.number, plan.target.partitions, kids
                )
                for _, kids, sources in jobs
            ]
            results = await asyncio.gather(*futures)
        finally:
            for _, _, sources in jobs:
                for path in sources:
                    shutil.rmtree(path, ignore_errors=True)
        fault_point("before_derived")
        for (p, kids, _), done in zip(jobs, results, strict=True):
            await self.control.append(
                plan.target.number,
                DERIVED,
                f"{self.node}/{p}",
                node=self.node,
                zone=s.zone,
                parent=p,
                children=kids,
            )
            self._derived.add((plan.target.number, p))
            log.info(
                "repartition_derived",
                parent=p,
                children=kids,
                keys=done.keys,
                bytes=done.bytes,
                seconds=round(done.seconds, 3),
            )

    async def _gather(self, plan: Plan, child: int, work: Path, found: list[Path]) -> None:
        """For a merge: adds to ``found`` checkpoints of the child's other parents, from
        this node's own copies or from the nodes that hold them."""
        engine = self.engine
        parts = engine.parts
        assert parts is not None
        for parent in plan.parents(child):
            if parent == child:
                continue
            end = plan.drained[parent]
            store = parts.partitions.serving(parent)
            if store is not None and store.meta().changelog_offset >= end:
                directory, _ = await asyncio.to_thread(create_checkpoint, store, work)
                found.append(directory)
                continue
            directory = work / f"gather-{plan.target.number}-{parent}"
            shutil.rmtree(directory, ignore_errors=True)
            found.append(directory)  # removed by the caller, whatever happens
            manifest = await parts.bootstrapper.bootstrap(parent, directory, 0, end)
            if manifest.changelog_offset < end:
                raise RuntimeError(
                    f"the copy of partition {parent} fetched for the merge is at changelog "
                    f"offset {manifest.changelog_offset}, short of the {end} it drained: "
                    "fetched again shortly"
                )

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: a forked copy of a process running Kafka clients' threads is unsafe.
            self._pool = ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn"))
        return self._pool

    # --- switched --------------------------------------------------------------------
    async def _maybe_switch(self, plan: Plan) -> None:
        if plan.underived() or len(plan.drained) < plan.source.partitions:
            return
        wanted = 1 + self.engine.settings.standby_replicas
        if self._all_once is None:
            self._all_once = time.monotonic()
        complete = all(len(nodes) >= wanted for nodes in plan.derived.values())
        if not complete and time.monotonic() - self._all_once < REPLICA_WAIT_S:
            return
        fault_point("before_switched")
        await self.control.append(plan.target.number, SWITCHED, self.node, at=time.time())

    # --- retired ---------------------------------------------------------------------
    async def _retire(self, state: Generations) -> None:
        engine = self.engine
        previous = state.previous
        engine.generations.forward_late(previous, engine.topics, engine.generation, engine.producer)
        if previous is None:
            if self._cleaned != state.current.number:  # once per generation, not per step
                self._remove_old_stores(state.current.number)
                self._cleaned = state.current.number
            return
        grace = engine.settings.repartition_retire_after_s
        switched = previous.switched_at or time.time()
        if grace >= 0 and time.time() - switched >= grace:
            await retire(
                self.control, kafka_connection(engine.settings), engine.topics, previous, self.node
            )

    def _remove_old_stores(self, current: int) -> None:
        s = self.engine.settings
        base = s.data_dir / s.store
        if not base.exists():
            return
        for path in base.iterdir():
            name = path.name.removesuffix(".staging")
            if name.startswith("g") and name[1:].isdigit() and int(name[1:]) < current:
                shutil.rmtree(path, ignore_errors=True)
                log.info("repartition_store_retired", path=str(path))


async def retire(
    control: ControlLog, kafka: KafkaConnection, topics: Topics, previous: Plan, who: str
) -> None:
    """Record that the previous generation is retired and delete its topics. Every node
    then deletes its stores when it reads the record."""
    await control.append(previous.target.number, RETIRED, who, at=time.time())
    old = topics.of(previous.source.number)
    await delete_topics(kafka, [old.events, old.changelog])
    log.info("repartition_retired", generation=previous.source.number)


async def delete_topics(kafka: KafkaConnection, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(**kafka.kwargs())
    await admin.start()
    try:
        with contextlib.suppress(Exception):
            await admin.delete_topics(names)
    finally:
        await admin.close()


async def create_generation_topics(engine: Engine[Any], plan: Plan) -> None:
    """Create the new generation's topics; its changelog starts at offset 1."""
    s = engine.settings
    topics = engine.topics.of(plan.target.number)
    admin = AIOKafkaAdminClient(**kafka_connection(s).kwargs())
    await admin.start()
    try:
        await ensure_topics(
            admin,
            topics,
            plan.target.partitions,
            s.replication_factor,
            changelog_config(
                s.changelog_retention_ms, s.changelog_retention_bytes, s.changelog_segment_ms
            ),
        )
        tps = [TopicPartition(topics.changelog, p) for p in range(plan.target.partitions)]
        ends = await end_offsets(engine, tps)
        key, value, headers = claim_record(0)  # a compacted topic refuses a null key
        sends: list[asyncio.Future[RecordMetadata]] = [
            await engine.producer.send(
                tp.topic, value, key=key, partition=tp.partition, headers=headers
            )
            for tp in tps
            if ends[tp] < FIRST_CHANGELOG_OFFSET
        ]
        await asyncio.gather(*sends)
        await admin.delete_records(
            {tp: RecordsToDelete(FIRST_CHANGELOG_OFFSET) for tp in tps}, timeout_ms=30_000
        )
    finally:
        await admin.close()


async def end_offsets(engine: Engine[Any], tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    parts = engine.parts
    if parts is None:
        raise RuntimeError("the node is switching generations: retried shortly")
    return dict(await parts.clients.consumer.end_offsets(tps))
