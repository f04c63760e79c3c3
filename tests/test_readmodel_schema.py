"""The read model's schema under Alembic, and keyset listing, on a real SQLite database and
on the PostgreSQL at TEST_POSTGRES_URL (the ``url`` fixture of test_readmodel_epochs):

- a team's migration, generated with ``alembic revision --autogenerate``, adds a column to
  a populated database, whose rows keep their values and get the column's default;
- a database of the release before migrations (tables, no version table) is stamped and
  upgraded, its rows kept;
- nodes starting at once on one empty database both get the schema;
- keyset pagination returns every row once, in order, with and without a filter."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
import structlog
from alembic import command
from test_readmodel_epochs import Record, epoch_header, url  # noqa: F401 (fixture)

from backbone.codec import AggregateCodec
from backbone.readmodel import Projection, ReadModel, ReadModelUnavailableError
from backbone.readmodel.schema import alembic_config, current_revisions


class Place(msgspec.Struct):
    id: str
    n: int
    city: str = ""


COLUMNS = {
    "v1": '    sa.Column("n", sa.Integer, nullable=False),\n',
    "v2": '    sa.Column("n", sa.Integer, nullable=False),\n'
    '    sa.Column("city", sa.String(50), nullable=False, server_default=""),\n',
}
ENV = """import sqlalchemy as sa

from backbone.readmodel.schema import run_env

metadata = sa.MetaData()
sa.Table(
    "places",
    metadata,
    sa.Column("id", sa.String(50), primary_key=True),
{columns})
run_env(metadata)
"""
INITIAL = '''"""places"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "places",
        sa.Column("id", sa.String(50), primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("places")
'''


def migrations(root: Path, version: str) -> Path:
    """A service's migrations directory whose env.py declares the table of ``version``."""
    scripts = root / "migrations"
    (scripts / "versions").mkdir(parents=True, exist_ok=True)
    (scripts / "env.py").write_text(ENV.format(columns=COLUMNS[version]))
    (scripts / "versions" / "rev_0001_places.py").write_text(INITIAL)
    template = Path(__file__).resolve().parent.parent / "{{cookiecutter.project_slug}}" / "src"
    mako = template / "{{cookiecutter.package_name}}" / "migrations" / "script.py.mako"
    (scripts / "script.py.mako").write_text(mako.read_text())
    return scripts


def projection(scripts: Path | None, version: str) -> Projection[Place]:
    columns = [
        sa.Column("id", sa.String(50), primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
    ]
    if version == "v2":
        columns.append(sa.Column("city", sa.String(50), nullable=False, server_default=""))

    def to_row(key: str, state: Place) -> dict[str, Any]:
        row: dict[str, Any] = {"id": key, "n": state.n}
        if version == "v2":
            row["city"] = state.city
        return row

    return Projection(sa.Table("places", sa.MetaData(), *columns), to_row, scripts)


PLACE = AggregateCodec(Place)


def place(offset: int, key: str, n: int, city: str = "") -> Record:
    value = PLACE.encode(offset, Place(id=key, n=n, city=city))
    return Record(key.encode(), value, offset, [epoch_header(1)])


def all_rows(model: ReadModel[Place]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in model.query({}, limit=1000)}


def test_a_migration_adds_a_column_to_a_populated_database(url: str, tmp_path: Path) -> None:  # noqa: F811
    scripts = migrations(tmp_path, "v1")
    model = ReadModel(url, projection(scripts, "v1"), Place)
    model.apply("t", 0, [place(i, f"p-{i}", i) for i in range(50)])
    assert len(all_rows(model)) == 50
    model.close()

    # The team adds the column to readmodel.py and to_row, then generates the migration.
    migrations(tmp_path, "v2")
    config = alembic_config(scripts)
    config.set_main_option("sqlalchemy.url", url)
    command.revision(config, message="add city", autogenerate=True, rev_id="0002")
    generated = (scripts / "versions" / "rev_0002_add_city.py").read_text()
    assert "add_column" in generated and "city" in generated

    with structlog.testing.capture_logs() as logs:
        upgraded = ReadModel(url, projection(scripts, "v2"), Place)  # a node starts: upgrade
    assert current_revisions(upgraded.engine)["service"] == "0002"
    said = [e for e in logs if e["event"] == "read_model_upgraded"]
    assert said == [
        {
            "event": "read_model_upgraded",
            "log_level": "info",
            "environment": "service",
            "from_revision": "0001",
            "to_revision": "0002",
        }
    ]
    rows = all_rows(upgraded)
    assert len(rows) == 50 and rows["p-7"] == {"id": "p-7", "n": 7, "city": ""}
    upgraded.apply("t", 0, [place(50, "p-7", 8, "Lyon"), place(51, "p-new", 1, "Oslo")])
    rows = all_rows(upgraded)
    assert rows["p-7"] == {"id": "p-7", "n": 8, "city": "Lyon"}
    assert rows["p-new"]["city"] == "Oslo" and len(rows) == 51
    assert upgraded.next_offsets("t") == {0: 52}
    upgraded.close()


def test_a_database_made_before_migrations_is_stamped_and_upgraded(
    url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # as the release before migrations left it
        conn.execute(
            sa.text("CREATE TABLE places (id VARCHAR(50) PRIMARY KEY, n INTEGER NOT NULL)")
        )
        conn.execute(
            sa.text(
                "CREATE TABLE projection_offsets (topic VARCHAR(255) NOT NULL, partition "
                "INTEGER NOT NULL, next_offset BIGINT NOT NULL, PRIMARY KEY (topic, partition))"
            )
        )
        conn.execute(sa.text("INSERT INTO places VALUES ('a', 1), ('b', 2)"))
        conn.execute(sa.text("INSERT INTO projection_offsets VALUES ('t', 0, 2)"))
    engine.dispose()
    scripts = migrations(tmp_path, "v2")
    added = scripts / "versions" / "rev_0002_city.py"
    added.write_text(
        '"""city"""\n\nimport sqlalchemy as sa\nfrom alembic import op\n\nrevision = "0002"\n'
        'down_revision = "0001"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n"
        '    with op.batch_alter_table("places") as batch:\n'
        '        batch.add_column(sa.Column("city", sa.String(50), nullable=False, '
        'server_default=""))\n'
    )
    model = ReadModel(url, projection(scripts, "v2"), Place)
    assert current_revisions(model.engine) == {"engine": "backbone_0002", "service": "0002"}
    assert all_rows(model) == {
        "a": {"id": "a", "n": 1, "city": ""},
        "b": {"id": "b", "n": 2, "city": ""},
    }
    model.apply("t", 0, [place(1, "a", 9), place(2, "c", 3, "Rome")])  # offset 1: applied
    assert all_rows(model)["c"]["city"] == "Rome" and all_rows(model)["a"]["n"] == 1
    model.close()


def test_nodes_starting_at_once_share_one_upgrade(url: str, tmp_path: Path) -> None:  # noqa: F811
    scripts = migrations(tmp_path, "v1")
    errors: list[BaseException] = []
    models: list[ReadModel[Place]] = []
    gate = threading.Barrier(4)

    def start() -> None:
        try:
            gate.wait()
            models.append(ReadModel(url, projection(scripts, "v1"), Place))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert current_revisions(models[0].engine) == {"engine": "backbone_0002", "service": "0001"}
    for model in models:
        model.close()


def test_keyset_pagination_returns_every_row_once_in_order(url: str) -> None:  # noqa: F811
    model = ReadModel(url, projection(None, "v1"), Place)
    keys = [f"k-{i}" for i in range(1234)]
    model.apply_batch(
        "t",
        {
            p: [place(o, key, i % 3) for o, (i, key) in enumerate(list(enumerate(keys))[p::4])]
            for p in range(4)
        },
    )

    def pages(filters: dict[str, str], limit: int) -> list[str]:
        seen: list[str] = []
        after: str | None = None
        while True:
            page = model.query(filters, limit, after)
            seen += [row["id"] for row in page]
            if len(page) < limit:
                return seen
            after = page[-1]["id"]

    assert pages({}, 100) == sorted(keys)
    assert pages({"n": "2"}, 37) == sorted(k for i, k in enumerate(keys) if i % 3 == 2)
    assert pages({}, 1234) == sorted(keys)
    model.close()


def test_a_sqlite_read_model_makes_its_missing_directory(tmp_path: Path) -> None:
    # The workers of a node open DATA_DIR/readmodel.db before any of them made DATA_DIR.
    where = tmp_path / "node" / "data" / "readmodel.db"
    model = ReadModel(f"sqlite:///{where}", projection(None, "v1"), Place)
    model.apply_batch("t", {0: [place(0, "k-1", 1)]})
    assert [row["id"] for row in model.query({}, 10, None)] == ["k-1"]
    assert where.is_file()
    model.close()


def test_a_table_without_a_declared_column_answers_lists_in_words(url: str, tmp_path: Path) -> None:  # noqa: F811
    """readmodel.py declares a column that no migration added: lists say so, and what to do."""
    scripts = migrations(tmp_path, "v1")
    ReadModel(url, projection(scripts, "v1"), Place).close()
    model = ReadModel(url, projection(scripts, "v2"), Place)  # the column, not its migration
    try:
        with pytest.raises(ReadModelUnavailableError) as failed:
            model.query({"city": "Oslo"}, limit=10)
    finally:
        model.close()
    said = str(failed.value)
    assert said.startswith("the read model cannot answer: ")
    assert "city" in said and "Add a migration (alembic revision --autogenerate)" in said
