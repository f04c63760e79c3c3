"""Invariant 1 under SIGKILL: no event lost, none applied twice, whatever the moment.

A producer writes a known stream (registrations, then orders of known amounts) while the
node is SIGKILLed at random moments and restarted, sometimes with its disk wiped. The final
stores must equal a reference computed from the stream alone, and a store rebuilt from the
changelog must equal them.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from backbone.codec import AggregateCodec
from backbone.dev.cluster import NodeProcess, wait_until

from clustertools import (
    Reference,
    Stored,
    make_stream,
    new_service,
    read_store,
    status,
)
from conftest import Bake

pytestmark = pytest.mark.kafka

PARTITIONS = 12
KILLS = 5
SEED = 20261126


def read_all(data_dir: Path) -> dict[bytes, bytes]:
    values: dict[bytes, bytes] = {}
    for p in range(PARTITIONS):
        values.update(read_store(data_dir, p))
    return values


def equal_to_reference(data_dir: Path, reference: Reference) -> dict[bytes, bytes]:
    """The stores under ``data_dir``, once checked against ``reference``."""
    codec = AggregateCodec(Stored)
    local = read_all(data_dir)
    states = {key.decode(): codec.decode(value)[1] for key, value in local.items()}
    got = {k: (s.lifetime_value_cents, s.order_count) for k, s in states.items()}
    wrong = {k: (got.get(k), v) for k, v in reference.items() if got.get(k) != v}
    assert not wrong, (
        f"{len(wrong)} aggregates differ from the reference: {list(wrong.items())[:3]}"
    )
    return local


def rebuilt_from_the_changelog(rebuilt: NodeProcess) -> dict[bytes, bytes]:
    """The stores of a node started on an empty disk, once it restored every partition.
    The stopped node before it is a static member: its partitions move after its session."""
    rebuilt.start()
    try:

        def owns_everything() -> bool:
            state = status(rebuilt)
            return bool(state.get("ready")) and len(state.get("active", [])) == PARTITIONS

        wait_until(owns_everything, 120, "the rebuilt node to restore every partition")
    finally:
        rebuilt.stop()
    return read_all(rebuilt.data_dir)


def test_sigkill_at_random_moments_loses_nothing_and_doubles_nothing(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    service = new_service(
        "crash",
        bake(),
        kafka_brokers,
        tmp_path,
        PARTITIONS,
        CHANGELOG_RETENTION_MS="-1",  # one node, no peer: the changelog must stay whole
        MAX_BATCH_RECORDS="5000",  # small batches: kills land between every step
    )
    events, reference = make_stream(keys=10_000, orders=190_000, seed=SEED)  # 200k events

    def node(name: str) -> NodeProcess:
        # Hold each batch between the changelog ack and the store write, so that some kills
        # land there: the store then restores from the changelog and must skip input it
        # has already applied (the per-aggregate fence).
        faults = {"FAULT_DELAY_MS": "150"}
        return NodeProcess("customer_backbone", name, tmp_path, service.env, faults=faults)

    def progress() -> int:
        """Events the node has committed so far."""
        return service.produced() - service.lag()

    producer = service.load(events, chunk=2_500, pause=0.15)
    current = node("victim").start()
    current.wait_ready(timeout=90)
    producer.start()
    rng = random.Random(SEED)
    try:
        for kill in range(KILLS):
            # The random moment of the crash: after a random number of further events.
            target = progress() + rng.randint(2_000, 25_000)
            wait_until(lambda t=target: progress() >= t, 120, f"{target} events processed")
            current.kill()
            if kill % 2:
                shutil.rmtree(current.data_dir)  # a lost disk: rebuilt from the changelog
            current = node("victim").start()
            current.wait_ready(timeout=90)
        producer.join(timeout=300)
        assert not producer.is_alive(), "the producer did not finish"
        wait_until(lambda: service.lag() == 0, 300, "every event")
    finally:
        current.stop()

    local = equal_to_reference(current.data_dir, reference)
    assert rebuilt_from_the_changelog(node("rebuilt")) == local


def test_sigkill_with_two_batches_in_flight_loses_nothing_and_doubles_nothing(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    """The pipelined batch loop at its widest: batch n acknowledged by Kafka but not in the
    store, batch n+1 applied over it in memory. The node SIGKILLs itself there
    (``FAULT_KILL_IN_FLIGHT``), three times at different batches; what it ends with must
    equal the reference, and a store rebuilt from the changelog must equal that."""
    service = new_service(
        "inflight",
        bake(),
        kafka_brokers,
        tmp_path,
        PARTITIONS,
        CHANGELOG_RETENTION_MS="-1",
        MAX_BATCH_RECORDS="3000",  # many batches, each behind the one in flight
    )
    events, reference = make_stream(keys=6_000, orders=114_000, seed=SEED + 1)
    loader = service.load(events, chunk=20_000, pause=0.0)  # a backlog: batches follow at once
    loader.start()
    loader.join(timeout=300)
    assert not loader.is_alive(), "the producer did not finish"

    def victim(faults: dict[str, str] | None) -> NodeProcess:
        # One name: the same disk and the same static member every time.
        return NodeProcess("customer_backbone", "victim", tmp_path, service.env, faults=faults)

    lags = []
    for kill, nth in enumerate((2, 5, 9), start=1):
        current = victim({"FAULT_KILL_IN_FLIGHT": str(nth)}).start()
        wait_until(lambda c=current: not c.alive(), 180, f"the kill at double batch {nth}")
        log = current.log_path.read_text()
        assert log.count("two_batches_in_flight") == kill, current.tail()
        lags.append(service.lag())
    assert lags[0] > lags[-1] > 0, f"the kills did not land mid-stream: lags {lags}"

    last = victim(None).start()
    try:
        wait_until(lambda: service.lag() == 0, 300, "every event")
    finally:
        last.stop()
    local = equal_to_reference(last.data_dir, reference)
    rebuilt = NodeProcess("customer_backbone", "rebuilt", tmp_path, service.env)
    assert rebuilt_from_the_changelog(rebuilt) == local
