"""the kit's idempotent_requests table (writes retried after a crash happen once)

Revision ID: 0002
Revises: 0001
"""

from alembic import op
from crm_kit.events.schema import create_tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Creates only what is missing: the kit tables that came after 0001.
    create_tables(op)


def downgrade() -> None:
    op.drop_table("idempotent_requests")
