"""Alembic environment of the engine's own read model tables (``projection_offsets``)."""

from backbone.readmodel.schema import ENGINE_VERSION_TABLE, engine_metadata, run_env

run_env(engine_metadata(), ENGINE_VERSION_TABLE)
