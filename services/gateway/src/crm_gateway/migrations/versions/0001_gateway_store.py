"""the gateway's own store: idempotency keys and rate-limit counters shared by every replica

Revision ID: 0001
Revises:
Create Date: 2026-12-02 10:40:00
"""

from alembic import op
from crm_gateway.models import IdempotencyKey, RateLimitCounter
from crm_kit.migrations import create_tables, drop_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = [IdempotencyKey.__table__, RateLimitCounter.__table__]


def upgrade() -> None:
    create_tables(op, TABLES)


def downgrade() -> None:
    drop_tables(op, TABLES)
