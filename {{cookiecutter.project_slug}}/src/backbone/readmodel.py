"""SQL read model: aggregates projected from the changelog into a SQLAlchemy table.

The changelog carries whole aggregate states, so a projection is an idempotent upsert.
Each partition's changelog offset and writer epoch (backbone.changelog.epochs) are stored in the
same SQL transaction as its rows, so a crash never loses or re-applies a batch, a zombie's
records are skipped, and several projectors may share one database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import sqlalchemy as sa
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy.dialects import postgresql, sqlite

from backbone.changelog.epochs import EpochFilter, KeyedRecord
from backbone.changelog.sources import ChangelogSource
from backbone.codec import AggregateCodec

A = TypeVar("A", bound=msgspec.Struct)
log = structlog.get_logger(__name__)


class ChangelogRecord(KeyedRecord, Protocol):
    @property
    def value(self) -> bytes | None: ...

    @property
    def offset(self) -> int: ...


class QueryError(ValueError):
    """A list query names an unknown column or a value of the wrong type."""


@dataclass(frozen=True)
class Projection(Generic[A]):
    table: sa.Table
    to_row: Callable[[str, A], dict[str, Any]]


def _offsets_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "projection_offsets",
        metadata,
        sa.Column("topic", sa.String(255), primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("writer_epoch", sa.BigInteger, nullable=False, server_default="0"),
        extend_existing=True,
    )


def _add_writer_epoch(engine: sa.Engine) -> None:
    """Databases made by releases before writer epochs lack the column: add it."""

    def present() -> bool:
        columns = sa.inspect(engine).get_columns("projection_offsets")
        return "writer_epoch" in {c["name"] for c in columns}

    if present():
        return
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "ALTER TABLE projection_offsets "
                    "ADD COLUMN writer_epoch BIGINT NOT NULL DEFAULT 0"
                )
            )
    except sa.exc.DBAPIError:
        if not present():  # else another node added it first
            raise


class ReadModel(Generic[A]):
    def __init__(self, url: str, projection: Projection[A], aggregate: type[A]) -> None:
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        self.projection = projection
        self.table = projection.table
        self.offsets = _offsets_table(projection.table.metadata)
        self.codec: AggregateCodec[A] = AggregateCodec(aggregate)
        projection.table.metadata.create_all(self.engine)
        _add_writer_epoch(self.engine)
        self._key = next(iter(self.table.primary_key.columns)).name
        self._upsert_rows = self._upsert(self.table, [self._key])
        self._upsert_offset = self._upsert(self.offsets, ["topic", "partition"])
        dialect: Any = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        self._ensure_offset = (
            dialect.insert(self.offsets)
            .values(next_offset=0)
            .on_conflict_do_nothing(index_elements=["topic", "partition"])
        )

    def next_offsets(self, topic: str) -> dict[int, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(self.offsets.c.partition, self.offsets.c.next_offset).where(
                    self.offsets.c.topic == topic
                )
            )
            return {int(p): int(o) for p, o in rows}

    def _upsert(self, table: sa.Table, keys: list[str]) -> Any:
        """One statement executed with many parameter sets, so SQLAlchemy compiles it once."""
        dialect = self.engine.dialect.name
        module: Any = postgresql if dialect == "postgresql" else sqlite
        stmt = module.insert(table)
        updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        return stmt.on_conflict_do_update(index_elements=keys, set_=updates)

    def apply(self, topic: str, partition: int, records: Sequence[ChangelogRecord]) -> int:
        """Upsert one partition's changelog records; returns how many rows were written."""
        with self.engine.begin() as conn:
            # The row must exist before FOR UPDATE can lock it against another projector.
            conn.execute(self._ensure_offset, [{"topic": topic, "partition": partition}])
            current, epoch = conn.execute(
                sa.select(self.offsets.c.next_offset, self.offsets.c.writer_epoch)
                .where(self.offsets.c.topic == topic, self.offsets.c.partition == partition)
                .with_for_update()
            ).one()
            fresh = [r for r in records if r.offset >= current]
            if not fresh:
                return 0
            epochs = EpochFilter(epoch)
            latest: dict[bytes, bytes | None] = {}
            for record in fresh:
                if epochs.admit(record) and record.key is not None:
                    latest[record.key] = record.value
            rows = []
            deleted = []
            for key, value in latest.items():
                if value is None:
                    deleted.append(key.decode())
                else:
                    rows.append(self.projection.to_row(key.decode(), self.codec.decode(value)[1]))
            if rows:
                conn.execute(self._upsert_rows, rows)
            if deleted:
                conn.execute(sa.delete(self.table).where(self.table.c[self._key].in_(deleted)))
            offset_row = {
                "topic": topic,
                "partition": partition,
                "next_offset": fresh[-1].offset + 1,
                "writer_epoch": epochs.epoch,
            }
            conn.execute(self._upsert_offset, [offset_row])
            return len(rows) + len(deleted)

    def query(self, filters: Mapping[str, str], limit: int, offset: int) -> list[dict[str, Any]]:
        stmt = sa.select(self.table)
        for name, raw in filters.items():
            if name not in self.table.c:
                allowed = ", ".join(sorted(c.name for c in self.table.columns))
                raise QueryError(f"unknown filter {name!r}; filter by one of: {allowed}")
            column = self.table.c[name]
            try:
                value = column.type.python_type(raw)
            except (ValueError, TypeError):
                raise QueryError(f"{name}={raw!r} is not a valid {column.type}") from None
            stmt = stmt.where(column == value)
        stmt = stmt.order_by(self.table.c[self._key]).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(stmt)]

    def close(self) -> None:
        self.engine.dispose()


class Projector(Generic[A]):
    """Tails every partition of the changelog into the read model. ``sources()`` names the
    changelogs of the generations in force, oldest first: after a repartitioning the
    previous one is read to its end before the next, so no older value overwrites a newer."""

    def __init__(
        self, brokers: str, sources: Callable[[], list[ChangelogSource]], model: ReadModel[A]
    ) -> None:
        self.sources = sources
        self.model = model
        self.brokers = brokers
        self.rows = 0
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._source: ChangelogSource | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.brokers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self._consumer.start()
        *older, current = self.sources()
        for source in older:
            if source.topic in await self._consumer.topics():
                await self._assign(self._consumer, source)
                await self._finish(self._consumer, source)
        await self._assign(self._consumer, current)
        self._task = asyncio.create_task(self._run(self._consumer), name="read-model")

    async def _assign(self, consumer: AIOKafkaConsumer, source: ChangelogSource) -> None:
        self._source = source
        tps = [TopicPartition(source.topic, p) for p in range(source.partitions)]
        consumer.assign(tps)
        stored = await asyncio.to_thread(self.model.next_offsets, source.topic)
        begins = await consumer.beginning_offsets(tps)
        gaps = sorted(
            tp.partition
            for tp in tps
            if max(stored.get(tp.partition, 0), source.first_offset) < begins[tp]
        )
        if gaps:
            # Retention deleted changelog records this read model never saw: aggregates not
            # changed since then are missing until they change again.
            log.error(
                "read_model_incomplete",
                topic=source.topic,
                partitions=gaps,
                remedy="use a shared READ_MODEL_URL that outlives nodes, or keep the changelog "
                "complete (CHANGELOG_RETENTION_MS=-1) where every node projects into SQLite",
            )
        for tp in tps:
            if tp.partition in stored:
                consumer.seek(tp, max(stored[tp.partition], begins[tp]))

    async def _finish(self, consumer: AIOKafkaConsumer, source: ChangelogSource) -> None:
        """Project ``source`` up to its current end (it no longer grows)."""
        tps = [TopicPartition(source.topic, p) for p in range(source.partitions)]
        ends = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            await self._project(source, await consumer.getmany(timeout_ms=500, max_records=5_000))
        log.info("read_model_generation_done", topic=source.topic)

    async def _project(self, source: ChangelogSource, batches: dict[TopicPartition, Any]) -> None:
        for tp, records in batches.items():
            if records:
                self.rows += await asyncio.to_thread(
                    self.model.apply, source.topic, tp.partition, records
                )

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            current = self.sources()[-1]
            if self._source is not None and current.topic != self._source.topic:
                await self._finish(consumer, self._source)
                await self._assign(consumer, current)
            assert self._source is not None
            batches = await consumer.getmany(timeout_ms=500, max_records=5_000)
            await self._project(self._source, batches)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
        self.model.close()
