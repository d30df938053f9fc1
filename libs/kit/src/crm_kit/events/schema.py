"""The kit's tables (outbox_events, inbox) in a service's database: from an Alembic migration, or directly in tests.

Every service with a database owns these two tables in its own schema history, so a service's first migration
says `create_tables(op)` and its downgrade `drop_tables(op)`. The DDL comes from the same SQLAlchemy tables the
kit queries, rendered through `op.execute`, so it works online and in offline (`--sql`) mode and cannot drift
from the models. `IF NOT EXISTS` makes a re-run harmless.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from crm_kit import migrations
from crm_kit.db import Base
from crm_kit.events.inbox import InboxEntry
from crm_kit.events.outbox import OUTBOX_NOTIFY_DDL, OutboxEvent


def kit_tables() -> list[Table]:
    from crm_kit.idempotency import IdempotentRequest

    return [OutboxEvent.__table__, InboxEntry.__table__, IdempotentRequest.__table__]  # type: ignore[list-item]


def create_tables(op: Any) -> None:
    """Create the kit tables, their indexes and the outbox NOTIFY trigger; call from an Alembic `upgrade()`."""
    migrations.create_tables(op, kit_tables())
    for statement in OUTBOX_NOTIFY_DDL:
        op.execute(statement)


def drop_tables(op: Any) -> None:
    """The reverse of `create_tables`; call from an Alembic `downgrade()`."""
    migrations.drop_tables(op, kit_tables())
    op.execute("DROP FUNCTION IF EXISTS crm_outbox_notify()")


# Parking of events NATS refused for good (`crm_kit.events.relay`): two columns and a partial index on the
# outbox, for databases created before them. `IF NOT EXISTS` makes it a no-op where `create_tables` made them.
PARKING_DDL = (
    "ALTER TABLE outbox_events ADD COLUMN IF NOT EXISTS parked_at TIMESTAMP WITH TIME ZONE",
    "ALTER TABLE outbox_events ADD COLUMN IF NOT EXISTS parked_error TEXT",
    "CREATE INDEX IF NOT EXISTS ix_outbox_events_parked ON outbox_events (tenant_id, aggregate_id, seq) "
    "WHERE parked_at IS NOT NULL",
)


def add_event_parking(op: Any) -> None:
    """Add the outbox's parking columns to a database made before them; call from an Alembic `upgrade()`."""
    for statement in PARKING_DDL:
        op.execute(statement)


def drop_event_parking(op: Any) -> None:
    """The reverse of `add_event_parking`; call from an Alembic `downgrade()`."""
    op.execute("DROP INDEX IF EXISTS ix_outbox_events_parked")
    op.execute("ALTER TABLE outbox_events DROP COLUMN IF EXISTS parked_error")
    op.execute("ALTER TABLE outbox_events DROP COLUMN IF EXISTS parked_at")


async def create_all(engine: AsyncEngine) -> None:
    """Create the kit tables with metadata.create_all (tests, local tools); the trigger comes with the table."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: Base.metadata.create_all(sync, tables=kit_tables()))
