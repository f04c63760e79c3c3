"""The read model's schema, migrated with Alembic at start.

Two Alembic environments share the database, each with its own version table:

- the engine's (``backbone/readmodel/migrations``, version table ``backbone_alembic_version``):
  ``projection_offsets`` and its ``writer_epoch`` column; engine updates bring their
  revisions;
- the service's (``src/<package>/migrations``, version table ``alembic_version``): the
  projection table, which the team changes (``alembic revision --autogenerate``).

A database made before migrations (the tables, no version table) is stamped with the
revision it matches, then upgraded. Nodes starting at once take turns: PostgreSQL with a
transaction-level advisory lock, SQLite with ``BEGIN IMMEDIATE`` (its write lock), and the
whole upgrade is one transaction, so a crash leaves the previous schema.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from alembic import command, context
from alembic.config import Config
from alembic.script import ScriptDirectory

from backbone.readmodel.model import OFFSETS_TABLE, Projection, offsets_table

log = structlog.get_logger(__name__)

ENGINE_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
ENGINE_VERSION_TABLE = "backbone_alembic_version"
SERVICE_VERSION_TABLE = "alembic_version"
# Revisions of the engine's environment that a database made before migrations matches.
ENGINE_OFFSETS = "backbone_0001"
ENGINE_WRITER_EPOCH = "backbone_0002"
# Tables a rebuild builds and swaps (backbone.readmodel.rebuild): never the schema's business.
SIDE_SUFFIXES = ("__rebuild", "__old")
LOCK_KEY = 0x6261636B626F6E65 >> 1  # "backbone", for pg_advisory_xact_lock


def engine_metadata() -> sa.MetaData:
    metadata = sa.MetaData()
    offsets_table(metadata)
    return metadata


def _only_declared(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Autogenerate compares the declared tables only: not the other environment's tables,
    nor a rebuild's side tables."""
    if type_ == "table":
        if name is not None and name.endswith(SIDE_SUFFIXES):
            return False
        return not (reflected and compare_to is None)
    return True


def _configure_and_run(
    connection: sa.Connection, metadata: sa.MetaData, version_table: str
) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=version_table,
        include_object=_only_declared,
        render_as_batch=True,  # SQLite alters tables in batches; a no-op elsewhere
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_env(metadata: sa.MetaData, version_table: str = SERVICE_VERSION_TABLE) -> None:
    """The body of a migrations ``env.py``: online only, on the connection the engine hands
    over, or (the ``alembic`` command) on ``READ_MODEL_URL``, else the ini's URL."""
    if context.is_offline_mode():
        raise RuntimeError("the read model's migrations run online only (no --sql)")
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection, metadata, version_table)
        return
    url = os.environ.get("READ_MODEL_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set READ_MODEL_URL, or sqlalchemy.url in alembic.ini")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            _configure_and_run(conn, metadata, version_table)
            conn.commit()
    finally:
        engine.dispose()


def alembic_config(script_location: Path, connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    # Revision files are modules of the package (mypy and ruff check them): a valid name.
    config.set_main_option("file_template", "rev_%%(rev)s_%%(slug)s")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _lock(conn: sa.Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock until commit; DDL in it


def _stamp_legacy(conn: sa.Connection, projection: Projection[Any]) -> None:
    """A database made by a release before migrations: stamp the revisions it matches."""
    inspector = sa.inspect(conn)
    tables = set(inspector.get_table_names())
    if ENGINE_VERSION_TABLE not in tables and OFFSETS_TABLE in tables:
        columns = {c["name"] for c in inspector.get_columns(OFFSETS_TABLE)}
        revision = ENGINE_WRITER_EPOCH if "writer_epoch" in columns else ENGINE_OFFSETS
        command.stamp(alembic_config(ENGINE_MIGRATIONS, conn), revision)
        log.info("read_model_stamped", environment="engine", revision=revision)
    if (
        projection.migrations is not None
        and SERVICE_VERSION_TABLE not in tables
        and projection.table.name in tables
    ):
        config = alembic_config(projection.migrations, conn)
        for base in ScriptDirectory.from_config(config).get_bases():
            command.stamp(config, base)
            log.info("read_model_stamped", environment="service", revision=base)


def upgrade(engine: sa.Engine, projection: Projection[Any]) -> None:
    """Bring the engine's tables and the service's to their newest revisions, in one
    transaction, one node at a time."""
    with engine.connect() as conn:
        _lock(conn)
        _stamp_legacy(conn, projection)
        before = _revisions(conn)
        command.upgrade(alembic_config(ENGINE_MIGRATIONS, conn), "head")
        if projection.migrations is not None:
            command.upgrade(alembic_config(projection.migrations, conn), "head")
        else:  # a projection without migrations (tests): the table as declared
            projection.table.metadata.create_all(conn, tables=[projection.table])
        after = _revisions(conn)
        conn.commit()
    for environment, revision in after.items():
        if revision != before[environment]:
            log.info(
                "read_model_upgraded",
                environment=environment,
                from_revision=before[environment],
                to_revision=revision,
            )


def current_revisions(engine: sa.Engine) -> dict[str, str | None]:
    """The revision each environment's version table holds (None: not migrated)."""
    with engine.connect() as conn:
        return _revisions(conn)


def _revisions(conn: sa.Connection) -> dict[str, str | None]:
    from alembic.runtime.migration import MigrationContext

    heads: dict[str, str | None] = {}
    for name, table in (("engine", ENGINE_VERSION_TABLE), ("service", SERVICE_VERSION_TABLE)):
        migration = MigrationContext.configure(conn, opts={"version_table": table})
        heads[name] = migration.get_current_revision()
    return heads
