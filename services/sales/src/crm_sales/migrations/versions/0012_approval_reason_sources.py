"""approvals remember which fields of the quote or contract their reason quotes

An approval's reason is made of the object's fields (the discount of a quote, the amount of a contract):
`reason_sources` holds it as a `crm_kit.policy.Text`, so the object's field rules apply when it is read.
Approvals made before show their reason only to readers from whom nothing of the object is hidden.

Revision ID: 0012
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0012"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("approvals", sa.Column("reason_sources", JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("approvals", "reason_sources")
