"""SQL read model: aggregates projected from the changelog into a SQLAlchemy table.

``model`` (the tables, one transaction per batch, keyset listing), ``projector`` (tails the
changelog in a thread, reports lag and death), ``schema`` (Alembic migrations at start),
``rebuild`` (``<slug> readmodel rebuild``: side tables, then an atomic swap), ``metrics``.
"""

from backbone.readmodel.model import (
    Applied,
    ChangelogRecord,
    Projection,
    QueryError,
    ReadModel,
    ReadModelUnavailableError,
)
from backbone.readmodel.projector import Projector

__all__ = [
    "Applied",
    "ChangelogRecord",
    "Projection",
    "Projector",
    "QueryError",
    "ReadModel",
    "ReadModelUnavailableError",
]
