"""projection_offsets: each changelog partition's next offset, stored with the rows.

Revision ID: backbone_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "backbone_0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projection_offsets",
        sa.Column("topic", sa.String(255), primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("projection_offsets")
