"""Re-submitting dead letters to the events topic once the cause is fixed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from backbone.kafka_connection import KafkaConnection
from backbone.topics import Topics

log = structlog.get_logger(__name__)

REPLAYED_FROM = "dlq-replayed-from"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters to replay; every given criterion must match."""

    partition: int | None = None
    offsets: frozenset[int] = frozenset()
    reason: str | None = None

    def matches(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        if self.partition is not None and record.partition != self.partition:
            return False
        if self.offsets and record.offset not in self.offsets:
            return False
        if self.reason is not None:
            reason = dict(record.headers).get("dlq-reason", b"").decode()
            if reason != self.reason:
                return False
        return True


@dataclass(slots=True)
class ReplayReport:
    scanned: int = 0
    replayed: list[tuple[int, int]] = field(default_factory=list)


async def replay(
    kafka: KafkaConnection,
    topics: Topics,
    selection: Selection,
    dry_run: bool = False,
    on_record: Callable[[ConsumerRecord[bytes, bytes]], None] | None = None,
) -> ReplayReport:
    """Copy the selected DLQ records (as they were first produced) back to the events topic.

    Reads the DLQ up to its end at the time of the call, so a record that fails again and
    lands in the DLQ once more is not replayed in a loop.
    """
    consumer = AIOKafkaConsumer(**kafka.kwargs(), group_id=None, enable_auto_commit=False)
    producer = AIOKafkaProducer(**kafka.kwargs(), acks="all", enable_idempotence=True)
    await consumer.start()
    await producer.start()
    report = ReplayReport()
    try:
        if topics.dlq not in await consumer.topics():
            raise LookupError(f"topic {topics.dlq} does not exist: has the service run yet?")
        partitions = await producer.partitions_for(topics.dlq)
        tps = [
            TopicPartition(topics.dlq, p)
            for p in sorted(partitions)
            if selection.partition is None or p == selection.partition
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    report.scanned += 1
                    if not selection.matches(record):
                        continue
                    if on_record is not None:
                        on_record(record)
                    if not dry_run:
                        headers = [(k, v) for k, v in record.headers if not k.startswith("dlq-")]
                        headers.append(
                            (
                                REPLAYED_FROM,
                                f"{record.topic}/{record.partition}/{record.offset}".encode(),
                            )
                        )
                        await producer.send_and_wait(
                            topics.events, record.value, key=record.key, headers=headers
                        )
                    report.replayed.append((record.partition, record.offset))
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        log.info(
            "dlq_replayed",
            scanned=report.scanned,
            replayed=len(report.replayed),
            dry_run=dry_run,
        )
        return report
    finally:
        await consumer.stop()
        await producer.stop()
