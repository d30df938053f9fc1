"""The recycle bin's end: deleted accounts and contacts stay restorable for the tenant's retention (30 days
unless set), then a periodic job purges them for good; an administrator may purge one record at once.

What goes with a purged record, in the same transaction:
- its relationships (either end), its lifecycle history and its timeline entries: deleted;
- interactions that belonged to it alone: deleted; interactions shared with other records lose it (and, for a
  contact, its entry among the participants); their version moves on;
- contacts that listed a purged account lose it from `account_ids` / `primary_account_id` (a ContactUpdated
  each, with before/after);
- duplicate scan groups forget it (a group left with one member goes);
- a merge that could still be undone and involves it can no longer be (its undo data held the record).
The periodic job leaves records of a merge that can still be undone until the undo period ends.
Subsidiaries in the bin keep a `parent_id` that names no account any more: restoring them drops it.

One `AccountPurged` / `ContactPurged` per record (audit), with no field values, only what went with it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from crm.common.v1 import event_pb2
from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import events_pb2
from crm_kit import context
from crm_kit.db import Database, UnitOfWork, expect_version, utcnow
from crm_kit.errors import Conflict, InvalidArgument
from crm_kit.policy import Decision
from sqlalchemy import and_, any_, delete, func, literal, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_customers import models
from crm_customers.domain import contacts
from crm_customers.domain.common import caller, get_owned
from crm_customers.domain.dedup.models import DuplicateGroup, Merge

log = logging.getLogger("crm.customers.recycle_bin")

DEFAULT_RETENTION_DAYS = 30
MAX_RETENTION_DAYS = 3650
# The periodic job looks at this many expired records at a time, each purged in its own transaction.
BATCH = 100
JOB_NAME = "customers.recycle-bin-purge"
JOB_ACTOR = "customers/recycle-bin-purge"


@dataclass(frozen=True)
class Kind:
    name: str
    model: Any


KINDS = {"account": Kind("account", models.Account), "contact": Kind("contact", models.Contact)}


# ---------------------------------------------------------------- settings


def settings_pb(row: models.TenantSettings | None) -> pb.RecycleBinSettings:
    if row is None:
        return pb.RecycleBinSettings(retention_days=DEFAULT_RETENTION_DAYS, version=0)
    return pb.RecycleBinSettings(
        retention_days=row.recycle_bin_retention_days or DEFAULT_RETENTION_DAYS,
        version=row.recycle_bin_version,
    )


async def get_settings(session: AsyncSession, tenant_id: str) -> pb.RecycleBinSettings:
    return settings_pb(await session.get(models.TenantSettings, tenant_id))


async def set_retention(uow: UnitOfWork, days: int, expected_version: int) -> pb.RecycleBinSettings:
    if not 1 <= days <= MAX_RETENTION_DAYS:
        raise InvalidArgument.for_field("retention_days", f"must be 1 to {MAX_RETENTION_DAYS} days")
    principal = caller()
    row = await uow.session.get(models.TenantSettings, principal.tenant_id, with_for_update=True)
    if row is None:
        row = models.TenantSettings(
            tenant_id=principal.tenant_id, tier_rules={}, version=0, recycle_bin_version=0
        )
        uow.session.add(row)
    expect_version(SimpleNamespace(version=row.recycle_bin_version), expected_version)
    before = settings_pb(row).retention_days
    if before == days and row.recycle_bin_retention_days is not None:
        return settings_pb(row)
    row.recycle_bin_retention_days = days
    row.recycle_bin_version += 1
    await uow.session.flush()
    answer = settings_pb(row)
    uow.emit(
        events_pb2.RecycleBinSettingsUpdated(recycle_bin_settings=answer),
        aggregate_type="recycle_bin_settings",
        aggregate_id=principal.tenant_id,
        aggregate_version=row.recycle_bin_version,
        action="updated",
        before={"retention_days": before},
        after={"retention_days": days},
    )
    return answer


# ---------------------------------------------------------------- purging one record


async def purge_now(uow: UnitOfWork, kind: str, record_id: str, decision: Decision) -> None:
    """An administrator's purge of one record of the recycle bin (within their data scope)."""
    spec = KINDS[kind]
    row = await get_owned(
        uow.session, spec.model, kind, record_id, decision=decision, lock=True, deleted=None
    )
    if row.deleted_at is None:
        raise Conflict(f"this {kind} is not in the recycle bin: delete it first", reason="not_deleted")
    await purge(uow, spec, row, reason="manual")


async def purge(uow: UnitOfWork, spec: Kind, row: Any, *, reason: str) -> events_pb2.PurgeSummary:
    """Remove a (locked) recycle-bin row for good, with what goes with it, and record the event."""
    session, tenant, rid = uow.session, row.tenant_id, row.id
    summary = events_pb2.PurgeSummary()
    R = models.Relationship
    removed = await session.execute(
        delete(R)
        .where(
            R.tenant_id == tenant,
            or_(
                and_(R.source_type == spec.name, R.source_id == rid),
                and_(R.target_type == spec.name, R.target_id == rid),
            ),
        )
        .returning(R.id)
    )
    summary.relationships_removed = len(removed.all())
    await _interactions(session, spec, tenant, rid, summary)
    if spec.name == "account":
        summary.contact_ids_unlinked.extend(await _unlink_contacts(uow, tenant, rid))
        stages = await session.execute(
            delete(models.AccountStageChange).where(
                models.AccountStageChange.tenant_id == tenant, models.AccountStageChange.account_id == rid
            )
        )
        summary.history_removed += stages.rowcount or 0
        entries = await session.execute(
            delete(models.TimelineEntry).where(
                models.TimelineEntry.tenant_id == tenant, models.TimelineEntry.account_id == rid
            )
        )
        summary.history_removed += entries.rowcount or 0
    await _forget_in_scans(session, spec, tenant, rid)
    summary.merge_ids_closed.extend(await _close_merges(session, spec, tenant, rid))
    deleted_at, deleted_by, version = row.deleted_at, row.deleted_by or "", row.version
    await session.delete(row)
    await session.flush()
    payload_type = events_pb2.AccountPurged if spec.name == "account" else events_pb2.ContactPurged
    payload = payload_type(reason=reason, summary=summary)
    setattr(payload, f"{spec.name}_id", rid)
    payload.deleted_at.FromDatetime(deleted_at)
    uow.emit(
        payload,
        aggregate_type=spec.name,
        aggregate_id=rid,
        aggregate_version=version + 1,
        action="purged",
        before={"deleted_at": deleted_at.isoformat(), "deleted_by": deleted_by},
    )
    return summary


async def _interactions(
    session: AsyncSession, spec: Kind, tenant: str, rid: str, summary: events_pb2.PurgeSummary
) -> None:
    I = models.Interaction  # noqa: E741
    own, other = (I.account_ids, I.contact_ids) if spec.name == "account" else (I.contact_ids, I.account_ids)
    alone = await session.execute(
        delete(I).where(
            I.tenant_id == tenant,
            own.contains([rid]),
            func.cardinality(own) == 1,
            func.cardinality(other) == 0,
        )
    )
    summary.interactions_removed = alone.rowcount or 0
    values: dict[Any, Any] = {own: func.array_remove(own, rid), I.version: I.version + 1}
    if spec.name == "contact":
        values[I.participants] = text(
            "(SELECT coalesce(jsonb_agg(p), '[]'::jsonb) FROM jsonb_array_elements(participants) p "
            "WHERE NOT (p->>'kind' = 'contact' AND p->>'id' = :purged_id))"
        ).bindparams(purged_id=rid)
    shared = await session.execute(
        update(I)
        .where(I.tenant_id == tenant, own.contains([rid]))
        .values(values)
        .execution_options(synchronize_session=False)
    )
    summary.interactions_unlinked = shared.rowcount or 0
    if spec.name == "contact":  # named as a participant only
        await session.execute(
            update(I)
            .where(I.tenant_id == tenant, I.participants.contains([{"kind": "contact", "id": rid}]))
            .values({I.participants: values[I.participants], I.version: I.version + 1})
            .execution_options(synchronize_session=False)
        )


async def _unlink_contacts(uow: UnitOfWork, tenant: str, account_id: str) -> list[str]:
    C = models.Contact
    rows = (
        await uow.session.scalars(
            select(C)
            .where(C.tenant_id == tenant, C.account_ids.contains([account_id]))
            .order_by(C.id)
            .with_for_update()
        )
    ).all()
    for c in rows:
        before = contacts.snapshot(c)
        c.account_ids = [a for a in c.account_ids if a != account_id]
        if c.primary_account_id == account_id:
            c.primary_account_id = None
        c.version += 1
        c.updated_at = utcnow()
        await uow.session.flush()
        uow.emit(
            events_pb2.ContactUpdated(contact=contacts.contact_pb(c)),
            aggregate_type="contact",
            aggregate_id=c.id,
            aggregate_version=c.version,
            action="updated",
            before=before,
            after=contacts.snapshot(c),
        )
    return [c.id for c in rows]


async def _forget_in_scans(session: AsyncSession, spec: Kind, tenant: str, rid: str) -> None:
    G = DuplicateGroup
    mentions = and_(G.tenant_id == tenant, G.record_type == spec.name, G.members.contains([{"id": rid}]))
    await session.execute(
        update(G)
        .where(mentions)
        .values(
            members=text(
                "(SELECT coalesce(jsonb_agg(m), '[]'::jsonb) FROM jsonb_array_elements(members) m "
                "WHERE m->>'id' <> :purged_id)"
            ).bindparams(purged_id=rid)
        )
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        delete(G).where(
            G.tenant_id == tenant, G.record_type == spec.name, func.jsonb_array_length(G.members) < 2
        )
    )


def _undoable(spec: Kind, tenant: str, rid: Any, now: Any) -> Any:
    """Merges of the record that can still be undone (the record is their survivor or one of the merged)."""
    M = Merge
    return and_(
        M.tenant_id == tenant,
        M.record_type == spec.name,
        M.status == "merged",
        M.undo_until > now,
        or_(M.survivor_id == rid, any_(M.merged_ids) == rid),
    )


async def _close_merges(session: AsyncSession, spec: Kind, tenant: str, rid: str) -> list[str]:
    now = utcnow()
    closed = await session.execute(
        update(Merge)
        .where(_undoable(spec, tenant, rid, now))
        .values(undo_until=now, undo_data=None)
        .returning(Merge.id)
        .execution_options(synchronize_session=False)
    )
    return [r[0] for r in closed.all()]


# ---------------------------------------------------------------- the periodic job


async def purge_expired(db: Database, *, now: dt.datetime | None = None, batch: int = BATCH) -> int:
    """Purge every record, of every tenant, deleted longer ago than its tenant's retention; one transaction
    per record (a record that fails is logged and left for the next run). Returns how many were purged."""
    purged = 0
    for spec in KINDS.values():
        after: tuple[dt.datetime, str] | None = None
        while True:
            async with db.read() as session:
                expired = await _expired(session, spec, now or utcnow(), after, batch)
            for tenant_id, rid, deleted_at in expired:
                try:
                    purged += await _purge_expired_one(db, spec, tenant_id, rid, now)
                except Exception:
                    log.exception("purging %s %s failed; the next run tries again", spec.name, rid)
                after = (deleted_at, rid)
            if len(expired) < batch:
                break
    return purged


async def _expired(
    session: AsyncSession, spec: Kind, now: dt.datetime, after: tuple[dt.datetime, str] | None, batch: int
) -> list[tuple[str, str, dt.datetime]]:
    model = spec.model
    stmt = select(model.tenant_id, model.id, model.deleted_at).where(*_expired_clauses(spec, now))
    if after is not None:
        stmt = stmt.where(
            or_(model.deleted_at > after[0], and_(model.deleted_at == after[0], model.id > after[1]))
        )
    rows = await session.execute(stmt.order_by(model.deleted_at, model.id).limit(batch))
    return [(r[0], r[1], r[2]) for r in rows]


def _expired_clauses(spec: Kind, now: dt.datetime) -> list[Any]:
    model, S = spec.model, models.TenantSettings
    days = select(S.recycle_bin_retention_days).where(S.tenant_id == model.tenant_id).scalar_subquery()
    retention = func.make_interval(0, 0, 0, func.coalesce(days, DEFAULT_RETENTION_DAYS))
    return [
        model.deleted_at.is_not(None),
        model.deleted_at < literal(now) - retention,
        ~select(Merge.id).where(_undoable(spec, model.tenant_id, model.id, now)).exists(),
    ]


async def _purge_expired_one(
    db: Database, spec: Kind, tenant_id: str, rid: str, now: dt.datetime | None
) -> int:
    principal = context.Principal(
        tenant_id=tenant_id,
        actor_id=JOB_ACTOR,
        actor_type=event_pb2.ACTOR_TYPE_SYSTEM,
        name="recycle bin purge",
    )
    token = context.bind(context.RequestContext(principal=principal))
    try:
        async with db.unit_of_work() as uow:
            model = spec.model
            # Still expired (not restored meanwhile), and not being purged by someone else right now.
            row = (
                await uow.session.scalars(
                    select(model)
                    .where(
                        model.id == rid,
                        model.tenant_id == tenant_id,
                        *_expired_clauses(spec, now or utcnow()),
                    )
                    .with_for_update(skip_locked=True)
                )
            ).one_or_none()
            if row is None:
                return 0
            await purge(uow, spec, row, reason="retention")
            return 1
    finally:
        context.reset(token)
