"""Health that tells the truth, on a real broker: ``/health/live`` fails once a task of the
node died while the process lives on, and ``/health/ready`` says why a node is not ready,
among others a partition rebuilt from the events topic after every copy was lost, which is
not ready before it has applied its input up to where it had been."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from backbone.dev.cluster import NodeProcess, wait_until

from clustertools import make_stream, new_service, produce_over_time, truncate_changelog
from conftest import Bake

pytestmark = pytest.mark.kafka


def health(node: NodeProcess, which: str) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"{node.url}/health/{which}", timeout=5)
    return answer.status_code, answer.json()


@pytest.mark.parametrize(
    ("task", "said"),
    [
        ("processor", "the processor task was cancelled"),
        ("changelog-reader", "the changelog reader task was cancelled"),
    ],
)
def test_liveness_fails_once_a_task_of_the_node_died(
    bake: Bake, kafka_brokers: str, tmp_path: Path, task: str, said: str
) -> None:
    service = new_service("live", bake(), kafka_brokers, tmp_path, 2, STANDBY_REPLICAS="0")
    node = service.node(0, faults={"FAULT_CANCEL_ON_SIGUSR1": task}).start()
    try:
        node.wait_ready(timeout=90)
        assert health(node, "live") == (200, {"status": "ok"})
        assert node.proc is not None
        node.proc.send_signal(signal.SIGUSR1)
        code, body = wait_until(
            lambda: (got := health(node, "live"))[0] == 503 and got, 30, "liveness to fail"
        )
        assert body["reasons"] == [said] and said in body["reason"]
        code, ready = health(node, "ready")
        assert code == 503 and not ready["ready"]
        assert said in ready["reasons"]
        assert node.alive(), "the process lives on: only the probe can tell"
    finally:
        node.stop()


def test_a_partition_rebuilt_from_input_is_not_ready_until_it_caught_up(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    service = new_service(
        "rebuild", bake(), kafka_brokers, tmp_path, 1, STANDBY_REPLICAS="0", MAX_BATCH_RECORDS="50"
    )
    events, reference = make_stream(keys=50, orders=1_500, seed=7)
    asyncio.run(produce_over_time(kafka_brokers, service.topic, events, 500, 0))
    node = service.node(0).start()
    try:
        node.wait_ready(timeout=90)
        wait_until(lambda: service.lag() == 0, 60, "all input")
    finally:
        node.stop()
    # Every copy is lost: the only disk, and the changelog's records.
    shutil.rmtree(node.data_dir)
    truncate_changelog(kafka_brokers, service.changelog, 1)

    # Slow batches, so that the rebuild is seen under way.
    node = service.node(0, faults={"FAULT_DELAY_MS": "200"}).start()
    try:
        status = wait_until(
            lambda: (s := node.status()) and s.get("rebuilt_from_input") and s, 60, "the rebuild"
        )
        assert status["ready"] is False
        assert status["partitions"] == {"0": "rebuilding"}
        [rebuild] = status["rebuilt_from_input"]
        assert rebuild["from_offset"] == 0 and rebuild["caught_up_at"] == len(events)
        assert rebuild["history_lost"] is False and rebuild["finished"] is None
        [reason] = status["reasons"]
        assert reason.startswith("partition 0 is rebuilding from the events topic")
        assert f"of {len(events)}" in reason
        assert httpx.get(f"{node.url}/customers/k-1", timeout=5).status_code == 503

        done = node.wait_ready(timeout=120)
        assert done["reasons"] == [] and done["partitions"] == {"0": "active"}
        [rebuild] = done["rebuilt_from_input"]  # reported after it caught up, too
        assert rebuild["finished"] is not None
        for key, (total, count) in reference.items():
            state = httpx.get(f"{node.url}/customers/{key}", timeout=5).json()
            assert (state["lifetime_value_cents"], state["order_count"]) == (total, count), key
    finally:
        node.stop()
