"""The SQL read model: one row per {{ cookiecutter.aggregate_name }}, for listing and filtering.

SQLite under DATA_DIR by default; set READ_MODEL_URL (e.g. postgresql+psycopg://...) for a
shared PostgreSQL. To make a new column filterable: add it here and in ``to_row``, then a
migration (``alembic revision --autogenerate -m "..."``, see docs/tutorial.md); nodes
upgrade the database to the newest migration when they start.
"""

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from backbone.readmodel import Projection

from {{ cookiecutter.package_name }}.domain.aggregate import {{ cookiecutter.aggregate_class }}

metadata = sa.MetaData()

table = sa.Table(
    "{{ cookiecutter.aggregate_plural }}",
    metadata,
    sa.Column("id", sa.String(256), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("email", sa.String(320), nullable=False, index=True),
    sa.Column("tier", sa.String(20), nullable=False, index=True),
    sa.Column("lifetime_value_cents", sa.BigInteger, nullable=False),
    sa.Column("order_count", sa.Integer, nullable=False),
    sa.Column("loyalty_points", sa.Integer, nullable=False),
)


def to_row(aggregate_id: str, state: {{ cookiecutter.aggregate_class }}) -> dict[str, Any]:
    return {
        "id": aggregate_id,
        "name": state.name,
        "email": state.email,
        "tier": state.tier,
        "lifetime_value_cents": state.lifetime_value_cents,
        "order_count": state.order_count,
        "loyalty_points": state.loyalty_points,
    }


PROJECTION = Projection(
    table=table, to_row=to_row, migrations=Path(__file__).resolve().parent / "migrations"
)
