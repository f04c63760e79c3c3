"""Cold bootstrap from a peer's checkpoint while the changelog is truncated (issue 5's proof).

Changelog segments are deleted after seconds, so a node that lost its disk cannot replay
the changelog: it must copy a checkpoint from a peer and tail from the checkpoint's offset.
At the end no event is lost or applied twice and its stores equal the actives'.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import httpx
import pytest

from backbone.dev.cluster import wait_until

from clustertools import (
    assignment,
    check_replicas,
    make_stream,
    new_service,
    produce_over_time,
    settled,
    standbys_caught_up,
    status,
    topic_starts,
    truncate_changelog,
)
from conftest import Bake

pytestmark = pytest.mark.kafka

PARTITIONS = 4


def test_a_wiped_node_bootstraps_from_a_peer_and_loses_nothing(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    # Old changelog segments go within seconds: replay alone could not rebuild a store.
    service = new_service(
        "boot",
        bake(),
        kafka_brokers,
        tmp_path,
        PARTITIONS,
        STANDBY_REPLICAS="1",
        MAX_BATCH_RECORDS="2000",
        CHANGELOG_RETENTION_MS="2000",
        CHANGELOG_SEGMENT_MS="1000",
    )
    events, reference = make_stream(keys=1_000, orders=30_000, seed=5)
    node = service.node
    nodes = [node(i).start() for i in range(3)]
    producer = service.load(events, chunk=150, pause=0.25)
    try:
        for n in nodes:
            n.wait_ready(timeout=90)
        wait_until(lambda: settled(nodes, PARTITIONS, PARTITIONS), 60, "3 nodes to settle")
        producer.start()
        wait_until(
            lambda: all(o > 0 for o in topic_starts(kafka_brokers, service.changelog, 4).values()),
            90,
            "retention to delete the first changelog segments",
        )
        assert service.produced() < len(events), "load ended early"

        victim = nodes[1]
        victim.kill()
        shutil.rmtree(victim.data_dir)
        nodes[1] = node(1).start()
        wait_until(lambda: settled(nodes, PARTITIONS, PARTITIONS), 120, "the wiped node to rejoin")

        producer.join(timeout=300)
        assert not producer.is_alive()
        wait_until(lambda: service.lag() == 0, 120, "all input")
        wait_until(lambda: standbys_caught_up(nodes), 60, "standbys to catch up")
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


def test_a_standby_left_behind_by_retention_bootstraps_again(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    """A running standby whose next changelog records were deleted before it read them must
    not skip ahead: it reports the gap and copies a checkpoint again. Node 1 is frozen while
    the changelog moves on and is truncated, then thawed before its session ends."""
    service = new_service(
        "gap",
        bake(),
        kafka_brokers,
        tmp_path,
        1,
        STANDBY_REPLICAS="1",
        MAX_BATCH_RECORDS="500",
        SESSION_TIMEOUT_MS="60000",  # the freeze must not cost node 1 its membership
    )
    events, reference = make_stream(keys=300, orders=4_000, seed=11)
    nodes = [service.node(i).start() for i in range(2)]
    try:
        for n in nodes:
            n.wait_ready(timeout=90)
        view = wait_until(lambda: settled(nodes, 1, 1), 60, "2 nodes to settle")
        [active] = [n for n in nodes if n.name == view["partitions"]["0"]["active"]["node"]]
        [standby] = [n for n in nodes if n is not active]
        asyncio.run(produce_over_time(kafka_brokers, service.topic, events[:2000], 500, 0))
        wait_until(lambda: service.lag() == 0, 60, "the first half")
        wait_until(lambda: standbys_caught_up(nodes), 60, "the standby to catch up")

        assert standby.proc is not None
        os.kill(standby.proc.pid, signal.SIGSTOP)
        try:
            asyncio.run(produce_over_time(kafka_brokers, service.topic, events[2000:], 500, 0))
            wait_until(lambda: service.lag() == 0, 60, "the second half")
            starts = truncate_changelog(kafka_brokers, service.changelog, 1)
            assert starts[0] > 0
        finally:
            os.kill(standby.proc.pid, signal.SIGCONT)

        def bootstrapped_again() -> bool:
            # No record follows the truncation: the standby must notice the gap all the same.
            log = standby.log_path.read_text()
            gap = log.find('"changelog_gap"')
            lag = status(standby).get("standby_lag", {})
            return gap >= 0 and '"bootstrap_finished"' in log[gap:] and lag.get("0") == 0

        wait_until(bootstrapped_again, 90, "the standby to bootstrap again and catch up")
        final = assignment(active)["group"]["partitions"]
    finally:
        for n in nodes:
            n.stop()
    assert final["0"]["active"]["node"] == active.name, "the group rebalanced: test is void"
    check_replicas(final, nodes, reference)
