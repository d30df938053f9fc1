"""The event backbone: transactional outbox, relay to JetStream, durable consumers with an inbox.

A service writes events with `uow.emit(...)` (`crm_kit.db.UnitOfWork`), declares `Consumer`s for the events it
reacts to, creates the kit tables in its first migration (`create_tables(op)`), and runs an `EventBus`.
"""

from crm_kit.events.bus import EventBus, connect_nats
from crm_kit.events.config import EventSettings
from crm_kit.events.consumer import Consumer, PermanentError
from crm_kit.events.inbox import InboxEntry
from crm_kit.events.outbox import OutboxEvent
from crm_kit.events.relay import OutboxRelay
from crm_kit.events.schema import create_all, create_tables, drop_tables
from crm_kit.events.streams import ensure_streams

__all__ = [
    "Consumer",
    "EventBus",
    "EventSettings",
    "InboxEntry",
    "OutboxEvent",
    "OutboxRelay",
    "PermanentError",
    "connect_nats",
    "create_all",
    "create_tables",
    "drop_tables",
    "ensure_streams",
]
