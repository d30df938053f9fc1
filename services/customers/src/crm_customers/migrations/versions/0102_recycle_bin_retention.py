"""recycle bin: per-tenant retention of deleted records (purged for good after it)

Revision ID: 0102_recycle_bin_retention
Revises: 0101_data_quality
Create Date: 2026-11-24 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0102_recycle_bin_retention"
down_revision = "0101_data_quality"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenant_settings", sa.Column("recycle_bin_retention_days", sa.Integer(), nullable=True))
    op.add_column(
        "tenant_settings",
        sa.Column("recycle_bin_version", sa.BigInteger(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("tenant_settings", "recycle_bin_version")
    op.drop_column("tenant_settings", "recycle_bin_retention_days")
