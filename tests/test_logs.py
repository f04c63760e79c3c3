"""A node's stderr is one JSON object per line, quiet while it only waits for Kafka, and
without secrets: a fresh start logs no errors; with console tracing, spans and metrics are
lines like the others, with the same ids; 4xx answers and refused tokens are logged."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from clustertools import new_service
from conftest import Bake

pytestmark = pytest.mark.kafka

WRONG_TOKEN = "wrong-token-that-must-never-be-logged"


def log_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a node's log, each parsed as one JSON object (fails on any other)."""
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        try:
            parsed = json.loads(text)
        except ValueError:
            pytest.fail(f"line {number} of {path} is not one JSON object: {text[:300]!r}")
        assert isinstance(parsed, dict), f"line {number} is not an object: {text[:300]!r}"
        lines.append(parsed)
    return lines


def register(node_url: str, key: str) -> httpx.Response:
    body = {"type": "customer_registered", "name": "K", "email": "k@x.io"}
    return httpx.post(f"{node_url}/customers/{key}/events", json=body, timeout=10)


def test_a_first_start_on_fresh_topics_logs_no_errors(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    service = new_service("quiet", bake(), kafka_brokers, tmp_path, 4)
    node = service.node(0).start()
    try:
        node.wait_ready(timeout=120)
        assert register(node.url, "c-1").status_code == 202
    finally:
        node.stop()
    lines = log_lines(node.log_path)
    errors = [line for line in lines if line.get("level") in ("error", "critical", "exception")]
    assert not errors, f"a node that only waited logged errors: {errors[:5]}"
    waits = [line for line in lines if line.get("event") == "waiting_for_kafka"]
    assert len(waits) <= 4, f"one line per kind of wait, not {len(waits)}: {waits}"
    assert all(w.get("waiting_for") for w in waits)
    chatter = [
        line
        for line in lines
        if str(line.get("logger", "")).startswith("aiokafka")
        and line.get("event") != "waiting_for_kafka"
    ]
    assert not chatter, f"aiokafka's retries should be folded into waiting_for_kafka: {chatter}"


def test_a_traced_node_writes_one_json_object_per_line_with_the_logs_ids(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    service = new_service(
        "traced",
        bake(),
        kafka_brokers,
        tmp_path,
        2,
        OTEL_EXPORTER="console",
        LOG_LEVEL="debug",  # event_accepted, one line per write, is a debug line
    )
    node = service.node(0).start()
    try:
        node.wait_ready(timeout=120)
        for i in range(3):
            assert register(node.url, f"c-{i}").status_code == 202
        assert httpx.get(f"{node.url}/customers/c-0", timeout=10).status_code == 200
        missing = httpx.get(f"{node.url}/customers/nobody?secret=s3cr3t", timeout=10)
        assert missing.status_code == 404
        bad = httpx.post(f"{node.url}/customers/c-0/events", json={"type": "nope"}, timeout=10)
        assert bad.status_code == 400
        refused = httpx.get(
            f"{node.internal_url}/internal/partitions/0/checkpoint",
            headers={"authorization": f"Bearer {WRONG_TOKEN}"},
            timeout=10,
        )
        assert refused.status_code == 403
    finally:
        node.stop()
    text = node.log_path.read_text()
    lines = log_lines(node.log_path)
    assert WRONG_TOKEN not in text and "s3cr3t" not in text

    spans = [line for line in lines if line.get("event") == "span"]
    assert spans, "no span lines with OTEL_EXPORTER=console"
    for span in spans:
        assert re.fullmatch(r"[0-9a-f]{32}", span["trace_id"]), span
        assert re.fullmatch(r"[0-9a-f]{16}", span["span_id"]), span
    assert "0x" not in json.dumps(spans)
    logged = [line for line in lines if line.get("event") not in ("span", "metrics")]
    span_traces = {span["trace_id"] for span in spans}
    accepted = [line for line in logged if line.get("event") == "event_accepted"]
    assert len(accepted) == 3
    for line in accepted:
        assert line.get("trace_id") in span_traces, f"no span of the request's trace: {line}"

    rejected = {line["status"]: line for line in logged if line.get("event") == "request_rejected"}
    assert set(rejected) >= {400, 404}, f"4xx answers not logged: {rejected}"
    for status, line in rejected.items():
        assert line["level"] in ("info", "warning")
        assert line["method"] in ("GET", "POST")
        assert "?" not in line["path"]
        assert line.get("trace_id") in span_traces, f"{status} logged without its trace id"


def test_a_refused_internal_token_is_logged_without_the_token(
    bake: Bake, kafka_brokers: str, tmp_path: Path
) -> None:
    service = new_service("refused", bake(), kafka_brokers, tmp_path, 1)
    node = service.node(0).start()
    try:
        node.wait_ready(timeout=120)
        refused = httpx.get(
            f"{node.internal_url}/internal/partitions/0/checkpoint",
            headers={"authorization": f"Bearer {WRONG_TOKEN}"},
            timeout=10,
        )
        assert refused.status_code == 403
    finally:
        node.stop()
    assert WRONG_TOKEN not in node.log_path.read_text()
    warnings = [
        line
        for line in log_lines(node.log_path)
        if line.get("level") == "warning" and line.get("status") == 403
    ]
    assert warnings, "a refused internal token left no warning"
    assert warnings[0]["path"] == "/internal/partitions/0/checkpoint"
