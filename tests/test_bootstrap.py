"""Cold bootstrap from a peer's checkpoint while the changelog is truncated (issue 5's proof).

Changelog segments are deleted after seconds, so a node that lost its disk cannot replay
the changelog: it must copy a checkpoint from a peer and tail from the checkpoint's offset.
At the end no event is lost or applied twice and its stores equal the actives'.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import threading
from pathlib import Path

import httpx
import pytest

from backbone.devcluster import NodeProcess

from clustertools import (
    INTERNAL_TOKEN,
    assignment,
    changelog_ends,
    changelog_starts,
    check_replicas,
    create_topic,
    lag,
    make_stream,
    produce_over_time,
    produced,
    settled,
    standbys_caught_up,
    wait_for,
)
from conftest import Bake

pytestmark = pytest.mark.kafka

PARTITIONS = 4
ZONES = ["zone-a", "zone-b", "zone-c"]


def test_a_wiped_node_bootstraps_from_a_peer_and_loses_nothing(
    bake: Bake, kafka_bootstrap: str, tmp_path: Path
) -> None:
    project = bake()
    service = f"boot-{random.Random().randrange(10**8)}"
    topic = f"{service}.events"
    changelog = f"{service}.customer-changelog"
    events, reference = make_stream(keys=1_000, orders=30_000, seed=5)
    asyncio.run(create_topic(kafka_bootstrap, topic, PARTITIONS))
    base = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SERVICE_NAME": service,
        "PARTITIONS": str(PARTITIONS),
        "STANDBY_REPLICAS": "1",
        "PYTHONPATH": str(project / "src"),
        "READ_MODEL": "off",
        "MAX_BATCH_RECORDS": "2000",
        "INTERNAL_TOKEN": INTERNAL_TOKEN,
        # Old changelog segments go within seconds: replay alone could not rebuild a store.
        "CHANGELOG_RETENTION_MS": "2000",
        "CHANGELOG_SEGMENT_MS": "1000",
    }

    def node(i: int) -> NodeProcess:
        return NodeProcess("customer_backbone", f"node-{i}", tmp_path, {**base, "ZONE": ZONES[i]})

    nodes = [node(i).start() for i in range(3)]
    producer = threading.Thread(
        target=lambda: asyncio.run(
            produce_over_time(kafka_bootstrap, topic, events, chunk=150, pause=0.25)
        )
    )
    try:
        for n in nodes:
            n.wait_ready(timeout=90)
        wait_for(lambda: settled(nodes, PARTITIONS, PARTITIONS), 60, "3 nodes to settle")
        producer.start()
        wait_for(
            lambda: all(o > 0 for o in changelog_starts(kafka_bootstrap, changelog, 4).values()),
            90,
            "retention to delete the first changelog segments",
        )
        assert produced(kafka_bootstrap, topic, PARTITIONS) < len(events), "load ended early"

        victim = nodes[1]
        victim.kill()
        shutil.rmtree(victim.data_dir)
        nodes[1] = node(1).start()
        wait_for(lambda: settled(nodes, PARTITIONS, PARTITIONS), 120, "the wiped node to rejoin")

        producer.join(timeout=300)
        assert not producer.is_alive()
        wait_for(lambda: lag(kafka_bootstrap, service, topic, PARTITIONS) == 0, 120, "all input")
        wait_for(lambda: standbys_caught_up(nodes), 60, "standbys to catch up")
        body = httpx.get(f"{nodes[1].url}/customers/k-7", timeout=10).json()
        assert (body["lifetime_value_cents"], body["order_count"]) == reference["k-7"]
        final = assignment(nodes[0])["group"]["partitions"]
    finally:
        if producer.is_alive():
            producer.join(timeout=300)
        for n in nodes:
            n.stop()
    log = nodes[1].log_path.read_text()
    assert '"bootstrap_finished"' in log, "the wiped node did not bootstrap from a peer"
    assert '"rebuilding_from_input"' not in log
    held = {
        p
        for p, r in final.items()
        if "node-1" in [r["active"]["node"]] + [s["node"] for s in r["standbys"]]
    }
    assert held, "the wiped node holds no partition"
    check_replicas(final, nodes, reference)


def test_a_standby_paused_past_retention_is_bootstrapped_again(
    bake: Bake, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A node frozen (SIGSTOP) while retention deletes what its standby still needed must
    not skip ahead over the deleted records: it copies a checkpoint again (invariant 2)."""
    project = bake()
    service = f"pause-{random.Random().randrange(10**8)}"
    topic = f"{service}.events"
    changelog = f"{service}.customer-changelog"
    partitions = 2
    events, reference = make_stream(keys=500, orders=20_000, seed=6)
    asyncio.run(create_topic(kafka_bootstrap, topic, partitions))
    base = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SERVICE_NAME": service,
        "PARTITIONS": str(partitions),
        "STANDBY_REPLICAS": "1",
        "PYTHONPATH": str(project / "src"),
        "READ_MODEL": "off",
        "MAX_BATCH_RECORDS": "1000",
        "INTERNAL_TOKEN": INTERNAL_TOKEN,
        "CHANGELOG_RETENTION_MS": "2000",
        "CHANGELOG_SEGMENT_MS": "1000",
    }

    def node(i: int) -> NodeProcess:
        return NodeProcess("customer_backbone", f"node-{i}", tmp_path, {**base, "ZONE": ZONES[i]})

    nodes = [node(0).start(), node(1).start()]
    producer = threading.Thread(
        target=lambda: asyncio.run(
            produce_over_time(kafka_bootstrap, topic, events, chunk=100, pause=0.2)
        )
    )
    paused = nodes[1]
    try:
        for n in nodes:
            n.wait_ready(timeout=90)
        wait_for(lambda: settled(nodes, partitions, partitions), 60, "2 nodes to settle")
        producer.start()
        wait_for(lambda: produced(kafka_bootstrap, topic, partitions) > 2_000, 60, "input")
        assert paused.proc is not None
        paused.proc.send_signal(signal.SIGSTOP)
        frozen_at = sum(changelog_ends(kafka_bootstrap, changelog, partitions).values())

        def deleted_past_the_pause() -> bool:
            starts = changelog_starts(kafka_bootstrap, changelog, partitions)
            return sum(starts.values()) > frozen_at

        wait_for(deleted_past_the_pause, 120, "retention to delete past the paused standby")
        paused.proc.send_signal(signal.SIGCONT)
        producer.join(timeout=300)
        assert not producer.is_alive()
        wait_for(lambda: lag(kafka_bootstrap, service, topic, partitions) == 0, 120, "all input")
        wait_for(lambda: settled(nodes, partitions, partitions), 120, "the paused node to rejoin")
        wait_for(lambda: standbys_caught_up(nodes), 60, "standbys to catch up")
        final = assignment(nodes[0])["group"]["partitions"]
    finally:
        if paused.proc is not None and paused.alive():
            paused.proc.send_signal(signal.SIGCONT)
        if producer.is_alive():
            producer.join(timeout=300)
        for n in nodes:
            n.stop()
    log = paused.log_path.read_text()
    assert '"bootstrap_finished"' in log, "the paused node did not copy a checkpoint again"
    check_replicas(final, nodes, reference)
