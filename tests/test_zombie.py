"""A writer frozen past its session wakes up and writes one stale batch (backbone.changelog.epochs).

Node 0 runs under backbone.dev.faults and stalls before each changelog write
(FAULT_STALL_MS); the test freezes it (SIGSTOP) inside that window; node 1 takes its
partition over and processes every event; node 0 is thawed and appends its stale batch
after node 1's records. Nothing may come of it: no event lost or applied twice, standbys
equal to their actives, and the last changelog record of every key (what compaction keeps)
equal to the active's state.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from backbone.dev.cluster import wait_until

from clustertools import (
    assignment,
    check_replicas,
    last_records,
    make_stream,
    new_service,
    produce_over_time,
    read_store,
    settled,
    standbys_caught_up,
    status,
)
from conftest import Bake

pytestmark = pytest.mark.kafka

PARTITIONS = 2


def test_a_writer_woken_after_losing_its_partition_corrupts_nothing(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    service = new_service(
        "zombie",
        bake(),
        kafka_brokers,
        tmp_path,
        PARTITIONS,
        STANDBY_REPLICAS="1",
        MAX_BATCH_RECORDS="500",
    )
    events, reference = make_stream(keys=400, orders=6_000, seed=13)
    # The last events come once node 0 is back: every active's next batch checks what lies
    # behind its own records, so the end state no longer depends on idle-time checks.
    first, rest, last = events[:1_000], events[1_000:-100], events[-100:]
    zombie = service.node(0, faults={"FAULT_STALL_MS": "3000"}).start()
    survivor = service.node(1).start()
    nodes = [zombie, survivor]
    try:
        for n in nodes:
            n.wait_ready(timeout=90)
        wait_until(lambda: settled(nodes, PARTITIONS, PARTITIONS), 60, "2 nodes to settle")
        assert len(status(zombie)["active"]) == 1

        def stalls() -> int:
            return zombie.log_path.read_text().count('"fault_stall"')

        stalled = stalls()
        asyncio.run(produce_over_time(kafka_brokers, service.topic, first, 500, 0))
        wait_until(lambda: stalls() > stalled, 60, "node 0 to stall before a changelog write")
        assert zombie.proc is not None
        os.kill(zombie.proc.pid, signal.SIGSTOP)
        try:
            wait_until(
                lambda: status(survivor).get("active") == [0, 1] and status(survivor)["ready"],
                60,
                "node 1 to take both partitions over",
            )
            asyncio.run(produce_over_time(kafka_brokers, service.topic, rest, 500, 0))
            wait_until(lambda: service.lag() == 0, 120, "node 1 to process every event")
        finally:
            os.kill(zombie.proc.pid, signal.SIGCONT)

        def superseded() -> bool:
            return '"changelog_writer_superseded"' in zombie.log_path.read_text()

        wait_until(superseded, 60, "node 0 to write its stale batch and find it superseded")
        final = wait_until(lambda: settled(nodes, PARTITIONS, PARTITIONS), 120, "node 0 to rejoin")[
            "partitions"
        ]
        asyncio.run(produce_over_time(kafka_brokers, service.topic, last, 100, 0))
        wait_until(lambda: service.lag() == 0, 120, "all input")
        wait_until(lambda: standbys_caught_up(nodes), 60, "standbys to catch up")

        assert final == assignment(survivor)["group"]["partitions"], "rebalanced again"
    finally:
        for n in nodes:
            n.stop()
    check_replicas(final, nodes, reference)
    by_name = {n.name: n for n in nodes}
    kept_by_compaction = last_records(kafka_brokers, service.changelog, PARTITIONS)
    for p, replicas in final.items():
        active = read_store(by_name[replicas["active"]["node"]].data_dir, int(p))
        kept = {k: v for k, v in kept_by_compaction[int(p)].items() if v is not None}
        stale = sorted(k for k in kept if kept[k] != active.get(k))
        assert not stale, f"partition {p}: compaction would keep stale records of {stale[:5]}"
        assert kept.keys() == active.keys()
    # The woken node's records were written over (by whichever node held the partition).
    logs = zombie.log_path.read_text() + survivor.log_path.read_text()
    assert '"stale_changelog_records_superseded"' in logs
