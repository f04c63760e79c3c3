"""``dlq replay`` re-submits each dead letter once: run twice, or killed (SIGKILL) between
sending a batch and committing it and run again, the events topic as the processor reads
it (``read_committed``) holds every selected dead letter exactly once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from clustertools import Service, create_topic, new_service
from conftest import Bake

pytestmark = pytest.mark.kafka

PARTITIONS = 3
REASONS = ("rejected", "handler_error")
Letters = dict[str, tuple[bytes, bytes]]  # "<dlq>/<partition>/<offset>" -> (key, value)


def dead_letters(service: Service, count: int) -> Letters:
    """``count`` dead letters over the DLQ's partitions, two reasons taking turns."""
    dlq = f"{service.name}.dlq"

    async def produce() -> Letters:
        await create_topic(service.brokers, dlq, PARTITIONS)
        producer = AIOKafkaProducer(bootstrap_servers=service.brokers, acks="all")
        await producer.start()
        try:
            letters: Letters = {}
            for i in range(count):
                key, value = f"k-{i}".encode(), b'{"type": "order_placed", "n": %d}' % i
                headers = [
                    ("dlq-reason", REASONS[i % 2].encode()),
                    ("dlq-error", b"it failed"),
                    ("traceparent", b"00-abc-def-01"),
                ]
                sent = await producer.send_and_wait(
                    dlq, value, key=key, partition=i % PARTITIONS, headers=headers
                )
                letters[f"{dlq}/{sent.partition}/{sent.offset}"] = (key, value)
            return letters
        finally:
            await producer.stop()

    return asyncio.run(produce())


def resubmitted(
    service: Service, isolation: str = "read_committed"
) -> list[tuple[str, bytes, bytes]]:
    """Every record of the events topic as (replayed-from, key, value)."""

    async def read() -> list[tuple[str, bytes, bytes]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=service.brokers, isolation_level=isolation, enable_auto_commit=False
        )
        await consumer.start()
        try:
            tps = [TopicPartition(service.topic, p) for p in range(service.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            found = []
            while any([await consumer.position(tp) < ends[tp] for tp in tps]):
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    for r in records:
                        headers = dict(r.headers)
                        assert headers.keys() == {"traceparent", "dlq-replayed-from"}, headers
                        found.append((headers["dlq-replayed-from"].decode(), r.key, r.value))
            return found
        finally:
            await consumer.stop()

    return asyncio.run(read())


def replay(
    service: Service, *args: str, kill_at: str | None = None
) -> subprocess.CompletedProcess[str]:
    command = ["dlq", "replay", *args]
    if kill_at is None:
        argv = [sys.executable, "-m", "customer_backbone", *command]
        env = service.env
    else:
        argv = [sys.executable, "-m", "backbone.dev.faults", "customer_backbone", *command]
        env = {**service.env, "FAULT_KILL_AT": kill_at}
    return subprocess.run(
        argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def check_once(service: Service, letters: Letters) -> None:
    found = resubmitted(service)
    origins = [origin for origin, _, _ in found]
    assert len(origins) == len(set(origins)), "a dead letter was re-submitted twice"
    assert {origin: (key, value) for origin, key, value in found} == letters


def test_a_second_replay_resubmits_nothing_again(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    service = new_service("dlqtwice", bake(), kafka_brokers, tmp_path, 4)
    letters = dead_letters(service, 20)

    first = replay(service, "--reason", "rejected")
    assert first.returncode == 0, first.stderr
    assert "replayed 10 of 20 dead letters" in first.stdout
    rest = replay(service)
    assert rest.returncode == 0, rest.stderr
    assert "replayed 10 of 20 dead letters; 10 replayed before, skipped" in rest.stdout
    again = replay(service)
    assert again.returncode == 0, again.stderr
    assert "replayed 0 of 20 dead letters; 20 replayed before, skipped" in again.stdout
    dry = replay(service, "--dry-run")
    assert "would replay 0 of 20 dead letters; 20 replayed before, skipped" in dry.stdout

    check_once(service, letters)


def test_a_replay_killed_before_its_commit_and_run_again_misses_and_doubles_nothing(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    service = new_service("dlqkill", bake(), kafka_brokers, tmp_path, 4)
    letters = dead_letters(service, 50)

    # Batches of 7: two are committed, the third is sent and then the process is killed.
    killed = replay(service, "--batch", "7", kill_at="dlq_replay_sent@3")
    assert killed.returncode == -9, (killed.stdout, killed.stderr)
    again = replay(service, "--batch", "7")
    assert again.returncode == 0, again.stderr
    assert "replayed 36 of 50 dead letters; 14 replayed before, skipped" in again.stdout

    check_once(service, letters)
    # The killed batch did reach the events topic, in a transaction that was aborted.
    assert len(resubmitted(service, "read_uncommitted")) == 50 + 7
