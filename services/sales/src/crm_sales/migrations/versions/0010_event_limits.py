"""the outbox parks events NATS refuses for good (crm_kit.events.relay), so one cannot stop the stream

Revision ID: 0010
Revises: 0009
"""

from alembic import op
from crm_kit.events.schema import add_event_parking, drop_event_parking

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_event_parking(op)


def downgrade() -> None:
    drop_event_parking(op)
