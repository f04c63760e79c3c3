"""The SQL read model: list and filter aggregates projected from the changelog."""

import os
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from backbone.dev.cluster import wait_until

from tests.conftest import NodeFactory
from tests.test_service import order, register

pytestmark = pytest.mark.kafka

PLURAL = "{{ cookiecutter.aggregate_plural }}"


def postgres_url() -> str:
    """TEST_POSTGRES_URL, the server to test the PostgreSQL read model against.

    SQLite is the embedded default. Without TEST_POSTGRES_URL the PostgreSQL case is skipped,
    visibly, unless BACKBONE_REQUIRE_POSTGRES is set: then it fails.
    """
    base = os.environ.get("TEST_POSTGRES_URL", "")
    if base:
        return base
    if os.environ.get("BACKBONE_REQUIRE_POSTGRES", "").strip().lower() not in ("", "0", "false"):
        pytest.fail(
            "TEST_POSTGRES_URL is not set, and BACKBONE_REQUIRE_POSTGRES says PostgreSQL is "
            "required: point TEST_POSTGRES_URL at a server (postgresql+psycopg://...)",
            pytrace=False,
        )
    pytest.skip("TEST_POSTGRES_URL is not set: no PostgreSQL to test the read model against")


def listing(url: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{url}/{PLURAL}", params=params, timeout=10)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_aggregates_are_listed_and_filtered(node_factory: NodeFactory, database: str) -> None:
    env: dict[str, str] = {}
    if database == "postgresql":
        base = postgres_url()
        schema_db = f"rm_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{schema_db}"'))
        admin.dispose()
        env["READ_MODEL_URL"] = base.rsplit("/", 1)[0] + f"/{schema_db}"
    node = node_factory(**env).start()
    node.wait_ready()
    for i in range(6):
        register(node, f"c-{i}")
    for i in range(3):
        order(node, f"c-{i}", 60_000, i)  # silver

    def three_silver() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = listing(node.url, tier="silver").json()["items"]
        return items if len(items) == 3 else []

    silver = wait_until(three_silver, 60, "three silver rows in the read model")
    assert sorted(row["id"] for row in silver) == ["c-0", "c-1", "c-2"]
    assert all(row["lifetime_value_cents"] == 60_000 for row in silver)
    everyone = listing(node.url, limit=4).json()
    assert len(everyone["items"]) == 4
    assert everyone["next"] == everyone["items"][-1]["id"]
    rest = listing(node.url, limit=4, after=everyone["next"]).json()  # keyset pagination
    assert rest["next"] is None
    ids = [row["id"] for row in everyone["items"] + rest["items"]]
    assert ids == [f"c-{i}" for i in range(6)]
    assert "after=" in listing(node.url, offset=4).json()["detail"]
    bronze = listing(node.url, tier="bronze", order_count=0).json()["items"]
    assert sorted(row["id"] for row in bronze) == ["c-3", "c-4", "c-5"]

    unknown = listing(node.url, colour="red")
    assert unknown.status_code == 400 and "filter by one of" in unknown.json()["detail"]
    wrong_type = listing(node.url, order_count="many")
    assert wrong_type.status_code == 400
    assert listing(node.url, limit=0).status_code == 400
