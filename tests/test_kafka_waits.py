"""aiokafka's retries while a node waits for Kafka fold into one line per kind of wait."""

from __future__ import annotations

import io
import json
import logging

import pytest

from backbone import observability
from backbone.observability import KafkaWaits

COORDINATOR = "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError"
LEADER = "Failed fetch offsets from 0: [Error 6] NotLeaderForPartitionError: TopicPartition(..)"


def test_one_line_per_kind_of_wait_then_an_error_if_it_lasts() -> None:
    waits = KafkaWaits(quiet=30, patience=120)
    first = waits.fold(COORDINATOR, now=0)
    assert first is not None and first.event == "waiting_for_kafka"
    assert dict(first.fields)["waiting_for"] == "the group coordinator"
    assert all(waits.fold(COORDINATOR, now=t) == observability.Fold(None) for t in range(1, 20))
    leader = waits.fold(LEADER, now=5)
    assert leader is not None and leader.event == "waiting_for_kafka"
    assert waits.fold("Marking the coordinator dead (node 0)for group g.", now=21) is not None
    late = [waits.fold(COORDINATOR, now=t) for t in range(22, 130, 5)]
    escalated = [f for f in late if f is not None and f.event == "kafka_unavailable"]
    assert len(escalated) == 1 and escalated[0].level == logging.ERROR
    # After a quiet spell, a new wait is a new episode: one line again.
    again = waits.fold(COORDINATOR, now=500)
    assert again is not None and again.event == "waiting_for_kafka"
    assert waits.fold("Heartbeat session expired - marking coordinator dead", now=501) is None
    assert waits.fold("OffsetCommit failed for group g", now=502) is None


def test_the_stderr_handler_folds_aiokafka_and_keeps_other_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setattr(observability, "_waits", KafkaWaits())
    observability.configure_logging("info")
    try:
        coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
        for _ in range(23):
            coordinator.error(
                "Group Coordinator Request failed: %s", "GroupCoordinatorNotAvailableError"
            )
        for _ in range(16):
            logging.getLogger("aiokafka.consumer.fetcher").error(LEADER)
        coordinator.warning("Heartbeat failed for group g because it is rebalancing")
        coordinator.error("Heartbeat session expired - marking coordinator dead")
    finally:
        monkeypatch.undo()
        observability.configure_logging("info")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    waits = [line for line in lines if line["event"] == "waiting_for_kafka"]
    assert [w["waiting_for"] for w in waits] == ["the group coordinator", "partition leaders"]
    assert all(w["level"] == "warning" and w["detail"] for w in waits)
    assert [line["level"] for line in lines if "rebalancing" in line["event"]] == ["info"]
    errors = [line["event"] for line in lines if line["level"] == "error"]
    assert errors == ["Heartbeat session expired - marking coordinator dead"]
