"""The SQL read model in operation, on SQLite and on the real PostgreSQL (TEST_POSTGRES_URL;
``make test`` starts one), with real nodes on a real Kafka where a node runs:

- the table equals the aggregates after SIGKILLs of the node mid-projection and restarts;
- ``readmodel rebuild`` swaps the table while list requests in a loop all answer 200;
- a dead projector makes ``/health/live`` fail with the reason.

The migration and keyset pagination tests are in test_readmodel_schema.py."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from test_readmodel_epochs import postgres_url

from backbone.dev.cluster import NodeProcess, wait_until

from clustertools import Reference, Service, make_stream, new_service
from conftest import Bake

pytestmark = pytest.mark.kafka

PARTITIONS = 4
PLURAL = "customers"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The node's settings for a read model of each kind: SQLite under DATA_DIR (the
    default), or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield {}
        return
    base = postgres_url()
    name = f"rmops_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield {"READ_MODEL_URL": base.rsplit("/", 1)[0] + f"/{name}"}
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def service_with_read_model(
    bake: Bake, brokers: str, workdir: Path, database: dict[str, str]
) -> Service:
    return new_service(
        "rm",
        bake(),
        brokers,
        workdir,
        PARTITIONS,
        READ_MODEL="on",
        CHANGELOG_RETENTION_MS="-1",
        **database,
    )


def read_model_status(node: NodeProcess) -> dict[str, Any]:
    try:
        body = httpx.get(f"{node.url}/health/ready", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return {}
    section: dict[str, Any] = body.get("read_model") or {}
    return section


def every_row(url: str) -> list[dict[str, Any]]:
    """The whole table through keyset pages: each id once, in order."""
    rows: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if after is not None:
            params["after"] = after
        page = httpx.get(f"{url}/{PLURAL}", params=params, timeout=30)
        assert page.status_code == 200, page.text
        body = page.json()
        rows += body["items"]
        after = body["next"]
        if after is None:
            return rows


def differences(rows: list[dict[str, Any]], reference: Reference) -> dict[str, Any]:
    ids = [row["id"] for row in rows]
    assert ids == sorted(set(ids)), "keyset pages repeated a row or left the id order"
    got = {row["id"]: (row["lifetime_value_cents"], row["order_count"]) for row in rows}
    return {k: (got.get(k), v) for k, v in reference.items() if got.get(k) != v}


def caught_up(service: Service, node: NodeProcess) -> bool:
    return service.lag() == 0 and read_model_status(node).get("lag") == 0


def test_the_table_equals_the_aggregates_after_sigkills_mid_projection(
    bake: Bake, kafka_brokers: str, tmp_path: Path, database: dict[str, str]
) -> None:
    service = service_with_read_model(bake, kafka_brokers, tmp_path, database)
    events, reference = make_stream(keys=3_000, orders=57_000, seed=13)
    producer = service.load(events, chunk=500, pause=0.15)
    node = service.node(0).start()
    node.wait_ready(timeout=90)
    producer.start()
    kills = 0
    try:
        while kills < 3 and producer.is_alive():
            # Mid-projection: the projector of this run has written rows and events still
            # arrive, so it is at work; the kill lands anywhere in its loop.
            def projecting(current: NodeProcess = node) -> bool:
                return read_model_status(current).get("rows_written", 0) >= 300

            wait_until(projecting, 120, f"the projector at work before kill {kills}")
            node.kill()
            kills += 1
            node = service.node(0).start()
            node.wait_ready(timeout=90)
        assert kills >= 2, "the load ended before two kills"
        producer.join(timeout=300)
        assert not producer.is_alive(), "the producer did not finish"
        wait_until(lambda: caught_up(service, node), 300, "the read model caught up")
        wrong = differences(every_row(node.url), reference)
        assert not wrong, f"{len(wrong)} rows differ: {list(wrong.items())[:3]}"
    finally:
        node.stop()


def test_a_rebuild_swaps_without_a_failed_list_request(
    bake: Bake, kafka_brokers: str, tmp_path: Path, database: dict[str, str]
) -> None:
    service = service_with_read_model(bake, kafka_brokers, tmp_path, database)
    events, reference = make_stream(keys=2_000, orders=38_000, seed=17)
    half = len(events) // 2
    node = service.node(0).start()
    node.wait_ready(timeout=90)
    first = service.load(events[:half], chunk=5_000, pause=0.0)
    first.start()
    first.join(timeout=300)
    wait_until(lambda: caught_up(service, node), 300, "the first half projected")

    answers: list[int] = []
    stop = threading.Event()

    def list_in_a_loop() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                page = client.get(f"{node.url}/{PLURAL}", params={"limit": 100})
                answers.append(page.status_code)
                if page.status_code == 200:
                    assert len(page.json()["items"]) == 100

    lister = threading.Thread(target=list_in_a_loop, daemon=True)
    lister.start()
    second = service.load(events[half:], chunk=1_000, pause=0.05)  # more while it rebuilds
    second.start()
    try:
        env = {**node.env, "LOG_LEVEL": "warning"}
        done = subprocess.run(
            [sys.executable, "-m", "customer_backbone", "readmodel", "rebuild"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert lines[0]["event"] == "rebuild_progress" and lines[-1]["event"] == "rebuild_done"
        assert any(line["event"] == "rebuild_swap" for line in lines)
        second.join(timeout=300)
        wait_until(lambda: caught_up(service, node), 300, "the read model caught up")
        wait_until(lambda: len(answers) > 10, 60, "list requests after the swap")
    finally:
        stop.set()
        lister.join(timeout=60)
    try:
        assert answers and set(answers) == {200}, f"list answers: {sorted(set(answers))}"
        wrong = differences(every_row(node.url), reference)
        assert not wrong, f"{len(wrong)} rows differ: {list(wrong.items())[:3]}"
    finally:
        node.stop()


def drop_table(node: NodeProcess, database: dict[str, str]) -> None:
    if "READ_MODEL_URL" in database:
        engine = sa.create_engine(database["READ_MODEL_URL"])
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {PLURAL}"))
        engine.dispose()
        return
    db = sqlite3.connect(node.data_dir / "readmodel.db", timeout=60)
    db.execute(f"DROP TABLE {PLURAL}")
    db.commit()
    db.close()


def test_a_dead_projector_makes_the_node_unhealthy(
    bake: Bake, kafka_brokers: str, tmp_path: Path, database: dict[str, str]
) -> None:
    service = service_with_read_model(bake, kafka_brokers, tmp_path, database)
    node = service.node(0).start()
    try:
        node.wait_ready(timeout=90)
        assert httpx.get(f"{node.url}/health/live", timeout=5).status_code == 200
        assert read_model_status(node)["alive"] is True
        drop_table(node, database)  # every transaction of the projector fails from now on
        accepted = httpx.post(
            f"{node.url}/{PLURAL}/c-1/events",
            json={"type": "customer_registered", "name": "A", "email": "a@x.io"},
            timeout=10,
        )
        assert accepted.status_code == 202

        def dead() -> httpx.Response | None:
            live = httpx.get(f"{node.url}/health/live", timeout=5)
            return live if live.status_code == 503 else None

        live = wait_until(dead, 120, "/health/live to fail")
        assert "read model projector died" in live.json()["reason"]
        assert PLURAL in live.json()["reason"]
        ready = httpx.get(f"{node.url}/health/ready", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["read_model"]["alive"] is False
    finally:
        node.stop()
