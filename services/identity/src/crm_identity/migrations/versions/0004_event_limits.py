"""events have limits: the outbox parks what NATS refuses (crm_kit.events.relay); the audit trail's columns take
every envelope field the kit lets through (a request id of crm_kit.context.REQUEST_ID_MAX characters)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from crm_kit.context import REQUEST_ID_MAX
from crm_kit.events.schema import add_event_parking, drop_event_parking

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_event_parking(op)
    # Widening a varchar is a catalog change in PostgreSQL: no rewrite, and the append-only trigger is not
    # involved. (Was 64, so a longer X-Request-ID made its events impossible to audit.)
    op.alter_column("audit_events", "request_id", type_=sa.String(REQUEST_ID_MAX))


def downgrade() -> None:
    op.alter_column("audit_events", "request_id", type_=sa.String(64))
    drop_event_parking(op)
