"""The service against a real Kafka: HTTP in, aggregate out, crashes, wiped disks, DLQ."""

import asyncio
import html
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from backbone.dev.cluster import NodeProcess
from backbone.dev.cluster import wait_until as wait_for
from backbone.domain import event_type_name
from backbone.store import PartitionStore

from {{ cookiecutter.package_name }} import __version__
from {{ cookiecutter.package_name }}.app import SERVICE
from {{ cookiecutter.package_name }}.domain import DOMAIN
from tests.conftest import NodeFactory

pytestmark = pytest.mark.kafka

PLURAL = "{{ cookiecutter.aggregate_plural }}"


def post(node: NodeProcess, aggregate_id: str, event: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{node.url}/{PLURAL}/{aggregate_id}/events", json=event, timeout=10)


def get_state(node: NodeProcess, aggregate_id: str) -> dict[str, Any] | None:
    """The aggregate, read as a client should: a 503 (a rebalance) is asked again after
    its Retry-After, for up to 30 s."""
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(f"{node.url}/{PLURAL}/{aggregate_id}", timeout=10)
        if response.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(float(response.headers.get("retry-after", "1")))
    if response.status_code == 404:
        return None
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def register(node: NodeProcess, aggregate_id: str) -> None:
    event = {"type": "customer_registered", "name": "Ada", "email": "ada@example.com"}
    assert post(node, aggregate_id, event).status_code == 202


def order(node: NodeProcess, aggregate_id: str, cents: int, n: int) -> None:
    event = {"type": "order_placed", "order_id": f"o-{n}", "amount_cents": cents}
    response = post(node, aggregate_id, event)
    assert response.status_code == 202, response.text


def state_with(node: NodeProcess, aggregate_id: str, **expected: Any) -> Callable[[], Any]:
    def check() -> Any:
        state = get_state(node, aggregate_id)
        if state is not None and all(state.get(k) == v for k, v in expected.items()):
            return state
        return None

    return check


def test_posted_events_fold_into_the_aggregate(node_factory: NodeFactory) -> None:
    node = node_factory().start()
    node.wait_ready()
    register(node, "c-1")
    accepted = post(
        node, "c-1", {"type": "order_placed", "order_id": "o-1", "amount_cents": 60_000}
    )
    assert accepted.status_code == 202
    body = accepted.json()
    assert body["type"] == "order_placed" and body["offset"] >= 0 and body["partition"] >= 0
    state = wait_for(state_with(node, "c-1", order_count=1), what="the order to be applied")
    assert state["lifetime_value_cents"] == 60_000
    assert state["tier"] == "silver"
    assert get_state(node, "nobody") is None


def test_bad_requests_get_a_4xx_that_names_the_problem(node_factory: NodeFactory) -> None:
    node = node_factory(MAX_BODY_BYTES="1024").start()
    node.wait_ready()
    bad_field = post(node, "c-1", {"type": "order_placed", "order_id": "o", "amount_cents": "ten"})
    assert bad_field.status_code == 400
    assert "$.amount_cents" in bad_field.json()["detail"]
    missing = post(node, "c-1", {"type": "customer_registered", "name": "Ada"})
    assert missing.status_code == 400 and "email" in missing.json()["detail"]
    unknown = post(node, "c-1", {"type": "teleported"})
    assert unknown.status_code == 400 and "known event types" in unknown.json()["detail"]
    emitted_only = post(node, "c-1", {"type": "tier_changed", "previous": "a", "tier": "b"})
    assert emitted_only.status_code == 422
    not_json = httpx.post(f"{node.url}/{PLURAL}/c-1/events", content=b"{nope", timeout=10)
    assert not_json.status_code == 400 and "malformed JSON" in not_json.json()["detail"]
    huge = {"type": "customer_registered", "name": "A" * 5000, "email": "a@b.cd"}
    assert post(node, "c-1", huge).status_code == 413
    misspelt = post(node, "c-1", {"type": "profile_updated", "nmae": "Bob"})
    assert misspelt.status_code == 400 and "unknown field `nmae`" in misspelt.json()["detail"]


def test_ids_breaking_the_rule_get_a_400_stating_it(node_factory: NodeFactory) -> None:
    node = node_factory().start()
    node.wait_ready()
    event = {"type": "customer_registered", "name": "Ada", "email": "ada@example.com"}
    internal = f"{node.internal_url}/internal/aggregates"
    token = {"authorization": "Bearer test-internal-token"}
    # httpx sends these escapes as they are: the raw path reaches the node unchanged.
    for raw_id in ["%2E%2E", "a%00b", "a%0Ab", "a%FFb", "a%2Fb", "a/b"]:
        posted = httpx.post(f"{node.url}/{PLURAL}/{raw_id}/events", json=event, timeout=10)
        got = httpx.get(f"{node.url}/{PLURAL}/{raw_id}", timeout=10)
        answers = [posted, got]
        if "/" not in raw_id and "%2F" not in raw_id:
            answers.append(httpx.get(f"{internal}/{raw_id}", headers=token, timeout=10))
        for answer in answers:
            assert answer.status_code == 400, (raw_id, answer.request.url, answer.text)
            assert "not '.' or '..', with no '/'" in answer.json()["detail"]


def test_the_openapi_document_describes_each_accepted_event(node_factory: NodeFactory) -> None:
    node = node_factory().start()
    node.wait_ready()
    document = httpx.get(f"{node.url}/schema/openapi.json", timeout=10).json()
    assert document["info"] == {"title": SERVICE.title, "version": __version__}
    events = document["paths"]["/" + PLURAL + "/{aggregate_id}/events"]["post"]
    union = events["requestBody"]["content"]["application/json"]["schema"]
    assert union["discriminator"]["propertyName"] == "type"
    accepted = {event_type_name(t) for t in DOMAIN.handlers.event_types}
    assert set(union["discriminator"]["mapping"]) == accepted
    schemas = document["components"]["schemas"]
    for name, ref in union["discriminator"]["mapping"].items():
        schema = schemas[ref.rsplit("/", 1)[1]]
        assert schema["properties"]["type"] == {"enum": [name]}
        assert schema["additionalProperties"] is False
    page = httpx.get(f"{node.url}/schema", timeout=10)
    assert page.status_code == 200 and html.escape(document["info"]["title"]) in page.text
    assert "https://" not in page.text and "<script" not in page.text


# The example domain's rules, restated here as the reference the service is checked against:
# the expected state is folded in the test from the events it sent, never read from the service.
REFERENCE_TIERS = (("platinum", 1_000_000), ("gold", 250_000), ("silver", 50_000), ("bronze", 0))


def reference_fold(aggregate_id: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    """The state the events imply, each applied exactly once and in order."""
    state: dict[str, Any] = {}
    for event in events:
        kind = event["type"]
        if kind == "customer_registered":
            state = {
                "id": aggregate_id,
                "name": event["name"],
                "email": event["email"],
                "lifetime_value_cents": 0,
                "order_count": 0,
                "refunded_cents": 0,
                "loyalty_points": 0,
                "tier": "bronze",
                "version": 0,
            }
        elif kind == "profile_updated":
            state["name"] = event.get("name") or state["name"]
            state["email"] = event.get("email") or state["email"]
        elif kind == "order_placed":
            state["lifetime_value_cents"] += event["amount_cents"]
            state["order_count"] += 1
        elif kind == "order_refunded":
            assert event["amount_cents"] <= state["lifetime_value_cents"], "a refund too big"
            state["lifetime_value_cents"] -= event["amount_cents"]
            state["refunded_cents"] += event["amount_cents"]
        elif kind == "loyalty_points_earned":
            state["loyalty_points"] += event["points"]
        else:
            raise AssertionError(f"no reference rule for {kind}")
        value = state["lifetime_value_cents"]
        state["tier"] = next(name for name, floor in REFERENCE_TIERS if value >= floor)
        state["version"] += 1
    return state


def test_sigkill_and_restart_loses_nothing_and_applies_nothing_twice(
    node_factory: NodeFactory,
) -> None:
    """After a SIGKILL with events in flight and a restart, every aggregate's whole state is
    what the events sent imply, each applied once: compared with reference_fold, not with
    anything the service reports."""
    ids = [f"c-{i}" for i in range(8)]
    sent: dict[str, list[dict[str, Any]]] = {aggregate_id: [] for aggregate_id in ids}

    def send(node: NodeProcess, aggregate_id: str, event: dict[str, Any]) -> None:
        response = post(node, aggregate_id, event)
        assert response.status_code == 202, response.text
        sent[aggregate_id].append(event)

    def lifetime(aggregate_id: str) -> int:
        return int(reference_fold(aggregate_id, sent[aggregate_id])["lifetime_value_cents"])

    def traffic(node: NodeProcess, numbers: range) -> None:
        """Orders big enough to cross tiers, refunds, points and profile changes."""
        for n in numbers:
            aggregate_id = ids[n % len(ids)]
            if n % 7 == 3 and lifetime(aggregate_id) >= 1_000:
                event = {"type": "order_refunded", "order_id": f"o-{n}", "amount_cents": 1_000}
            elif n % 5 == 4:
                event = {"type": "loyalty_points_earned", "points": n}
            elif n % 11 == 6:
                event = {"type": "profile_updated", "email": f"{aggregate_id}-{n}@example.com"}
            else:
                cents = 250 * (n % len(ids) + 1) ** 3 + n  # a tier apart, ids[7] platinum
                event = {"type": "order_placed", "order_id": f"o-{n}", "amount_cents": cents}
            send(node, aggregate_id, event)

    def reaches(node: NodeProcess, aggregate_id: str) -> Callable[[], Any]:
        """The service's state once it has applied as many events as were sent, or more."""
        version = len(sent[aggregate_id])

        def check() -> Any:
            state = get_state(node, aggregate_id)
            return state if state is not None and state["version"] >= version else None

        return check

    node = node_factory().start()
    node.wait_ready()
    for i, aggregate_id in enumerate(ids):
        name, email = f"Customer {i}", f"{aggregate_id}@example.com"
        send(node, aggregate_id, {"type": "customer_registered", "name": name, "email": email})
    traffic(node, range(0, 40))
    wait_for(reaches(node, ids[0]), what="the first events to be applied before the crash")
    traffic(node, range(40, 80))  # still in flight when the node dies
    node.kill()

    restarted = node_factory().start()  # same name: same data dir and static member id
    restarted.wait_ready()
    traffic(restarted, range(80, 120))

    expected = {key: reference_fold(key, events) for key, events in sent.items()}
    assert {state["tier"] for state in expected.values()} == {name for name, _ in REFERENCE_TIERS}
    actual = {
        aggregate_id: wait_for(reaches(restarted, aggregate_id), what=f"{aggregate_id} to catch up")
        for aggregate_id in ids
    }
    for aggregate_id, state in actual.items():
        unknown = sorted(state.keys() - expected[aggregate_id].keys())
        assert not unknown, (
            f"the service's {aggregate_id} has fields that reference_fold does not make: "
            f"{unknown}. Teach reference_fold the aggregate's new fields and events"
        )
    assert actual == expected


def test_a_wiped_disk_is_rebuilt_from_the_changelog(node_factory: NodeFactory) -> None:
    node = node_factory().start()
    node.wait_ready()
    for i in range(5):
        register(node, f"c-{i}")
        order(node, f"c-{i}", 100 * (i + 1), i)
    before = {
        f"c-{i}": wait_for(state_with(node, f"c-{i}", order_count=1), what=f"c-{i} applied")
        for i in range(5)
    }
    node.kill()
    shutil.rmtree(node.data_dir)
    restarted = node_factory().start()
    restarted.wait_ready()
    after = {f"c-{i}": get_state(restarted, f"c-{i}") for i in range(5)}
    assert after == before


def test_bad_records_go_to_the_dlq_and_the_partition_goes_on(
    node_factory: NodeFactory, kafka_brokers: str, service_name: str
) -> None:
    node = node_factory().start()
    node.wait_ready()
    register(node, "c-1")
    wait_for(state_with(node, "c-1", version=1), what="registration")

    async def produce_bad_then_good() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_brokers)
        await producer.start()
        try:
            topic = f"{service_name}.events"
            await producer.send_and_wait(topic, b"\x00\x01 garbage", key=b"c-1")
            await producer.send_and_wait(topic, b'{"type": "teleported"}', key=b"c-1")
            good = {"type": "loyalty_points_earned", "points": 5}
            await producer.send_and_wait(topic, json.dumps(good).encode(), key=b"c-1")
        finally:
            await producer.stop()

    asyncio.run(produce_bad_then_good())
    wait_for(state_with(node, "c-1", loyalty_points=5), what="the good event after bad ones")

    async def read_dlq() -> list[Any]:
        consumer = AIOKafkaConsumer(
            f"{service_name}.dlq", bootstrap_servers=kafka_brokers, auto_offset_reset="earliest"
        )
        await consumer.start()
        records: list[Any] = []
        try:
            deadline = time.monotonic() + 30
            while len(records) < 2 and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for part in batch.values():
                    records.extend(part)
        finally:
            await consumer.stop()
        return records

    letters = asyncio.run(read_dlq())
    assert [r.value for r in letters] == [b"\x00\x01 garbage", b'{"type": "teleported"}']
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        assert headers["dlq-reason"] == "invalid_event"
        assert headers["dlq-source-topic"] == f"{service_name}.events"
        assert int(headers["dlq-source-offset"]) >= 1
        assert headers["dlq-error"]


def test_dlq_replay_resubmits_chosen_records_after_a_fix(
    node_factory: NodeFactory, kafka_brokers: str, service_name: str
) -> None:
    """An order for an unregistered customer is rejected; after registering, replay it."""
    node = node_factory().start()
    node.wait_ready()
    order(node, "late-1", 700, 1)
    wait_for(lambda: (node.status() or {}).get("dead_letters") == 1, what="the dead letter")
    register(node, "late-1")
    wait_for(state_with(node, "late-1", version=1), what="registration")
    env = {**node.env, "KAFKA_BOOTSTRAP_SERVERS": kafka_brokers, "SERVICE_NAME": service_name}
    command = [sys.executable, "-m", "{{ cookiecutter.package_name }}", "dlq", "replay"]
    dry = subprocess.run(
        [*command, "--reason", "rejected", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr
    assert "would replay 1 of 1 dead letters" in dry.stdout
    assert "is not registered" in dry.stdout
    done = subprocess.run(
        [*command, "--reason", "rejected"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "replayed 1 of 1 dead letters" in done.stdout
    state = wait_for(state_with(node, "late-1", order_count=1), what="the replayed order")
    assert state["lifetime_value_cents"] == 700


def test_a_store_ahead_of_a_recreated_changelog_is_refused_with_advice(
    node_factory: NodeFactory, kafka_brokers: str, service_name: str
) -> None:
    node = node_factory(PARTITIONS="1").start()
    node.wait_ready()
    register(node, "c-1")
    wait_for(state_with(node, "c-1", version=1), what="registration")
    node.kill()
    changelog = f"{service_name}.{{ cookiecutter.aggregate_name }}-changelog"

    async def changelog_exists(delete: bool) -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_brokers)
        await admin.start()
        try:
            if delete:
                await admin.delete_topics([changelog])
            return changelog in await admin.list_topics()
        finally:
            await admin.close()

    asyncio.run(changelog_exists(delete=True))
    wait_for(lambda: not asyncio.run(changelog_exists(delete=False)), 60, "the changelog to go")
    restarted = node_factory(PARTITIONS="1").start()
    status = wait_for(
        lambda: (restarted.status() or {}).get("failure"), what="the restore to be refused"
    )
    assert "was recreated or truncated" in status
    assert "Delete" in status
    assert (restarted.status() or {}).get("ready") is False


def test_one_trace_runs_from_the_http_request_to_the_handler(node_factory: NodeFactory) -> None:
    node = node_factory(OTEL_EXPORTER="console", LOG_LEVEL="debug").start()
    node.wait_ready()
    register(node, "traced-1")
    wait_for(state_with(node, "traced-1", version=1), what="registration")
    node.stop()  # flushes the span processor
    lines = [json.loads(line) for line in node.log_path.read_text().splitlines()]
    spans = [(line["name"], line["trace_id"]) for line in lines if line["event"] == "span"]
    post = {trace for name, trace in spans if name == f"POST /{PLURAL}/traced-1/events"}
    handled = {trace for name, trace in spans if name == "process event"}
    assert post and post & handled, spans
    accepted = [line for line in lines if line["event"] == "event_accepted"]
    assert accepted and accepted[0]["trace_id"] in post


def test_checkpoints_need_the_internal_token(node_factory: NodeFactory) -> None:
    node = node_factory(PARTITIONS="1").start()
    node.wait_ready()
    url = f"{node.internal_url}/internal/partitions/0/checkpoint"
    assert httpx.get(url, timeout=10).status_code == 401
    wrong = httpx.get(url, headers={"authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 403
    elsewhere = f"{node.internal_url}/internal/partitions/7/checkpoint"
    good = {"authorization": "Bearer test-internal-token"}
    assert httpx.get(elsewhere, headers=good, timeout=10).status_code == 404
    with httpx.stream("GET", url, headers=good, timeout=10) as response:
        assert response.status_code == 200
        first = next(response.iter_bytes())
    assert b"MANIFEST.json" in first[:100]
    public = httpx.get(f"{node.url}/internal/partitions/0/checkpoint", headers=good, timeout=10)
    assert public.status_code == 404, "checkpoints must never be served on the public port"


def test_bootstrap_command_installs_a_peers_checkpoint(node_factory: NodeFactory) -> None:
    peer = node_factory(PARTITIONS="1").start()
    peer.wait_ready()
    for i in range(20):
        register(peer, f"b-{i}")
    wait_for(state_with(peer, "b-19", version=1), what="the registrations")
    target = node_factory("offline", PARTITIONS="1")  # never started: its data dir is empty
    command = [sys.executable, "-m", "{{ cookiecutter.package_name }}", "bootstrap"]
    wrong = subprocess.run(
        [*command, "--partition", "3"], env=target.env, capture_output=True, text=True
    )
    assert wrong.returncode == 2 and "partition 3 does not exist" in wrong.stderr
    done = subprocess.run(
        [*command, "--partition", "0", "--from", peer.internal_url],
        env=target.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "installed partition 0" in done.stdout
    store = PartitionStore(target.data_dir / "{{ cookiecutter.aggregate_name }}" / "g0" / "0", 0)
    try:
        keys = {key for key, _ in store.items()}
    finally:
        store.close()
    assert {f"b-{i}".encode() for i in range(20)} <= keys
