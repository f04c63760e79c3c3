"""Alembic environment of the read model's table (``readmodel.py``); the engine runs it at
start, ``alembic`` runs it from the project root (``alembic.ini``, ``READ_MODEL_URL``)."""

from backbone.readmodel.schema import run_env

from {{ cookiecutter.package_name }}.readmodel import metadata

run_env(metadata)
