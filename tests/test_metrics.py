"""``GET /metrics`` (issue 14, ADR 0020): one node on a real broker, with its read model,
applies what was produced; a scrape in Prometheus' text format then reports every event
applied, the dead letters, a batch latency histogram, no consumer lag and no read model
lag, and the families of restore and bootstrap progress, standby lag and unmet assignment
constraints. ``METRICS=off`` removes the route."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from backbone.dev.cluster import NodeProcess, wait_until

from clustertools import make_stream, new_service, produce_over_time
from conftest import Bake

pytestmark = pytest.mark.kafka

PARTITIONS = 4
# Undecodable events: each goes to the dead-letter topic, none is applied.
BROKEN = [(f"k-{i}".encode(), b"not json") for i in range(3)]
# Written through the HTTP API: each is timed by the write histogram, and applied.
POSTED = [f"w-{i}" for i in range(4)]

REQUIRED = {
    "backbone_consumer_lag": "gauge",
    "backbone_batch_duration_seconds": "histogram",
    "backbone_write_duration_seconds": "histogram",
    "backbone_events_applied": "counter",
    "backbone_dead_letters": "counter",
    "backbone_restore_remaining_records": "gauge",
    "backbone_restore_progress_ratio": "gauge",
    "backbone_bootstrap_received_bytes": "gauge",
    "backbone_bootstrap_total_bytes": "gauge",
    "backbone_standby_lag": "gauge",
    "backbone_read_model_lag": "gauge",
    "backbone_assignment_unmet_constraints": "gauge",
    "backbone_partitions": "gauge",
}


def scrape(node: NodeProcess) -> dict[str, Metric]:
    answer = httpx.get(f"{node.url}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(answer.text)}


def value(families: dict[str, Metric], name: str, sample: str | None = None) -> float:
    """The one sample of ``name`` (or the one called ``sample``) without labels."""
    found = [s.value for s in families[name].samples if s.name == (sample or name)]
    assert len(found) == 1, f"{name}: {families[name].samples}"
    return found[0]


def by_partition(families: dict[str, Metric], name: str) -> dict[int, float]:
    return {int(s.labels["partition"]): s.value for s in families[name].samples}


def test_a_scrape_reports_what_the_node_did(bake: Bake, kafka_brokers: str, tmp_path: Path) -> None:
    service = new_service("metrics", bake(), kafka_brokers, tmp_path, PARTITIONS, READ_MODEL="on")
    events, _ = make_stream(keys=20, orders=180, seed=14)
    node = service.node(0).start()
    try:
        node.wait_ready(timeout=120)
        asyncio.run(produce_over_time(kafka_brokers, service.topic, events + BROKEN, 50, 0))
        for key in POSTED:
            body = {"type": "customer_registered", "name": key, "email": f"{key}@x.io"}
            answer = httpx.post(f"{node.url}/customers/{key}/events", json=body, timeout=10)
            assert answer.status_code == 202, answer.text

        def applied() -> dict[str, Metric] | None:
            families = scrape(node)
            total = value(families, "backbone_events_applied", "backbone_events_applied_total")
            dead = value(families, "backbone_dead_letters", "backbone_dead_letters_total")
            lags = by_partition(families, "backbone_consumer_lag")
            done = total + dead == len(events) + len(POSTED) + len(BROKEN)
            done = done and not any(lags.values())
            caught_up = value(families, "backbone_read_model_lag") == 0
            return families if done and caught_up else None

        families = wait_until(applied, timeout=90, what="every event applied and projected")
    finally:
        node.stop()

    missing = {n: t for n, t in REQUIRED.items() if families.get(n, None) is None}
    assert not missing, f"families missing from the scrape: {missing}"
    wrong = {n: families[n].type for n, t in REQUIRED.items() if families[n].type != t}
    assert not wrong, f"families of the wrong type: {wrong}"

    assert value(families, "backbone_events_applied", "backbone_events_applied_total") == len(
        events
    ) + len(POSTED)
    assert value(families, "backbone_dead_letters", "backbone_dead_letters_total") == len(BROKEN)

    # Every partition is this node's, and none lags behind its input.
    assert by_partition(families, "backbone_consumer_lag") == dict.fromkeys(range(PARTITIONS), 0)
    states = {s.labels["state"]: s.value for s in families["backbone_partitions"].samples}
    assert states["active"] == PARTITIONS

    batches = value(
        families, "backbone_batch_duration_seconds", "backbone_batch_duration_seconds_count"
    )
    seconds = value(
        families, "backbone_batch_duration_seconds", "backbone_batch_duration_seconds_sum"
    )
    assert 0 < batches <= len(events) + len(BROKEN)
    assert seconds > 0
    buckets = [
        s for s in families["backbone_batch_duration_seconds"].samples if s.name.endswith("_bucket")
    ]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == batches
    assert [b.value for b in buckets] == sorted(b.value for b in buckets)

    writes = value(
        families, "backbone_write_duration_seconds", "backbone_write_duration_seconds_count"
    )
    assert writes == len(POSTED)
    assert (
        value(families, "backbone_write_duration_seconds", "backbone_write_duration_seconds_sum")
        > 0
    )

    # Restores finished long ago, no bootstrap ran, and one node holds no standby.
    assert all(
        v == 0 for v in by_partition(families, "backbone_restore_remaining_records").values()
    )
    assert all(v == 1 for v in by_partition(families, "backbone_restore_progress_ratio").values())
    assert by_partition(families, "backbone_bootstrap_received_bytes") == {}
    assert by_partition(families, "backbone_standby_lag") == {}
    # One node cannot host the standby replicas the service asks for.
    assert value(families, "backbone_assignment_unmet_constraints") > 0
    assert value(families, "backbone_read_model_alive") == 1


def test_metrics_off_has_no_route(bake: Bake, kafka_brokers: str, tmp_path: Path) -> None:
    service = new_service("nometrics", bake(), kafka_brokers, tmp_path, 1, METRICS="off")
    node = service.node(0).start()
    try:
        node.wait_ready(timeout=120)
        assert httpx.get(f"{node.url}/metrics", timeout=10).status_code == 404
        body = {"type": "customer_registered", "name": "K", "email": "k@x.io"}
        answer = httpx.post(f"{node.url}/customers/c-1/events", json=body, timeout=10)
        assert answer.status_code == 202
    finally:
        node.stop()
