"""The transactional outbox: an event row written in the same transaction as the change it describes."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
from crm.common.v1 import event_pb2
from google.protobuf import any_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from opentelemetry import trace
from sqlalchemy import DDL, BigInteger, DateTime, Identity, Index, LargeBinary, String, Text, event
from sqlalchemy.orm import Mapped, mapped_column

from crm_kit import context
from crm_kit.db import Base, utcnow
from crm_kit.errors import InvalidArgument
from crm_kit.events.subjects import event_type, subject_for
from crm_kit.ids import new_id

# The largest event (serialized envelope) a unit of work may emit. Well under NATS's max_payload (1 MiB by
# default; `crm_kit.events.bus` refuses to start against a server whose limit is below this plus room for
# headers): an event NATS cannot carry would stop its stream, so the write that makes it is refused instead
# (422 `event_too_large`) and nothing of it is written. Bulk (files, long texts) belongs in a table the event
# refers to, not in the event.
MAX_EVENT_BYTES = 256 * 1024
# What the relay's headers (Nats-Msg-Id, traceparent) and NATS's framing may add on top of the envelope.
HEADER_ALLOWANCE = 4 * 1024

# The most characters each identifying text field of an envelope holds ("actor.name" is the actor's `name`).
# Declared once: `build_envelope` keeps every event within them, and whatever stores these fields (the outbox's
# columns below, the audit trail's) takes its sizes from here, so an event is never one its store refuses. A
# display name is shortened to fit; any other field over its bound refuses the write (422 `event_field_too_long`).
ENVELOPE_TEXT_LIMITS: dict[str, int] = {
    "type": 200,
    "tenant_id": 36,
    "actor.id": 64,
    "actor.name": 200,
    "aggregate_type": 50,
    "aggregate_id": 64,
    "action": 50,
    "request_id": context.REQUEST_ID_MAX,
    "trace_id": context.TRACE_ID_LENGTH,
}
# Shortened rather than refused: a name shown to people (an unknown sign-in's actor is the address typed).
_SHORTENED = {"actor.name"}


class OutboxEvent(Base):
    """Written by the unit of work, read and marked by the relay. `seq` orders publication."""

    __tablename__ = "outbox_events"

    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    subject: Mapped[str] = mapped_column(String(200))
    tenant_id: Mapped[str] = mapped_column(String(ENVELOPE_TEXT_LIMITS["tenant_id"]))
    aggregate_id: Mapped[str] = mapped_column(String(ENVELOPE_TEXT_LIMITS["aggregate_id"]))
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    traceparent: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    published_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Set by the relay when NATS refused this one event for good (too large, bad subject...): the row waits
    # for an operator (`python -m crm_kit.events.parked`), with later events of its aggregate behind it.
    parked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    parked_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        # The relay's only query: the oldest unpublished rows. Partial, so it stays as small as the backlog.
        Index("ix_outbox_events_unpublished", "seq", postgresql_where="published_at IS NULL"),
        # Pruning of published rows after the retention period, without scanning the table.
        Index("ix_outbox_events_published_at", "published_at", postgresql_where="published_at IS NOT NULL"),
        # What holds back the later events of an aggregate: the parked rows (normally none).
        Index(
            "ix_outbox_events_parked",
            "tenant_id",
            "aggregate_id",
            "seq",
            postgresql_where="parked_at IS NOT NULL",
        ),
    )


def envelope_text(envelope: event_pb2.EventEnvelope, path: str) -> str:
    """The envelope's text field at `path` ("actor.name")."""
    value: Any = envelope
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _keep_to_limits(envelope: event_pb2.EventEnvelope) -> None:
    for path, limit in ENVELOPE_TEXT_LIMITS.items():
        value = envelope_text(envelope, path)
        if len(value) <= limit:
            continue
        if path not in _SHORTENED:
            raise InvalidArgument(
                f"the change cannot be recorded: its event's {path} has {len(value)} characters, over {limit}",
                reason="event_field_too_long",
            )
        *parents, name = path.split(".")
        holder: Any = envelope
        for part in parents:
            holder = getattr(holder, part)
        setattr(holder, name, value[: limit - 1] + "…")


# Every committed insert wakes the active relay, even when it runs in another replica: the NOTIFY is sent at
# commit, so the relay publishes within milliseconds instead of at its next poll. The poll stays as a safety net for notifications lost with a dropped connection.
OUTBOX_CHANNEL = "crm_outbox"
# The payload is the highest seq the statement inserted, so the relay can ignore the notification of rows it
# already fetched (after this process's own after-commit hook woke it).
OUTBOX_NOTIFY_DDL = (
    "CREATE OR REPLACE FUNCTION crm_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN PERFORM pg_notify('{OUTBOX_CHANNEL}', (SELECT max(seq) FROM new_rows)::text); RETURN NULL; END $$",
    "DROP TRIGGER IF EXISTS outbox_events_notify ON outbox_events",
    "CREATE TRIGGER outbox_events_notify AFTER INSERT ON outbox_events REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION crm_outbox_notify()",
)
for _statement in OUTBOX_NOTIFY_DDL:
    event.listen(OutboxEvent.__table__, "after_create", DDL(_statement).execute_if(dialect="postgresql"))


def to_value(value: Any) -> struct_pb2.Value:
    v = struct_pb2.Value()
    if value is None:
        v.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        v.bool_value = value
    elif isinstance(value, int | float):
        v.number_value = value
    elif isinstance(value, dict):
        v.struct_value.update(value)
    elif isinstance(value, list | tuple):
        v.list_value.extend(list(value))
    elif isinstance(value, dt.datetime):
        v.string_value = value.isoformat()
    else:
        v.string_value = str(value)
    return v


def diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[event_pb2.FieldChange]:
    """The changed fields between two snapshots; a created object has no `before`, a deleted one no `after`."""
    before, after = before or {}, after or {}
    changes = []
    for field in sorted(set(before) | set(after)):
        b, a = before.get(field), after.get(field)
        if b == a:
            continue
        change = event_pb2.FieldChange(field=field)
        if field in before:
            change.before.CopyFrom(to_value(b))
        if field in after:
            change.after.CopyFrom(to_value(a))
        changes.append(change)
    return changes


def current_traceparent() -> str:
    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        return ""
    return f"00-{span.trace_id:032x}-{span.span_id:016x}-{int(span.trace_flags):02x}"


def build_envelope(
    payload: Message,
    *,
    aggregate_type: str,
    aggregate_id: str,
    aggregate_version: int = 0,
    action: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    tenant_id: str | None = None,
    actor: event_pb2.Actor | None = None,
) -> event_pb2.EventEnvelope:
    ctx = context.current()
    principal = ctx.principal
    occurred = timestamp_pb2.Timestamp()
    occurred.FromDatetime(utcnow())
    packed = any_pb2.Any()
    packed.Pack(payload)
    if actor is None:
        actor = principal.actor_message() if principal else context.SYSTEM.actor_message()
    envelope = event_pb2.EventEnvelope(
        id=new_id(),
        type=event_type(payload),
        tenant_id=tenant_id if tenant_id is not None else (principal.tenant_id if principal else ""),
        actor=actor,
        occurred_at=occurred,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        aggregate_version=aggregate_version,
        action=action,
        changes=diff(before, after),
        request_id=ctx.request_id,
        trace_id=ctx.trace_id,
        payload=packed,
    )
    _keep_to_limits(envelope)
    return envelope


def outbox_row(envelope: event_pb2.EventEnvelope) -> tuple[str, str, str, str, bytes, str]:
    """The outbox columns of an event: id, subject, tenant, aggregate, envelope bytes, traceparent. Refuses
    (InvalidArgument, reason `event_too_large`) an envelope over `MAX_EVENT_BYTES`."""
    data = envelope.SerializeToString()
    if len(data) > MAX_EVENT_BYTES:
        raise InvalidArgument(
            f"the change is too large to record: its {envelope.type} event would be {len(data)} bytes, "
            f"over the limit of {MAX_EVENT_BYTES}; shorten the longest values",
            reason="event_too_large",
        )
    return (
        envelope.id,
        subject_for(envelope.type),
        envelope.tenant_id,
        envelope.aggregate_id,
        data,
        current_traceparent(),
    )


# All events of a transaction in one statement, in the order they were emitted (`seq` follows it). Sent on the
# driver at the end of the unit of work: one round trip and none of the ORM's flush, which measured about half
# a millisecond of Python per event row.
INSERT = (
    "INSERT INTO outbox_events (id, subject, tenant_id, aggregate_id, envelope, traceparent, created_at) "
    "SELECT id, subject, tenant_id, aggregate_id, envelope, traceparent, now() FROM "
    "unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[]) WITH ORDINALITY "
    "AS e(id, subject, tenant_id, aggregate_id, envelope, traceparent, n) ORDER BY n"
)


async def write(driver: asyncpg.Connection, rows: list[tuple[str, str, str, str, bytes, str]]) -> None:
    """Insert `rows` (from `outbox_row`) on the transaction's driver connection."""
    await driver.execute(INSERT, *(list(column) for column in zip(*rows, strict=True)))
