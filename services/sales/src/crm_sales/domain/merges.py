"""Customers' merges, followed in sales.

When the customers service folds accounts (or contacts) into a survivor it publishes
`crm.customers.v1.RecordsMerged`; sales then re-points every reference it holds to a merged record — converted
leads, opportunities, quotes, contracts, orders, payment plans and their instalments, payments, tasks and
follow-up records about the record — to the survivor. Each record that changed gets a version bump (its ETag
goes stale) and a `CustomerReferencesMoved` event with the before and after of each field; the whole merge a
`CustomerMergeFollowed`.

What moved is kept (`CustomerMerge.moves`), so `crm.customers.v1.MergeUndone` moves back exactly those
references, and only those that still name the survivor: a reference changed by someone since the merge stays as
they set it.

Idempotent: the merge's row is claimed with INSERT … ON CONFLICT DO NOTHING, so a second delivery of the same
merge (a replay under another event id, a concurrent duplicate) moves nothing. An undo that arrives before its
merge (its merge event dead-lettered, say) is recorded as undone with nothing moved, and the late merge event
then moves nothing either.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from crm.common.v1 import event_pb2
from crm.customers.v1 import customers_pb2, data_quality_pb2
from crm.sales.v1 import events_pb2
from crm_kit.db import UnitOfWork, utcnow
from crm_kit.events import Consumer
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models

RECORD_TYPES = {customers_pb2.RECORD_TYPE_ACCOUNT: "account", customers_pb2.RECORD_TYPE_CONTACT: "contact"}


@dataclass(frozen=True)
class Ref:
    """A column of sales that names an account or a contact, and the record (aggregate) a change to it is
    reported on: the row itself, or the row named by `aggregate_column` (an instalment's payment plan)."""

    model: Any
    column: str
    object_type: str
    aggregate_column: str = "id"
    # Tasks and follow-up records name any record: related_type says which kind.
    related: bool = False


REFS: dict[str, tuple[Ref, ...]] = {
    "account": (
        Ref(models.Lead, "converted_account_id", "lead"),
        Ref(models.Opportunity, "account_id", "opportunity"),
        Ref(models.Quote, "account_id", "quote"),
        Ref(models.Contract, "account_id", "contract"),
        Ref(models.Order, "account_id", "order"),
        Ref(models.PaymentPlan, "account_id", "payment_plan"),
        Ref(models.Instalment, "account_id", "payment_plan", aggregate_column="plan_id"),
        Ref(models.Payment, "account_id", "payment"),
        Ref(models.Refund, "account_id", "payment", aggregate_column="payment_id"),
        Ref(models.Task, "related_id", "task", related=True),
        Ref(models.Activity, "related_id", "activity", related=True),
    ),
    "contact": (
        Ref(models.Lead, "converted_contact_id", "lead"),
        Ref(models.Opportunity, "contact_id", "opportunity"),
        Ref(models.Quote, "contact_id", "quote"),
        Ref(models.Task, "related_id", "task", related=True),
        Ref(models.Activity, "related_id", "activity", related=True),
    ),
}
TABLES = {ref.model.__tablename__: ref.model for refs in REFS.values() for ref in refs}
# The records that carry a version: a re-pointed one gets a new version (clients' If-Match goes stale).
VERSIONED = {
    "lead": models.Lead,
    "opportunity": models.Opportunity,
    "quote": models.Quote,
    "contract": models.Contract,
    "order": models.Order,
    "payment_plan": models.PaymentPlan,
    "task": models.Task,
}


async def _move(
    session: AsyncSession, ref: Ref, *, tenant_id: str, kind: str, merged: list[str], survivor: str
) -> list[dict[str, Any]]:
    """Re-point `ref` from the merged ids to the survivor; the moves, for undo and for the events."""
    m = ref.model
    col = getattr(m, ref.column)
    stmt = select(m.id, col, getattr(m, ref.aggregate_column)).where(
        m.tenant_id == tenant_id, col.in_(merged)
    )
    if ref.related:
        stmt = stmt.where(m.related_type == kind)
    rows = (await session.execute(stmt.order_by(m.id).with_for_update())).all()
    if not rows:
        return []
    await session.execute(
        update(m).where(m.id.in_([r[0] for r in rows])).values({ref.column: survivor}),
        execution_options={"synchronize_session": False},
    )
    return [
        {
            "table": m.__tablename__,
            "id": row_id,
            "column": ref.column,
            "object_type": ref.object_type,
            "object_id": aggregate_id,
            "before": before,
            "after": survivor,
        }
        for row_id, before, aggregate_id in rows
    ]


async def _move_back(
    session: AsyncSession, moves: list[dict[str, Any]], tenant_id: str
) -> list[dict[str, Any]]:
    """Undo `moves` where the reference still holds what the merge wrote; the moves made (before ↔ after)."""
    by_column: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for move in moves:
        by_column[(move["table"], move["column"])].append(move)
    made: list[dict[str, Any]] = []
    for (table, column), group in sorted(by_column.items()):
        m = TABLES[table]
        col = getattr(m, column)
        current = dict(
            (
                await session.execute(
                    select(m.id, col)
                    .where(m.tenant_id == tenant_id, m.id.in_([g["id"] for g in group]))
                    .order_by(m.id)
                    .with_for_update()
                )
            ).all()
        )
        back: dict[str, list[str]] = defaultdict(list)
        for move in group:
            if current.get(move["id"]) != move["after"]:
                continue  # changed since the merge (or gone): what someone set stands
            back[move["before"]].append(move["id"])
            made.append({**move, "before": move["after"], "after": move["before"]})
        for value, ids in back.items():
            await session.execute(
                update(m).where(m.id.in_(ids)).values({column: value}),
                execution_options={"synchronize_session": False},
            )
    return made


async def _report(
    uow: UnitOfWork,
    record: models.CustomerMerge,
    moves: list[dict[str, Any]],
    *,
    undone: bool,
    actor: event_pb2.Actor | None,
) -> None:
    """New versions for the records that changed, one event per record, one for the merge."""
    session = uow.session
    by_object: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for move in moves:
        by_object[(move["object_type"], move["object_id"])].append(move)
    versions: dict[tuple[str, str], int] = {}
    for object_type, model in VERSIONED.items():
        ids = sorted({oid for (otype, oid) in by_object if otype == object_type})
        if ids:
            rows = await session.execute(
                update(model)
                .where(model.id.in_(ids))
                .values(version=model.version + 1)
                .returning(model.id, model.version),
                execution_options={"synchronize_session": False},
            )
            versions.update({(object_type, i): v for i, v in rows.all()})
    common = {
        "merge_id": record.merge_id,
        "record_type": record.record_type,
        "survivor_id": record.survivor_id,
        "merged_ids": list(record.merged_ids),
        "undone": undone,
    }
    action = "customer_merge_undone" if undone else "customer_merged"
    for (object_type, object_id), group in by_object.items():
        before, after = {}, {}
        for move in group:
            name = (
                move["column"]
                if move["id"] == object_id
                else f"{move['table']}.{move['id']}.{move['column']}"
            )
            before[name], after[name] = move["before"], move["after"]
        uow.emit(
            events_pb2.CustomerReferencesMoved(
                object_type=object_type, object_id=object_id, fields=sorted(after), **common
            ),
            aggregate_type=object_type,
            aggregate_id=object_id,
            aggregate_version=versions.get((object_type, object_id), 1),
            action=action,
            before=before,
            after=after,
            tenant_id=record.tenant_id,
            actor=actor,
        )
    uow.emit(
        events_pb2.CustomerMergeFollowed(references_moved=len(moves), **common),
        aggregate_type="customer_merge",
        aggregate_id=record.merge_id,
        aggregate_version=2 if undone else 1,
        action="undone" if undone else "followed",
        tenant_id=record.tenant_id,
        actor=actor,
    )


async def _claim(
    session: AsyncSession, merge: data_quality_pb2.Merge, *, tenant_id: str, kind: str, status: str
) -> models.CustomerMerge | None:
    """The merge's row, new (None when it was there already: this merge was seen before)."""
    now = utcnow()
    inserted = await session.scalar(
        insert(models.CustomerMerge)
        .values(
            merge_id=merge.id,
            tenant_id=tenant_id,
            record_type=kind,
            survivor_id=merge.survivor_id,
            merged_ids=list(merge.merged_ids),
            status=status,
            moves=[],
            moved_back=0,
            followed_at=now if status == "followed" else None,
            undone_at=now if status == "undone" else None,
        )
        .on_conflict_do_nothing(index_elements=["merge_id"])
        .returning(models.CustomerMerge.merge_id)
    )
    if inserted is None:
        return None
    return await session.get(models.CustomerMerge, merge.id)


async def follow_merge(
    uow: UnitOfWork, merge: data_quality_pb2.Merge, *, tenant_id: str, actor: event_pb2.Actor | None = None
) -> models.CustomerMerge | None:
    """Re-point sales' references from the merged records to the survivor, once per merge."""
    kind = RECORD_TYPES.get(merge.record_type)
    if kind is None or not merge.id or not merge.survivor_id:
        return None
    record = await _claim(uow.session, merge, tenant_id=tenant_id, kind=kind, status="followed")
    if record is None:
        return None
    merged = sorted({i for i in merge.merged_ids if i and i != merge.survivor_id})
    moves: list[dict[str, Any]] = []
    for ref in REFS[kind]:
        moves += await _move(
            uow.session, ref, tenant_id=tenant_id, kind=kind, merged=merged, survivor=merge.survivor_id
        )
    record.moves = moves
    await uow.session.flush()
    await _report(uow, record, moves, undone=False, actor=actor)
    return record


async def follow_undo(
    uow: UnitOfWork, merge: data_quality_pb2.Merge, *, tenant_id: str, actor: event_pb2.Actor | None = None
) -> models.CustomerMerge | None:
    """Move back what the merge moved here (what still names the survivor), once."""
    kind = RECORD_TYPES.get(merge.record_type)
    if kind is None or not merge.id:
        return None
    if await _claim(uow.session, merge, tenant_id=tenant_id, kind=kind, status="undone") is not None:
        return None  # the undo came before its merge: nothing was moved, and the merge will move nothing
    record = await uow.session.scalar(
        select(models.CustomerMerge)
        .where(models.CustomerMerge.merge_id == merge.id, models.CustomerMerge.tenant_id == tenant_id)
        .with_for_update()
    )
    if record is None or record.status == "undone":
        return None
    made = await _move_back(uow.session, list(record.moves), tenant_id)
    record.status = "undone"
    record.moved_back = len(made)
    record.undone_at = utcnow()
    await uow.session.flush()
    await _report(uow, record, made, undone=True, actor=actor)
    return record


async def on_customers_event(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload: Any) -> None:
    """The changes in sales are the merging person's doing: the events name them as the actor."""
    follow = follow_merge if isinstance(payload, data_quality_pb2.RecordsMerged) else follow_undo
    await follow(uow, payload.merge, tenant_id=envelope.tenant_id, actor=envelope.actor)


CONSUMER = Consumer(
    name="sales-customer-merges",
    filter_subjects=[data_quality_pb2.RecordsMerged, data_quality_pb2.MergeUndone],
    handler=on_customers_event,
)
