"""The audit trail of the whole system. Every service's events arrive here (one consumer per service
stream); each becomes one append-only record. Admins read it with filters."""

from __future__ import annotations

import datetime as dt

from crm.common.v1 import event_pb2
from crm.identity.v1 import identity_pb2
from crm_kit.events.outbox import envelope_text
from crm_kit.events.subjects import context_of
from crm_kit.paging import Page, SortKey
from crm_kit.validation import Check
from google.protobuf import json_format
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from crm_identity import models
from crm_identity.domain.common import caller, ts

ACTOR_TYPES = {v: k for k, v in event_pb2.ActorType.items()}


async def record(session: AsyncSession, envelope: event_pb2.EventEnvelope) -> None:
    """Idempotent: the record's id is the event's id, so a redelivered event adds nothing."""
    changes = [json_format.MessageToDict(c, preserving_proto_field_name=True) for c in envelope.changes]
    await session.execute(
        insert(models.AuditRecord)
        .values(
            id=envelope.id,
            occurred_at=envelope.occurred_at.ToDatetime(tzinfo=dt.UTC),
            actor_type=ACTOR_TYPES.get(envelope.actor.type, "ACTOR_TYPE_UNSPECIFIED"),
            changes=changes,
            service=context_of(envelope.type),
            **{
                column: envelope_text(envelope, path) for column, path in models.AUDIT_ENVELOPE_FIELDS.items()
            },
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )


def audit_pb(r: models.AuditRecord) -> identity_pb2.AuditEvent:
    event = identity_pb2.AuditEvent(
        id=r.id,
        occurred_at=ts(r.occurred_at),
        actor=event_pb2.Actor(type=event_pb2.ActorType.Value(r.actor_type), id=r.actor_id, name=r.actor_name),
        object_type=r.object_type,
        object_id=r.object_id,
        action=r.action,
        event_type=r.event_type,
        service=r.service,
        request_id=r.request_id,
        trace_id=r.trace_id,
    )
    for change in r.changes or []:
        json_format.ParseDict(change, event.changes.add())
    return event


async def list_events(
    session: AsyncSession, request: identity_pb2.ListAuditEventsRequest
) -> tuple[list[models.AuditRecord], str]:
    check = Check()
    if request.actor_id and request.actor_id != "system":
        check.uuid("actor_id", request.actor_id)
    check.done()
    keys = [SortKey(models.AuditRecord.id, descending=True)]
    page = Page.of(request.page, len(keys))
    m = models.AuditRecord
    stmt = select(m).where(m.tenant_id == caller().tenant_id)
    if request.actor_id:
        stmt = stmt.where(m.actor_id == request.actor_id)
    if request.object_type:
        stmt = stmt.where(m.object_type == request.object_type)
    if request.object_id:
        stmt = stmt.where(m.object_id == request.object_id)
    if request.action:
        stmt = stmt.where(m.action == request.action)
    if request.HasField("occurred_after"):
        stmt = stmt.where(m.occurred_at >= request.occurred_after.ToDatetime(tzinfo=dt.UTC))
    if request.HasField("occurred_before"):
        stmt = stmt.where(m.occurred_at < request.occurred_before.ToDatetime(tzinfo=dt.UTC))
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])
