"""Two of three disks lost at once (issue 9): the survivor's copies are never thrown away.

3 nodes in 3 zones, 1 standby, and short retention on the changelog and on the events
topic, so that neither could rebuild a partition: a rebuild from input would visibly lose
data. Two nodes are SIGKILLed together and their disks wiped. Every partition the survivor
held (active or standby) must come back whole on whichever node ends up with it, compared
with a reference computed independently; every partition whose copies were all on the
lost disks must be reported incomplete, with its missing offsets, and not served, until an
operator accepts the loss. Accepting it sends no output event or dead letter again.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from backbone.dev.cluster import NodeProcess, wait_until
from backbone.partitioning import partition_for

from clustertools import (
    assignment,
    make_stream,
    new_service,
    produced,
    settled,
    standbys_caught_up,
    status,
    topic_starts,
)
from conftest import Bake

pytestmark = pytest.mark.kafka

PARTITIONS = 6
RETENTION = {"retention.ms": "8000", "segment.ms": "1000", "cleanup.policy": "delete"}


def incomplete(nodes: list[NodeProcess]) -> dict[int, dict[str, Any]]:
    return {entry["partition"]: entry for n in nodes for entry in status(n).get("incomplete", [])}


def actives(nodes: list[NodeProcess]) -> set[int]:
    return {p for n in nodes for p in status(n).get("active", [])}


def test_double_disk_loss_keeps_every_surviving_copy(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    project = bake()
    service = new_service(
        "loss",
        project,
        kafka_brokers,
        tmp_path,
        PARTITIONS,
        events_config=RETENTION,
        STANDBY_REPLICAS="1",
        MAX_BATCH_RECORDS="2000",
        CHANGELOG_RETENTION_MS="8000",
        CHANGELOG_SEGMENT_MS="1000",
        BOOTSTRAP_STALL_S="10",
    )
    events, reference = make_stream(keys=600, orders=16_000, seed=9)
    partition_of = {key: partition_for(key.encode(), PARTITIONS) for key in reference}
    nodes = [service.node(i).start() for i in range(3)]
    producer = service.load(events, chunk=200, pause=0.2)
    try:
        for n in nodes:
            n.wait_ready(timeout=90)
        wait_until(lambda: settled(nodes, PARTITIONS, PARTITIONS), 60, "3 nodes to settle")
        producer.start()

        def history_deleted() -> bool:
            return all(
                begin > 0
                for topic in (service.topic, service.changelog)
                for begin in topic_starts(kafka_brokers, topic, PARTITIONS).values()
            )

        wait_until(history_deleted, 120, "retention to delete old events and changelog")
        producer.join(timeout=300)
        assert not producer.is_alive()
        wait_until(lambda: service.lag() == 0, 120, "all input")
        wait_until(lambda: standbys_caught_up(nodes), 60, "standbys to catch up")
        view = assignment(nodes[0])["group"]["partitions"]
        holdings = {
            i: {
                int(p)
                for p, r in view.items()
                if f"node-{i}" in [r["active"]["node"], *(s["node"] for s in r["standbys"])]
            }
            for i in range(3)
        }
        # The survivor must hold some partitions but not all. A node that joined first may
        # keep a copy of everything (make before break pins it until a later rebalance).
        survivor = next((i for i in (1, 0, 2) if 0 < len(holdings[i]) < PARTITIONS), None)
        assert survivor is not None, f"every node holds all or nothing: {holdings}"
        held = holdings[survivor]
        gone = [i for i in range(3) if i != survivor]
        lost = set(range(PARTITIONS)) - held
        outputs_before = produced(kafka_brokers, f"{service.name}.out", PARTITIONS)
        dead_before = produced(kafka_brokers, f"{service.name}.dlq", PARTITIONS)

        for i in gone:
            nodes[i].kill()
        for i in gone:
            subprocess.run(["rm", "-rf", str(nodes[i].data_dir)], check=True)
        # The survivor alone: it serves what it held and reports the rest incomplete.
        alone = [nodes[survivor]]
        wait_until(
            lambda: actives(alone) == held and set(incomplete(alone)) == lost,
            90,
            "the survivor to take over its copies and report the lost partitions",
        )
        restarted = time.monotonic()
        for i in gone:
            nodes[i] = service.node(i).start()

        def recovered() -> bool:
            everyone_joined = all(status(n).get("assigned") for n in nodes)
            return everyone_joined and actives(nodes) == held and set(incomplete(nodes)) == lost

        wait_until(recovered, 180, "the surviving partitions to come back on all nodes")
        recovery_s = time.monotonic() - restarted
        print(f"double-loss recovery: {recovery_s:.1f} s for {len(held)} partitions")
        # Every aggregate of a surviving partition, through any node, equals the reference.
        for key, (total, count) in reference.items():
            if partition_of[key] not in held:
                continue
            body = httpx.get(f"{nodes[gone[0]].url}/customers/{key}", timeout=10).json()
            assert (body["lifetime_value_cents"], body["order_count"]) == (total, count), key
        # The lost partitions: reported with what is missing, never served as ready.
        for entry in incomplete(nodes).values():
            assert entry["missing_event_offsets"][0] == 0
            assert entry["missing_event_offsets"][1] > 0
            assert entry["missing_changelog_offsets"][1] > 0
        owners = {n.name: n for n in nodes}
        for p in lost:
            owner = owners[assignment(nodes[0])["group"]["partitions"][str(p)]["active"]["node"]]
            assert status(owner)["ready"] is False
            ready = httpx.get(f"{owner.url}/health/ready", timeout=10)
            assert ready.status_code == 503
        lost_key = next(k for k, p in partition_of.items() if p in lost)
        response = httpx.get(f"{nodes[survivor].url}/customers/{lost_key}", timeout=10)
        assert response.status_code == 503, response.text

        # The operator accepts the loss: the partitions rebuild from what is left.
        command = [sys.executable, "-m", "customer_backbone", "accept-loss"]
        for p in sorted(lost):
            done = subprocess.run(
                [*command, "--partition", str(p)],
                env=nodes[survivor].env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            assert f"accepted the loss of partition {p}" in done.stdout
        again = subprocess.run(
            [*command, "--partition", str(min(held))],
            env=nodes[survivor].env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 2 and "not waiting for accept-loss" in again.stderr
        for n in nodes:
            n.wait_ready(timeout=120)
        wait_until(lambda: service.lag() == 0, 60, "the rebuilt partitions' input")
        assert not incomplete(nodes)
        assert produced(kafka_brokers, f"{service.name}.out", PARTITIONS) == outputs_before
        assert produced(kafka_brokers, f"{service.name}.dlq", PARTITIONS) == dead_before
    finally:
        if producer.is_alive():
            producer.join(timeout=300)
        for n in nodes:
            n.stop()
    logs = "".join(n.log_path.read_text() for n in nodes)
    assert '"partition_incomplete"' in logs and '"loss_accepted"' in logs
    rejoined = "".join(nodes[i].log_path.read_text() for i in gone)
    assert '"bootstrap_finished"' in rejoined, "no surviving copy was handed to a new node"
    for line in logs.splitlines():
        if '"rebuilding_from_input"' in line:
            assert any(f'"partition": {p},' in line for p in lost), line
