"""The control log's topic: read it to the end, follow it, append to it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from backbone.kafka_connection import KafkaConnection, kafka_connection
from backbone.repartition.plan import Generation, Generations, record
from backbone.settings import EngineSettings
from backbone.topics import durability

log = structlog.get_logger(__name__)

# Never compacted: "the first record wins" needs every record, and the log stays small
# (tens of records per change).
CONTROL_CONFIG = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}


def control_topic(service: str) -> str:
    return f"{service}.control"


async def ensure_control_topic(admin: AIOKafkaAdminClient, service: str, replication: int) -> None:
    name = control_topic(service)
    if name in set(await admin.list_topics()):
        return
    factor, durable = await durability(admin, replication)
    topic = NewTopic(name, 1, factor, topic_configs={**durable, **CONTROL_CONFIG})
    with contextlib.suppress(TopicAlreadyExistsError):  # another node was first
        await admin.create_topics([topic])


class ControlLog:
    """One node's view of the control log. ``state`` is current after ``start``; ``changed``
    is set each time a record arrives."""

    def __init__(
        self,
        kafka: KafkaConnection,
        service: str,
        initial: Generation,
        client_id: str,
        producer: AIOKafkaProducer | None = None,
    ) -> None:
        self.topic = control_topic(service)
        self._tp = TopicPartition(self.topic, 0)
        self.state = Generations(initial)
        self._consumer = AIOKafkaConsumer(
            **kafka.kwargs(),
            client_id=f"{client_id}-control",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self._own_producer = producer is None
        self._producer = producer or AIOKafkaProducer(
            **kafka.kwargs(), client_id=f"{client_id}-control", acks="all"
        )
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[Generations], None]] = []
        self.changed = asyncio.Event()

    async def start(self) -> Generations:
        """Read the whole log; returns the state it describes."""
        await self._consumer.start()
        if self._own_producer:
            await self._producer.start()
        self._consumer.assign([self._tp])
        await self._consumer.seek_to_beginning(self._tp)
        end = (await self._consumer.end_offsets([self._tp]))[self._tp]
        while self.state.offset < end:
            await self._read(timeout_ms=1000)
        return self.state

    def follow(self, listener: Callable[[Generations], None] | None = None) -> None:
        """Keep reading in the background; ``listener`` is called after every new record."""
        if listener is not None:
            self._listeners.append(listener)
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="control-log")

    async def _follow(self) -> None:
        while True:
            await self._read(timeout_ms=500)

    async def _read(self, timeout_ms: int) -> None:
        batches = await self._consumer.getmany(self._tp, timeout_ms=timeout_ms)
        got = False
        for records in batches.values():
            for rec in records:
                if rec.key is not None and rec.value is not None:
                    try:
                        self.state.apply(rec.key.decode(), msgspec.json.decode(rec.value))
                    except (ValueError, KeyError, TypeError) as exc:
                        log.warning("control_record_ignored", offset=rec.offset, error=str(exc))
                self.state.offset = rec.offset + 1
                got = True
        if got:
            self.changed.set()
            for listener in self._listeners:
                listener(self.state)

    async def wait_changed(self, timeout: float) -> None:
        self.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)

    async def append(self, generation: int, step: str, who: str, **value: Any) -> None:
        key, raw = record(generation, step, who, **value)
        await self._producer.send_and_wait(self.topic, raw, key=key, partition=0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._consumer.stop()
        if self._own_producer:
            await self._producer.stop()


async def open_control_log(
    settings: EngineSettings, client_id: str, producer: AIOKafkaProducer | None = None
) -> ControlLog:
    """The service's control log (created if missing), read to its end."""
    kafka = kafka_connection(settings)
    admin = AIOKafkaAdminClient(**kafka.kwargs())
    await admin.start()
    try:
        await ensure_control_topic(admin, settings.service, settings.replication_factor)
    finally:
        await admin.close()
    control = ControlLog(
        kafka,
        settings.service,
        Generation(0, settings.partitions),
        client_id,
        producer=producer,
    )
    await control.start()
    return control
