"""SQL read model: aggregates projected from the changelog into a SQLAlchemy table.

The changelog carries whole aggregate states, so a projection is an idempotent upsert.
Each partition's changelog offset and writer epoch (backbone.changelog.epochs) are stored in the
same SQL transaction as its rows, so a crash never loses or re-applies a batch, a zombie's
records are skipped, and several projectors may share one database. One transaction takes a
whole fetched batch, every partition of it, with one executemany of one upsert statement.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from backbone.changelog.epochs import EpochFilter, KeyedRecord
from backbone.codec import AggregateCodec
from backbone.settings import EngineSettings

A = TypeVar("A", bound=msgspec.Struct)

OFFSETS_TABLE = "projection_offsets"
# Rows per statement of a PostgreSQL upsert: one INSERT ... VALUES (...), (...) ... ON CONFLICT.
PG_ROWS_PER_STATEMENT = 500


class ChangelogRecord(KeyedRecord, Protocol):
    @property
    def value(self) -> bytes | None: ...

    @property
    def offset(self) -> int: ...


# Integers the databases compare with (SQLite's and PostgreSQL's widest); a filter
# beyond them would fail in the driver, not match nothing.
_INTEGERS = range(-(2**63), 2**63)


class QueryError(ValueError):
    """A list query names an unknown column or a value of the wrong type."""


class ReadModelUnavailableError(RuntimeError):
    """The database cannot answer a list query: it is down, or its table is not the one
    ``readmodel.py`` declares."""


@dataclass(frozen=True)
class Projection(Generic[A]):
    table: sa.Table
    to_row: Callable[[str, A], dict[str, Any]]
    # The service's Alembic scripts (env.py, versions/); None: the table is created if missing.
    migrations: Path | None = None


def offsets_table(metadata: sa.MetaData, name: str = OFFSETS_TABLE) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("topic", sa.String(255), primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("writer_epoch", sa.BigInteger, nullable=False, server_default="0"),
        extend_existing=True,
    )


@dataclass
class Applied:
    """What one transaction did: rows written, each partition's stored next offset, and the
    partitions whose stored offset is behind where the caller read from (a rebuild swapped
    the tables): their records were not applied; read them again from that offset."""

    rows: int = 0
    next_offsets: dict[int, int] = field(default_factory=dict)
    behind: dict[int, int] = field(default_factory=dict)


def dialect_module(engine: sa.Engine) -> Any:
    return postgresql if engine.dialect.name == "postgresql" else sqlite


class Tables:
    """A rows table and its offsets table, with their statements compiled for the dialect."""

    def __init__(self, engine: sa.Engine, table: sa.Table, offsets: sa.Table) -> None:
        self.table = table
        self.offsets = offsets
        self.key = next(iter(table.primary_key.columns)).name
        self.postgres = engine.dialect.name == "postgresql"
        dialect = dialect_module(engine)
        self.upsert_rows = self._upsert(dialect, table, [self.key])
        self.upsert_offset = self._upsert(dialect, offsets, ["topic", "partition"])
        self.ensure_offset = (
            dialect.insert(offsets)
            .values(next_offset=0)
            .on_conflict_do_nothing(index_elements=["topic", "partition"])
        )
        self.columns = [c.name for c in table.columns]
        self._raw = self._raw_sql(engine)

    @staticmethod
    def _upsert(dialect: Any, table: sa.Table, keys: list[str]) -> Any:
        """One statement executed with many parameter sets, so SQLAlchemy compiles it once."""
        stmt = dialect.insert(table)
        updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        return stmt.on_conflict_do_update(index_elements=keys, set_=updates)

    def _raw_sql(self, engine: sa.Engine) -> tuple[str, str] | None:
        """The upsert as the driver's own SQL (SQLite: named parameters for executemany;
        PostgreSQL: the head and tail around many VALUES rows), or None where a column's
        type converts values (JSON, Enum, ...): SQLAlchemy must bind those."""
        dialect = engine.dialect
        if any(c.type.bind_processor(dialect) is not None for c in self.table.columns):
            return None
        quote = dialect.identifier_preparer.quote
        names = self.columns
        table = dialect.identifier_preparer.format_table(self.table)
        updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in names if c != self.key)
        action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        tail = f" ON CONFLICT ({quote(self.key)}) {action}"
        head = f"INSERT INTO {table} ({', '.join(quote(c) for c in names)}) VALUES "
        if self.postgres:
            return head, tail
        return head + "(" + ", ".join(f":{c}" for c in names) + ")" + tail, ""

    def write_rows(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        if self._raw is None:
            conn.execute(self.upsert_rows, rows)
            return
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if not self.postgres:  # sqlite3's executemany: one prepared statement, in C
                cursor.executemany(self._raw[0], rows)
                return
            # PostgreSQL: many VALUES rows per statement (full chunks: one prepared statement)
            head, tail = self._raw
            names = self.columns
            one = "(" + ", ".join(["%s"] * len(names)) + ")"
            for start in range(0, len(rows), PG_ROWS_PER_STATEMENT):
                chunk = rows[start : start + PG_ROWS_PER_STATEMENT]
                values = [row[c] for row in chunk for c in names]
                cursor.execute(head + ", ".join([one] * len(chunk)) + tail, values)
        finally:
            cursor.close()


def database_url(settings: EngineSettings) -> str:
    """READ_MODEL_URL, else SQLite under DATA_DIR."""
    return settings.read_model_url or f"sqlite:///{settings.data_dir / 'readmodel.db'}"


def create_engine(url: str) -> sa.Engine:
    """SQLite in WAL mode: readers (list requests, a rebuild) never wait for the projector.
    A SQLite file's directory is made if missing."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    file = sa.make_url(url).database
    if file and file != ":memory:":
        Path(file).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _: Any) -> None:
        cursor = dbapi_connection.cursor()
        _wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: a killed process loses nothing
        cursor.close()

    return engine


def _wal(cursor: Any) -> None:
    """Switch a new database to WAL. The switch needs the database to itself and answers
    "database is locked" at once, without the busy timeout, while another node that started
    at the same moment holds it: tried again until the other is done."""
    deadline = time.monotonic() + 60
    pause = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


class ReadModel(Generic[A]):
    def __init__(
        self, url: str, projection: Projection[A], aggregate: type[A], migrate: bool = True
    ) -> None:
        self.engine = create_engine(url)
        self.projection = projection
        self.table = projection.table
        self.offsets = offsets_table(sa.MetaData())
        self.codec: AggregateCodec[A] = AggregateCodec(aggregate)
        if migrate:
            from backbone.readmodel.schema import upgrade

            upgrade(self.engine, projection)
        self.live = Tables(self.engine, self.table, self.offsets)
        self._key = self.live.key

    def filters(self) -> dict[str, str]:
        """The columns a list may filter on, with their JSON Schema type (for OpenAPI)."""
        found = {}
        for column in self.table.columns:
            kind = column.type
            found[column.name] = (
                "boolean"
                if isinstance(kind, sa.Boolean)
                else "integer"
                if isinstance(kind, sa.Integer)
                else "number"
                if isinstance(kind, sa.Float | sa.Numeric)
                else "string"
            )
        return found

    def next_offsets(self, topic: str) -> dict[int, int]:
        return self.stored_offsets(topic)[0]

    def stored_offsets(self, topic: str) -> tuple[dict[int, int], dict[int, int]]:
        """(next offset, writer epoch) by partition, as stored."""
        offsets, epochs = {}, {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    self.offsets.c.partition,
                    self.offsets.c.next_offset,
                    self.offsets.c.writer_epoch,
                ).where(self.offsets.c.topic == topic)
            )
            for p, o, e in rows:
                offsets[int(p)], epochs[int(p)] = int(o), int(e)
        return offsets, epochs

    def apply(self, topic: str, partition: int, records: Sequence[ChangelogRecord]) -> int:
        """Upsert one partition's changelog records; returns how many rows were written."""
        return self.apply_batch(topic, {partition: records}).rows

    def apply_batch(
        self,
        topic: str,
        batches: Mapping[int, Sequence[ChangelogRecord]],
        seen: Mapping[int, int] | None = None,
        tables: Tables | None = None,
    ) -> Applied:
        """Upsert the records of several partitions of ``topic`` in one transaction.

        ``seen``: each partition's stored next offset as the caller last saw it. A partition
        whose stored offset went below it (a rebuild swapped the tables) is left out and
        reported in ``Applied.behind``: read it again from there."""
        into = tables or self.live
        parts = sorted(p for p, records in batches.items() if records)
        done = Applied()
        if not parts:
            return done
        offsets = into.offsets
        with self.engine.begin() as conn:
            # The rows must exist before FOR UPDATE can lock them against another projector;
            # locked in partition order, so two projectors never deadlock.
            conn.execute(into.ensure_offset, [{"topic": topic, "partition": p} for p in parts])
            stored = {
                int(p): (int(o), int(e))
                for p, o, e in conn.execute(
                    sa.select(offsets.c.partition, offsets.c.next_offset, offsets.c.writer_epoch)
                    .where(offsets.c.topic == topic, offsets.c.partition.in_(parts))
                    .order_by(offsets.c.partition)
                    .with_for_update()
                )
            }
            latest: dict[bytes, bytes | None] = {}
            offset_rows = []
            for p in parts:
                current, epoch = stored[p]
                if seen is not None and current < seen.get(p, 0):
                    done.behind[p] = current
                    continue
                records = batches[p]
                fresh = (
                    records
                    if records[0].offset >= current
                    else [r for r in records if r.offset >= current]
                )
                if not fresh:
                    done.next_offsets[p] = current
                    continue
                epochs = EpochFilter(epoch)
                for record in fresh:
                    key = record.key
                    if epochs.admit(record) and key is not None:
                        latest[key] = record.value
                done.next_offsets[p] = fresh[-1].offset + 1
                offset_rows.append(
                    {
                        "topic": topic,
                        "partition": p,
                        "next_offset": done.next_offsets[p],
                        "writer_epoch": epochs.epoch,
                    }
                )
            done.rows = self._write(conn, into, latest)
            if offset_rows:
                conn.execute(into.upsert_offset, offset_rows)
        return done

    def _write(self, conn: sa.Connection, into: Tables, latest: dict[bytes, bytes | None]) -> int:
        to_row = self.projection.to_row
        decode = self.codec.decode
        rows = []
        deleted = []
        for key, value in latest.items():
            if value is None:
                deleted.append(key.decode())
            else:
                rows.append(to_row(key.decode(), decode(value)[1]))
        if rows:
            into.write_rows(conn, rows)
        if deleted:
            conn.execute(sa.delete(into.table).where(into.table.c[into.key].in_(deleted)))
        return len(rows) + len(deleted)

    def _value(self, name: str, raw: str) -> Any:
        if name not in self.table.c:
            allowed = ", ".join(sorted(c.name for c in self.table.columns))
            raise QueryError(f"unknown filter {name!r}; filter by one of: {allowed}")
        column = self.table.c[name]
        try:
            value = column.type.python_type(raw)
        except (ValueError, TypeError):
            raise QueryError(f"{name}={raw!r} is not a valid {column.type}") from None
        if isinstance(column.type, sa.Integer) and value not in _INTEGERS:
            raise QueryError(f"{name}={raw!r} is beyond a 64-bit integer")
        return value

    def query(
        self, filters: Mapping[str, str], limit: int, after: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows matching ``filters`` (column = value), in primary key order, the first
        ``limit`` of those whose key is above ``after`` (keyset pagination)."""
        key = self.table.c[self._key]
        stmt = sa.select(self.table)
        for name, raw in filters.items():
            value = self._value(name, raw)
            stmt = stmt.where(self.table.c[name] == value)
        if after is not None:
            stmt = stmt.where(key > self._value(self._key, after))
        stmt = stmt.order_by(key).limit(limit)
        try:
            with self.engine.connect() as conn:
                return [dict(row._mapping) for row in conn.execute(stmt)]
        except sa.exc.DBAPIError as exc:
            cause = str(exc.orig).splitlines()[0]
            hint = ""
            if "no such column" in cause or "does not exist" in cause:
                hint = (
                    ": the table lacks a column of readmodel.py. Add a migration (alembic "
                    "revision --autogenerate) and start the node again"
                )
            raise ReadModelUnavailableError(
                f"the read model cannot answer: {cause}{hint}"
            ) from None

    def close(self) -> None:
        self.engine.dispose()
