"""timeline entries: what other services' events (sales) put on an account's timeline

Revision ID: 0103_timeline_entries
Revises: 0102_recycle_bin_retention
Create Date: 2026-11-24 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0103_timeline_entries"
down_revision = "0102_recycle_bin_retention"
branch_labels = None
depends_on = None


def _text(name: str, length: int) -> sa.Column:
    return sa.Column(name, sa.String(length), server_default="", nullable=False)


def upgrade() -> None:
    op.create_table(
        "timeline_entries",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("account_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(60), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        _text("title_zh", 300),
        _text("title_en", 300),
        _text("summary_zh", 500),
        _text("summary_en", 500),
        sa.Column("object_type", sa.String(30), nullable=False),
        _text("owner_id", 36),
        _text("department_id", 36),
        sa.Column("link_type", sa.String(30), nullable=False),
        sa.Column("link_id", sa.String(36), nullable=False),
        _text("amount", 40),
        _text("currency", 3),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    )
    op.create_index("ix_timeline_entries_tenant_id", "timeline_entries", ["tenant_id"])
    op.create_index(
        "ix_timeline_entries_account", "timeline_entries", ["tenant_id", "account_id", "occurred_at", "id"]
    )
    op.create_index("ix_timeline_entries_link", "timeline_entries", ["tenant_id", "link_id"])
    op.create_index("uq_timeline_entries_event", "timeline_entries", ["event_id"], unique=True)


def downgrade() -> None:
    op.drop_table("timeline_entries")
