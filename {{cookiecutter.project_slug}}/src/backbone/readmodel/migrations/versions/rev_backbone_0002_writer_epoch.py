"""projection_offsets.writer_epoch: the newest writer epoch applied (ADR 0011).

Revision ID: backbone_0002
Revises: backbone_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "backbone_0002"
down_revision: str | None = "backbone_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projection_offsets") as batch:
        batch.add_column(
            sa.Column("writer_epoch", sa.BigInteger, nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("projection_offsets") as batch:
        batch.drop_column("writer_epoch")
