"""The SQL read model skips a zombie's changelog records (backbone.changelog.epochs), also after a
restart: the writer epoch is stored with the offset. Runs on a real SQLite database and on the
PostgreSQL at TEST_POSTGRES_URL (``make test`` starts one). Without it the PostgreSQL case fails
under ``make test`` and CI (BACKBONE_REQUIRE_POSTGRES, CI) and is skipped, visibly, elsewhere."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa

from backbone.changelog.epochs import claim_record, epoch_header
from backbone.codec import AggregateCodec
from backbone.readmodel import Projection, ReadModel


class Thing(msgspec.Struct):
    id: str
    n: int


def projection() -> Projection[Thing]:
    table = sa.Table(
        "things",
        sa.MetaData(),
        sa.Column("id", sa.String(50), primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
    )

    def to_row(key: str, state: Thing) -> dict[str, Any]:
        return {"id": key, "n": state.n}

    return Projection(table, to_row)


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    offset: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)


CODEC = AggregateCodec(Thing)


def thing(offset: int, key: str, n: int, epoch: int) -> Record:
    value = CODEC.encode(offset, Thing(id=key, n=n))
    return Record(key.encode(), value, offset, [epoch_header(epoch)])


def claim(offset: int, epoch: int) -> Record:
    key, value, headers = claim_record(epoch)
    return Record(key, value, offset, headers)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def postgres_url() -> str:
    """TEST_POSTGRES_URL; a failure when it is missing where PostgreSQL is required."""
    base = os.environ.get("TEST_POSTGRES_URL", "")
    if base:
        return base
    if _flag("BACKBONE_REQUIRE_POSTGRES") or _flag("CI"):
        pytest.fail(
            "TEST_POSTGRES_URL is not set, and PostgreSQL is required here "
            "(BACKBONE_REQUIRE_POSTGRES or CI is set): run `make test`, which starts one, "
            "or point TEST_POSTGRES_URL at a server",
            pytrace=False,
        )
    pytest.skip("TEST_POSTGRES_URL is not set: `make test` starts a PostgreSQL")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'rm.db'}"
        return
    base = postgres_url()
    name = f"epochs_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def rows(model: ReadModel[Thing]) -> dict[str, int]:
    return {row["id"]: row["n"] for row in model.query({}, limit=100)}


def test_stale_records_are_skipped_across_a_restart(url: str) -> None:
    model = ReadModel(url, projection(), Thing)
    written = model.apply(
        "t",
        0,
        [
            thing(0, "a", 1, epoch=1),
            claim(1, epoch=2),
            thing(2, "a", 2, epoch=2),
            thing(3, "b", 9, epoch=1),  # a zombie of epoch 1 after the claim of epoch 2
        ],
    )
    assert written == 1 and rows(model) == {"a": 2}
    model.close()

    restarted = ReadModel(url, projection(), Thing)
    assert restarted.next_offsets("t") == {0: 4}
    restarted.apply("t", 0, [thing(4, "b", 10, epoch=1), thing(5, "c", 3, epoch=2)])
    assert rows(restarted) == {"a": 2, "c": 3}
    restarted.close()


def test_a_database_without_the_epoch_column_gets_it(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # as releases before writer epochs created it
        conn.execute(
            sa.text(
                "CREATE TABLE projection_offsets (topic VARCHAR(255) NOT NULL, partition "
                "INTEGER NOT NULL, next_offset BIGINT NOT NULL, PRIMARY KEY (topic, partition))"
            )
        )
        conn.execute(sa.text("INSERT INTO projection_offsets VALUES ('t', 0, 7)"))
    model = ReadModel(url, projection(), Thing)
    assert model.next_offsets("t") == {0: 7}
    model.apply("t", 0, [thing(7, "a", 1, epoch=3), thing(8, "b", 1, epoch=2)])
    assert rows(model) == {"a": 1}
    model.close()
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT writer_epoch FROM projection_offsets")).all()
    engine.dispose()
    assert [tuple(row) for row in stored] == [(3,)]
