"""The read model's table, as the template made it.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "{{ cookiecutter.aggregate_plural }}",
        sa.Column("id", sa.String(256), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("tier", sa.String(20), nullable=False),
        sa.Column("lifetime_value_cents", sa.BigInteger, nullable=False),
        sa.Column("order_count", sa.Integer, nullable=False),
        sa.Column("loyalty_points", sa.Integer, nullable=False),
    )
    op.create_index(
        "ix_{{ cookiecutter.aggregate_plural }}_email",
        "{{ cookiecutter.aggregate_plural }}",
        ["email"],
    )
    op.create_index(
        "ix_{{ cookiecutter.aggregate_plural }}_tier",
        "{{ cookiecutter.aggregate_plural }}",
        ["tier"],
    )


def downgrade() -> None:
    op.drop_table("{{ cookiecutter.aggregate_plural }}")
