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


async def create_all(engine: AsyncEngine) -> None:
    """Create the kit tables with metadata.create_all (tests, local tools); the trigger comes with the table."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: Base.metadata.create_all(sync, tables=kit_tables()))
