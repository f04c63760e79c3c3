"""Late records: what producers still send to the previous generation's input after the
barrier. A forwarder takes them up in order, sends each to its partition of the current
generation's input, and commits once Kafka acknowledged them. A record forwarded twice
(after a crash between sending and committing) carries the same old offset both times,
and the aggregate's late fence applies it once (``backbone.codec``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from backbone.codec import LATE_HEADER
from backbone.kafka_connection import kafka_connection
from backbone.partitioning import partition_for
from backbone.repartition.gate import Target
from backbone.repartition.plan import Plan
from backbone.settings import EngineSettings
from backbone.topics import Topics

log = structlog.get_logger(__name__)

REPORT_EVERY_S = 10.0  # one log line per this long, with the count, however many batches


class _StartAtBarrier(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, forwarder: LateForwarder) -> None:
        self.forwarder = forwarder

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self.forwarder.consumer
        barrier = self.forwarder.plan.barrier or {}
        for tp in assigned:
            if await consumer.committed(tp) is None:
                consumer.seek(tp, barrier.get(tp.partition, 0))


class LateForwarder:
    def __init__(
        self, settings: EngineSettings, old: Topics, plan: Plan, producer: AIOKafkaProducer
    ) -> None:
        self.plan = plan
        self.old = old
        self.producer = producer
        self.target = Target("", plan.target.partitions)
        self.forwarded = 0
        self.consumer = AIOKafkaConsumer(
            **kafka_connection(settings).kwargs(),
            client_id=f"{settings.service}-{settings.node_id}-late",
            group_id=old.late_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.session_timeout_ms,
        )
        self._task: asyncio.Task[None] | None = None
        self._reported = 0.0
        self._unreported = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="late-forwarder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        await self.consumer.start()
        try:
            self.consumer.subscribe([self.old.events], listener=_StartAtBarrier(self))
            while True:
                batches = await self.consumer.getmany(timeout_ms=1000, max_records=2000)
                if batches:
                    await self._forward(batches)
        finally:
            await self.consumer.stop()

    async def _forward(self, batches: dict[TopicPartition, list[Any]]) -> None:
        target = self.target
        waits = []
        offsets = {}
        count = 0
        for tp, records in batches.items():
            for record in records:
                partition = (
                    partition_for(record.key, target.partitions)
                    if record.key
                    else record.partition % target.partitions
                )
                headers = [
                    *record.headers,
                    (LATE_HEADER, f"{record.partition}/{record.offset}".encode()),
                ]
                waits.append(
                    await self.producer.send(
                        target.topic,
                        record.value,
                        key=record.key,
                        partition=partition,
                        headers=headers,
                    )
                )
                count += 1
            offsets[tp] = records[-1].offset + 1
        await asyncio.gather(*waits)
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("late_commit_failed", error=str(exc))
        self.forwarded += count
        self._unreported += count
        now = time.monotonic()
        if now - self._reported < REPORT_EVERY_S:
            return
        self._reported = now
        log.warning(
            "late_records_forwarded",
            records=self._unreported,
            total=self.forwarded,
            source=self.old.events,
            target=target.topic,
            detail="a producer still writes to the previous generation's topic: point it "
            f"at {target.topic}",
        )
        self._unreported = 0
