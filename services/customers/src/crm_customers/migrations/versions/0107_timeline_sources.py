"""timeline entries remember which sales fields each piece of their text came from

Redaction applies the sales object's field rules when an entry is read: `sources` holds, per copied value
(title, summary, amount), the `crm_kit.policy.Text` it was made of or the fields it came from. Entries written
before have none and show their copied values only to readers from whom nothing of the object is hidden.

Revision ID: 0107_timeline_sources
Revises: 0105
Create Date: 2026-12-02 10:00:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0107_timeline_sources"
down_revision = "0105"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("timeline_entries", sa.Column("sources", JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("timeline_entries", "sources")
