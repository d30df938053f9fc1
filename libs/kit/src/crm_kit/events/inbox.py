"""The inbox: which events each consumer has handled, written in the same transaction as the handler's effect.

JetStream delivers at least once: an ack lost on the way, a consumer killed after its commit, or a redelivery
after the ack wait all hand an event over a second time. The inbox row makes the second time a no-op: it is
inserted with ON CONFLICT DO NOTHING before the handler runs, so when the row is already there the effect is
already committed and the kit only acks. Since the row and the effect commit or roll back together, there is
no window where one exists without the other.
"""

from __future__ import annotations

import datetime as dt
import re

import asyncpg
from sqlalchemy import DateTime, Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from crm_kit.db import Base
from crm_kit.ids import is_uuid


class InboxEntry(Base):
    __tablename__ = "inbox"

    consumer: Mapped[str] = mapped_column(String(200), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    handled_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    # Pruning after the retention period (see `EventSettings.inbox_retention`).
    __table_args__ = (Index("ix_inbox_handled_at", "handled_at"),)


# Run by the consumer on its own driver connection, inside the transaction that runs the handler (see
# `crm_kit.events.consumer`): the kit's statement on the path from delivery to effect skips SQLAlchemy's
# execution layers, which measured several tenths of a millisecond per statement.
CLAIM = (
    "INSERT INTO inbox (consumer, event_id) SELECT $1, unnest($2::text[]) "
    "ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id"
)


async def claim(
    statement: asyncpg.prepared_stmt.PreparedStatement, consumer: str, event_ids: list[str]
) -> set[str]:
    """Insert the inbox rows of `event_ids` (`statement` is `CLAIM` prepared on the transaction's connection);
    return the ids this consumer had not handled yet.

    A concurrent transaction handling the same event (a redelivery racing the first delivery on another replica)
    makes this wait on the primary key until that transaction ends; if it committed, the id is not returned.
    """
    return {row[0] for row in await statement.fetch(consumer, event_ids)}


def claim_with_begin(consumer: str, event_id: str) -> str:
    """`CLAIM` for one event as plain SQL, to send in the same round trip as BEGIN (`crm_kit.db.transaction`'s
    `then`), saving a round trip per event; its status is "INSERT 0 1" when claimed. "" when the values could
    need quoting: it takes only a consumer name of letters, digits, '-' and '_' and an event id in canonical
    UUID form (what the kit's outbox writes), so nothing from a message is ever spliced into SQL unchecked."""
    if not (CONSUMER_NAME.fullmatch(consumer) and is_uuid(event_id, canonical=True)):
        return ""
    return (
        f"INSERT INTO inbox (consumer, event_id) VALUES ('{consumer}', '{event_id}') "
        "ON CONFLICT (consumer, event_id) DO NOTHING"
    )


def claimed_with_begin(status: str) -> bool:
    return status == "INSERT 0 1"


# What a consumer may be called: also what JetStream accepts as a durable name.
CONSUMER_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")
