"""``<slug> readmodel rebuild``: the read model again from the changelog, then a swap.

The rows are projected into side tables (``<table>__rebuild`` and
``projection_offsets__rebuild``) while the old table keeps serving and the nodes keep
projecting into it. Then one transaction swaps them: the old table is renamed away and
dropped, the side table takes its name and its indexes, and the offsets of the rebuilt
topics become the side ones. A node's projector then finds the stored offsets behind what
it read, and reads again from there (``Applied.behind``, or a look at the stored offsets
while it is idle), so what the changelog got between the rebuild's end and the swap is
projected too, also in partitions that get nothing new.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, TopicPartition

from backbone.changelog.sources import ChangelogSource
from backbone.kafka_connection import kafka_connection
from backbone.readmodel.model import OFFSETS_TABLE, ReadModel, Tables, offsets_table
from backbone.readmodel.projector import MAX_RECORDS, changelog_consumer
from backbone.settings import EngineSettings

SIDE = "__rebuild"
OLD = "__old"
PROGRESS_EVERY_S = 1.0

Show = Callable[[dict[str, Any]], None]


class RebuildError(ValueError):
    """The rebuild cannot run; the message says why (the CLI prints it, exit status 2)."""


async def changelog_sources(settings: EngineSettings) -> list[ChangelogSource]:
    """The changelogs the nodes' projectors follow, oldest first (the control log says)."""
    from backbone.node.generations import NodeGenerations
    from backbone.repartition.control import open_control_log
    from backbone.topics import Topics

    generations = NodeGenerations(settings)
    generations.control = await open_control_log(settings, f"{settings.service}-readmodel")
    try:
        current = generations.control.state.current
        topics = Topics(settings.service, settings.store, current.number)
        return generations.changelog_sources(topics, current)
    finally:
        await generations.control.stop()


class SideTables:
    """The side tables a rebuild fills, made afresh (a failed rebuild's are dropped)."""

    def __init__(self, model: ReadModel[Any]) -> None:
        self.model = model
        live = model.table
        metadata = sa.MetaData()
        side = live.to_metadata(metadata, name=live.name + SIDE)
        # Index names are per database: the live table's indexes are made at the swap.
        side.indexes.clear()
        self.table = side
        self.offsets = offsets_table(metadata, OFFSETS_TABLE + SIDE)
        with model.engine.begin() as conn:
            for table in (self.table, self.offsets):
                table.drop(conn, checkfirst=True)
                table.create(conn)
        self.tables = Tables(model.engine, self.table, self.offsets)

    def swap(self, topics: list[str]) -> None:
        """One transaction: the side table becomes the live one, with the side offsets."""
        model = self.model
        live, live_offsets = model.table, model.offsets
        engine = model.engine
        quote = engine.dialect.identifier_preparer.quote
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            # The offset rows first, as projectors lock them: no deadlock with one of them.
            conn.execute(
                sa.select(live_offsets.c.partition)
                .where(live_offsets.c.topic.in_(topics))
                .order_by(live_offsets.c.topic, live_offsets.c.partition)
                .with_for_update()
            ).all()
            old = live.name + OLD
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote(old)}")
            conn.exec_driver_sql(f"ALTER TABLE {quote(live.name)} RENAME TO {quote(old)}")
            side = quote(self.table.name)
            conn.exec_driver_sql(f"ALTER TABLE {side} RENAME TO {quote(live.name)}")
            conn.exec_driver_sql(f"DROP TABLE {quote(old)}")
            for index in live.indexes:
                index.create(conn)
            conn.execute(sa.delete(live_offsets).where(live_offsets.c.topic.in_(topics)))
            conn.execute(
                sa.insert(live_offsets).from_select(
                    ["topic", "partition", "next_offset", "writer_epoch"],
                    sa.select(
                        self.offsets.c.topic,
                        self.offsets.c.partition,
                        self.offsets.c.next_offset,
                        self.offsets.c.writer_epoch,
                    ),
                )
            )
            conn.exec_driver_sql(f"DROP TABLE {quote(self.offsets.name)}")
            conn.commit()


async def _project(
    consumer: AIOKafkaConsumer,
    model: ReadModel[Any],
    side: SideTables,
    source: ChangelogSource,
    show: Show,
    counts: dict[str, int],
) -> None:
    """Project ``source`` from its beginning to its ends, read twice: what arrived while
    the first part was read is read too, and the nodes catch up the rest after the swap."""
    tps = [TopicPartition(source.topic, p) for p in range(source.partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    last = time.monotonic()
    for _ in range(2):
        ends = await consumer.end_offsets(tps)
        while True:
            positions = {tp: await consumer.position(tp) for tp in tps}
            remaining = sum(max(0, ends[tp] - positions[tp]) for tp in tps)
            if time.monotonic() - last >= PROGRESS_EVERY_S or not remaining:
                last = time.monotonic()
                progress = {"topic": source.topic, "remaining": remaining, **counts}
                show({"event": "rebuild_progress", **progress})
            if not remaining:
                break
            fetched = await consumer.getmany(timeout_ms=500, max_records=MAX_RECORDS)
            batches = {tp.partition: rs for tp, rs in fetched.items() if rs}
            if batches:
                done = await asyncio.to_thread(
                    model.apply_batch, source.topic, batches, None, side.tables
                )
                counts["records"] += sum(len(rs) for rs in batches.values())
                counts["rows_written"] += done.rows


async def rebuild(settings: EngineSettings, model: ReadModel[Any], show: Show) -> dict[str, Any]:
    """Rebuild ``model`` from the changelogs in force and swap; returns the summary."""
    started = time.monotonic()
    sources = await changelog_sources(settings)
    consumer = changelog_consumer(kafka_connection(settings))
    await consumer.start()
    try:
        existing = await consumer.topics()
        if sources[-1].topic not in existing:
            raise RebuildError(
                f"no changelog topic {sources[-1].topic!r}: check KAFKA_BOOTSTRAP_SERVERS and "
                "SERVICE_NAME, and that the service has run"
            )
        side = await asyncio.to_thread(SideTables, model)
        counts = {"records": 0, "rows_written": 0}
        topics = []
        for source in sources:
            if source.topic in existing:
                topics.append(source.topic)
                await _project(consumer, model, side, source, show, counts)
    finally:
        await consumer.stop()
    show({"event": "rebuild_swap", "table": model.table.name, **counts})
    await asyncio.to_thread(side.swap, topics)
    with model.engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(model.table)).scalar_one()
    return {
        "event": "rebuild_done",
        "table": model.table.name,
        "topics": topics,
        "rows": rows,
        **counts,
        "seconds": round(time.monotonic() - started, 2),
    }
