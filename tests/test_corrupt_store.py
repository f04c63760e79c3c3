"""A store that RocksDB cannot open is quarantined, not fatal (issue 9, defect 2).

Garbage in a stopped node's ``CURRENT`` once took the whole node down at start-up, and the
documented repair (``bootstrap``) crashed. Now the node moves the store aside, names it in
the log, recovers the partition and serves the rest; the command repairs it offline too.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from backbone.dev.cluster import NodeProcess, wait_until

from clustertools import (
    assignment,
    check_replicas,
    make_stream,
    new_service,
    produce_over_time,
    settled,
    standbys_caught_up,
)
from conftest import Bake

pytestmark = pytest.mark.kafka

PARTITIONS = 2


def corrupt(node: NodeProcess, partition: int) -> Path:
    current = node.data_dir / "customer" / "g0" / str(partition) / "CURRENT"
    assert current.exists()
    current.write_bytes(b"\x00garbage, not a manifest name\n")
    return current


def quarantined(node: NodeProcess) -> list[Path]:
    return sorted((node.data_dir / "quarantine").glob("customer-g0-p0-*"))


def test_a_corrupt_store_is_quarantined_and_recovered(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    service = new_service(
        "corrupt", bake(), kafka_brokers, tmp_path, PARTITIONS, STANDBY_REPLICAS="1"
    )
    events, reference = make_stream(keys=200, orders=3_000, seed=3)
    nodes = [service.node(i).start() for i in range(2)]
    try:
        for n in nodes:
            n.wait_ready(timeout=90)
        wait_until(lambda: settled(nodes, PARTITIONS, PARTITIONS), 60, "2 nodes to settle")
        asyncio.run(produce_over_time(kafka_brokers, service.topic, events, 500, 0))
        wait_until(lambda: service.lag() == 0, 60, "all input")
        wait_until(lambda: standbys_caught_up(nodes), 60, "standbys to catch up")

        # At start-up: the node quarantines the store and recovers the partition.
        nodes[1].stop()
        corrupt(nodes[1], 0)
        nodes[1] = service.node(1).start()
        for n in nodes:
            n.wait_ready(timeout=90)
        wait_until(lambda: settled(nodes, PARTITIONS, PARTITIONS), 60, "the node to rejoin")
        wait_until(lambda: standbys_caught_up(nodes), 60, "standbys to catch up again")
        log = nodes[1].log_path.read_text()
        assert '"store_quarantined"' in log
        [moved] = quarantined(nodes[1])
        assert (moved / "CURRENT").read_bytes().startswith(b"\x00garbage")

        # Offline: the bootstrap command repairs it from the peer.
        nodes[1].stop()
        corrupt(nodes[1], 0)
        repair = subprocess.run(
            [sys.executable, "-m", "customer_backbone", "bootstrap", "--partition", "0"],
            env=nodes[1].env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert repair.returncode == 0, repair.stderr
        assert "installed partition 0" in repair.stdout
        assert len(quarantined(nodes[1])) == 2
        nodes[1] = service.node(1).start()
        for n in nodes:
            n.wait_ready(timeout=90)
        wait_until(lambda: settled(nodes, PARTITIONS, PARTITIONS), 60, "the node to rejoin")
        wait_until(lambda: standbys_caught_up(nodes), 60, "standbys to catch up again")
        final = assignment(nodes[0])["group"]["partitions"]
    finally:
        for n in nodes:
            n.stop()
    check_replicas(final, nodes, reference)
