"""Merge N accounts (or contacts) into one, and undo it within a period.

The survivor takes, field by field, the value of the record the caller chose (`field_sources`), else its own
value when it has one, else the first non-empty value of the merged records; list fields (phones, e-mails,
tags, …) not chosen are the union of all. Every reference to a merged record moves to the survivor: contacts'
account links, child accounts, interactions (the timeline) and relationships (an edge that would then exist
twice, or point at itself, is retired instead). The merged records go to the recycle bin with
`merged_into_id` set. An event (`RecordsMerged`) tells other services to re-point their own references.

Undo restores the rows as they were and moves every reference back. What it needs (the rows before, and each
moved reference with its value before and after) is kept on the merge until `undo_until`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from crm.customers.v1 import data_quality_pb2 as pb
from crm_kit.db import UnitOfWork
from crm_kit.errors import Conflict, FieldError, InvalidArgument, not_found
from crm_kit.ids import is_uuid, new_id
from crm_kit.paging import Page, SortKey
from crm_kit.policy import Decision
from sqlalchemy import Date, DateTime, Numeric, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer

from crm_customers import models, normalize
from crm_customers.domain.dedup.common import (
    RECORD_TYPE_PB,
    RECORD_TYPES,
    caller,
    expect_version,
    get_owned,
    ts,
    utcnow,
)
from crm_customers.domain.dedup.models import Merge

MAX_MERGED = 10
DEFAULT_UNDO_DAYS = 30
# Never merged field by field: identity, bookkeeping, and what is derived from other columns.
SYSTEM = frozenset(
    {
        "id",
        "tenant_id",
        "created_at",
        "updated_at",
        "version",
        "deleted_at",
        "deleted_by",
        "merged_into_id",
        "search_name",
        "search_grams",
        "search_extra",
        "name_key",
        "phones_normalized",
        "emails_normalized",
        "created_by",
    }
)
# Proto field names that stand for several columns.
GROUPS = {
    "consent": ("consent_email", "consent_sms", "consent_phone", "consent_wechat", "consent_updated_at")
}


def _model(record_type: str) -> Any:
    return models.Account if record_type == "account" else models.Contact


def _columns(model: Any) -> list[Any]:
    return list(model.__table__.columns)


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {} or value is False or value == 0


# ---------------------------------------------------------------- JSON for undo data


def _dump(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def _load(column: Any, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(column.type, Numeric):
        return Decimal(value)
    if isinstance(column.type, DateTime):
        return dt.datetime.fromisoformat(value)
    if isinstance(column.type, Date):
        return dt.date.fromisoformat(value)
    return value


def _snapshot_row(row: Any) -> dict[str, Any]:
    return {
        c.key: _dump(getattr(row, c.key)) for c in _columns(type(row)) if c.key not in ("id", "tenant_id")
    }


def _restore_row(row: Any, data: dict[str, Any]) -> None:
    for c in _columns(type(row)):
        if c.key in data:
            setattr(row, c.key, _load(c, data[c.key]))


# ---------------------------------------------------------------- values


def _field_columns(model: Any, field: str) -> tuple[str, ...] | None:
    if field in GROUPS and field == "consent" and model is models.Contact:
        return GROUPS[field]
    names = {c.key for c in _columns(model)}
    if field in names and field not in SYSTEM:
        return (field,)
    return None


def _merged_values(
    model: Any, survivor: Any, others: list[Any], field_sources: dict[str, str]
) -> dict[str, Any]:
    rows = {r.id: r for r in [survivor, *others]}
    values: dict[str, Any] = {}
    chosen_columns: set[str] = set()
    custom_chosen: dict[str, str] = {}
    errors = []
    for field, source in field_sources.items():
        if source not in rows:
            errors.append(
                FieldError(f"field_sources.{field}", "must be the survivor's or a merged record's id")
            )
            continue
        if field.startswith("custom_fields."):
            custom_chosen[field.split(".", 1)[1]] = source
            continue
        cols = _field_columns(model, field)
        if cols is None:
            errors.append(FieldError(f"field_sources.{field}", "is not a field that can be merged"))
            continue
        for col in cols:
            values[col] = getattr(rows[source], col)
            chosen_columns.add(col)
    if errors:
        raise InvalidArgument("invalid field_sources", field_errors=errors)
    ordered = [survivor, *others]
    for c in _columns(model):
        key = c.key
        if key in SYSTEM or key in chosen_columns or key == "custom_fields":
            continue
        if isinstance(getattr(survivor, key), list) and key not in ("im_handles",):
            union: list[Any] = []
            for r in ordered:
                for v in getattr(r, key) or []:
                    if v not in union:
                        union.append(v)
            values[key] = union
        elif key == "im_handles":
            handles: list[Any] = []
            for r in ordered:
                for h in r.im_handles or []:
                    if h not in handles:
                        handles.append(h)
            values[key] = handles
        else:
            values[key] = next(
                (getattr(r, key) for r in ordered if not _empty(getattr(r, key))), getattr(survivor, key)
            )
    custom: dict[str, Any] = {}
    for r in reversed(ordered):  # the survivor's own values win, then earlier merged ids
        custom.update({k: v for k, v in (r.custom_fields or {}).items() if not _empty(v)})
    for key, source in custom_chosen.items():
        if key in (rows[source].custom_fields or {}):
            custom[key] = rows[source].custom_fields[key]
        else:
            custom.pop(key, None)
    values["custom_fields"] = custom
    return values


def _refresh_derived(record_type: str, row: Any) -> None:
    """The normal forms and search columns follow the merged values."""
    from crm_customers.domain import search

    row.phones_normalized = _normalised(row.phones, normalize.normalize_phone)
    row.emails_normalized = _normalised(row.emails, normalize.normalize_email)
    if record_type == "account":
        row.name_key = normalize.company_name_key(row.name)
        names = (row.name, row.alt_name)
    else:
        row.name_key = normalize.person_name_key(row.name)
        names = (row.name, row.name_latin)
    row.search_name = search.name_text(*names)
    row.search_grams = search.name_grams(*names)
    row.search_extra = search.extra_text(row.phones, row.emails, [])


def _normalised(values: list[str], fn: Any) -> list[str]:
    out: list[str] = []
    for v in values or []:
        try:
            n = fn(v)
        except normalize.InvalidValue:
            continue
        if n not in out:
            out.append(n)
    return out


# ---------------------------------------------------------------- references


class Moves:
    """Every reference the merge changes, with its value before and after, for undo."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def record(self, table: str, row_id: str, column: str, before: Any, after: Any) -> None:
        self.items.append({"table": table, "id": row_id, "column": column, "before": before, "after": after})


def _replace_ids(values: list[str], merged: set[str], survivor: str) -> list[str]:
    out: list[str] = []
    for v in values or []:
        v = survivor if v in merged else v
        if v not in out:
            out.append(v)
    return out


async def _move_array(
    session: AsyncSession,
    moves: Moves,
    model: Any,
    column: str,
    tenant_id: str,
    merged: set[str],
    survivor: str,
) -> None:
    col = getattr(model, column)
    rows = (
        await session.execute(
            select(model.id, col)
            .where(model.tenant_id == tenant_id, col.overlap(sorted(merged)))
            .with_for_update()
        )
    ).all()
    for row_id, before in rows:
        after = _replace_ids(before, merged, survivor)
        await session.execute(update(model).where(model.id == row_id).values({column: after}))
        moves.record(model.__tablename__, row_id, column, list(before), after)


async def _move_scalar(
    session: AsyncSession,
    moves: Moves,
    model: Any,
    column: str,
    tenant_id: str,
    merged: set[str],
    survivor: str,
    *,
    skip_ids: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    col = getattr(model, column)
    rows = (
        await session.execute(
            select(model.id, col)
            .where(model.tenant_id == tenant_id, col.in_(sorted(merged)))
            .with_for_update()
        )
    ).all()
    for row_id, before in rows:
        if row_id in skip_ids:
            continue
        await session.execute(update(model).where(model.id == row_id).values({column: survivor}))
        moves.record(model.__tablename__, row_id, column, before, survivor)


async def _move_participants(
    session: AsyncSession, moves: Moves, tenant_id: str, merged: set[str], survivor: str
) -> None:
    """Interactions name their contact participants by id too ({"kind": "contact", "id": ...})."""
    model = models.Interaction
    rows = (
        await session.execute(
            select(model.id, model.participants)
            .where(model.tenant_id == tenant_id, model.contact_ids.overlap(sorted(merged)))
            .with_for_update()
        )
    ).all()
    for row_id, before in rows:
        after = [
            {**p, "id": survivor} if p.get("kind") == "contact" and p.get("id") in merged else p
            for p in before or []
        ]
        if after != before:
            await session.execute(update(model).where(model.id == row_id).values(participants=after))
            moves.record("interactions", row_id, "participants", before, after)


async def _move_relationships(
    session: AsyncSession, moves: Moves, tenant_id: str, merged: set[str], survivor: str, now: dt.datetime
) -> None:
    R = models.Relationship
    ids = sorted(merged)
    touching = (
        await session.scalars(
            select(R)
            .where(
                R.tenant_id == tenant_id,
                R.deleted_at.is_(None),
                or_(R.source_id.in_(ids), R.target_id.in_(ids)),
            )
            .with_for_update()
        )
    ).all()
    existing = {
        (r.type_key, r.source_id, r.target_id)
        for r in (
            await session.scalars(
                select(R).where(
                    R.tenant_id == tenant_id,
                    R.deleted_at.is_(None),
                    or_(R.source_id == survivor, R.target_id == survivor),
                )
            )
        ).all()
    }
    for rel in touching:
        source = survivor if rel.source_id in merged else rel.source_id
        target = survivor if rel.target_id in merged else rel.target_id
        edge = (rel.type_key, source, target)
        if source == target or edge in existing:
            # It would point at itself or exist twice: retired (and brought back by undo).
            moves.record("relationships", rel.id, "deleted_at", None, now.isoformat())
            rel.deleted_at = now
            continue
        if source != rel.source_id:
            moves.record("relationships", rel.id, "source_id", rel.source_id, source)
            rel.source_id = source
        if target != rel.target_id:
            moves.record("relationships", rel.id, "target_id", rel.target_id, target)
            rel.target_id = target
        existing.add(edge)
    await session.flush()


TABLES = {
    "contacts": models.Contact,
    "accounts": models.Account,
    "interactions": models.Interaction,
    "relationships": models.Relationship,
    "timeline_entries": models.TimelineEntry,
}


# ---------------------------------------------------------------- merge


def merge_pb(m: Merge) -> pb.Merge:
    return pb.Merge(
        id=m.id,
        record_type=RECORD_TYPE_PB[m.record_type],
        survivor_id=m.survivor_id,
        merged_ids=list(m.merged_ids),
        field_sources=dict(m.field_sources or {}),
        status=pb.MERGE_STATUS_MERGED if m.status == "merged" else pb.MERGE_STATUS_UNDONE,
        references_moved=m.references_moved,
        merged_by=m.merged_by,
        merged_at=ts(m.merged_at),
        undo_until=ts(m.undo_until),
        undone_at=ts(m.undone_at),
    )


async def merge(
    uow: UnitOfWork,
    *,
    record_type: int,
    survivor_id: str,
    merged_ids: list[str],
    field_sources: dict[str, str],
    expected_version: int = 0,
    visible: Any = None,
    undo_days: int = DEFAULT_UNDO_DAYS,
) -> tuple[Merge, Any]:
    """Fold `merged_ids` into `survivor_id`. `visible(model)` is the caller's data scope as a WHERE clause:
    every record must be in it (else 404, as for any record the caller cannot see)."""
    kind = RECORD_TYPES.get(record_type)
    if kind is None:
        raise InvalidArgument.for_field("record_type", "must be account or contact")
    merged_ids = list(dict.fromkeys(i for i in merged_ids if i))
    if not merged_ids:
        raise InvalidArgument.for_field("merged_ids", "name at least one record to merge")
    if len(merged_ids) > MAX_MERGED:
        raise InvalidArgument.for_field("merged_ids", f"at most {MAX_MERGED} records at once")
    if survivor_id in merged_ids:
        raise InvalidArgument.for_field("merged_ids", "must not contain the survivor")
    session = uow.session
    principal = caller()
    tenant = principal.tenant_id
    model = _model(kind)
    ids = [survivor_id, *merged_ids]
    for i in ids:
        if not is_uuid(i):
            raise not_found(kind, i)
    stmt = (
        select(model)
        .where(model.tenant_id == tenant, model.id.in_(ids), model.deleted_at.is_(None))
        .options(undefer("*"))  # every column goes into the undo data
    )
    if visible is not None:
        stmt = stmt.where(visible(model))
    rows = {r.id: r for r in (await session.scalars(stmt.order_by(model.id).with_for_update())).all()}
    for i in ids:
        if i not in rows:
            raise not_found(kind, i)
    survivor = rows[survivor_id]
    expect_version(survivor, expected_version)
    others = [rows[i] for i in merged_ids]
    before = {r.id: _snapshot_row(r) for r in rows.values()}

    values = _merged_values(model, survivor, others, field_sources)
    merged_set = set(merged_ids)
    if kind == "account" and values.get("parent_id") in merged_set | {survivor_id}:
        values["parent_id"] = next(
            (r.parent_id for r in others if r.parent_id and r.parent_id not in merged_set | {survivor_id}),
            None,
        )
    for key, value in values.items():
        setattr(survivor, key, value)
    _refresh_derived(kind, survivor)
    survivor.version += 1
    now = utcnow()
    for r in others:
        r.deleted_at = now
        r.deleted_by = principal.actor_id
        r.merged_into_id = survivor_id
        r.version += 1
    await session.flush()

    moves = Moves()
    if kind == "account":
        await _move_array(session, moves, models.Contact, "account_ids", tenant, merged_set, survivor_id)
        await _move_scalar(
            session, moves, models.Contact, "primary_account_id", tenant, merged_set, survivor_id
        )
        await _move_array(session, moves, models.Interaction, "account_ids", tenant, merged_set, survivor_id)
        await _move_scalar(
            session, moves, models.Account, "parent_id", tenant, merged_set, survivor_id, skip_ids=merged_set
        )
        await _move_scalar(
            session, moves, models.TimelineEntry, "account_id", tenant, merged_set, survivor_id
        )
    else:
        await _move_participants(session, moves, tenant, merged_set, survivor_id)
        await _move_array(session, moves, models.Interaction, "contact_ids", tenant, merged_set, survivor_id)
    await _move_relationships(session, moves, tenant, merged_set, survivor_id, now)

    record = Merge(
        id=new_id(),
        tenant_id=tenant,
        record_type=kind,
        survivor_id=survivor_id,
        merged_ids=merged_ids,
        field_sources=dict(field_sources),
        status="merged",
        references_moved=len(moves.items),
        merged_by=principal.actor_id,
        merged_at=now,
        undo_until=now + dt.timedelta(days=undo_days),
        undo_data={"rows": before, "moves": moves.items, "survivor_version": survivor.version},
    )
    session.add(record)
    await session.flush()
    await session.refresh(survivor)
    uow.emit(
        pb.RecordsMerged(merge=merge_pb(record)),
        aggregate_type=kind,
        aggregate_id=survivor_id,
        aggregate_version=survivor.version,
        action="merged",
        before={k: v for k, v in before[survivor_id].items() if k not in SYSTEM or k == "name_key"},
        after={k: v for k, v in _snapshot_row(survivor).items() if k not in SYSTEM or k == "name_key"},
    )
    return record, survivor


async def undo(uow: UnitOfWork, *, merge_id: str, visible: Any = None) -> tuple[Merge, Any]:
    session = uow.session
    record = await get_owned(session, Merge, "merge", merge_id, lock=True)
    if record.status != "merged":
        raise Conflict("this merge has already been undone", reason="merge_already_undone")
    now = utcnow()
    if record.undo_until < now or not record.undo_data:
        raise Conflict("the period in which this merge could be undone is over", reason="merge_undo_expired")
    kind = record.record_type
    model = _model(kind)
    ids = [record.survivor_id, *record.merged_ids]
    stmt = select(model).where(model.tenant_id == record.tenant_id, model.id.in_(ids)).options(undefer("*"))
    rows = {r.id: r for r in (await session.scalars(stmt.order_by(model.id).with_for_update())).all()}
    survivor = rows.get(record.survivor_id)
    if survivor is None or (
        visible is not None and not (await _visible(session, model, survivor.id, visible))
    ):
        raise not_found(kind, record.survivor_id)
    if survivor.version != record.undo_data.get("survivor_version"):
        raise Conflict(
            "the surviving record changed after the merge; undoing would lose those changes",
            reason="merge_superseded",
        )
    after_merge = _snapshot_row(survivor)
    data = record.undo_data
    for row_id, snapshot in data["rows"].items():
        row = rows.get(row_id)
        if row is None:
            continue
        version = row.version
        _restore_row(row, snapshot)
        row.version = version + 1
    await session.flush()
    merged = set(record.merged_ids)
    for move in reversed(data["moves"]):
        table = TABLES[move["table"]]
        col = getattr(table, move["column"])
        current = (
            await session.execute(select(col).where(table.id == move["id"]).with_for_update())
        ).scalar_one_or_none()
        before, after = move["before"], move["after"]
        if move["column"] == "participants":
            if current != after:
                continue  # changed since by someone else: theirs stands
            value: Any = before
        elif isinstance(before, list):
            if current is None:
                continue
            # Undo only what the merge did: ids it removed come back, the survivor it added goes if it was new.
            restored = [v for v in current if not (v == record.survivor_id and v not in before)]
            for v in before:
                if v in merged and v not in restored:
                    restored.append(v)
            value = restored
        elif move["column"] == "deleted_at":
            value = None
        else:
            if _dump(current) != after:
                continue  # changed since by someone else: theirs stands
            value = before
        await session.execute(update(table).where(table.id == move["id"]).values({move["column"]: value}))
    record.status = "undone"
    record.undone_at = now
    record.undo_data = None
    await session.flush()
    await session.refresh(survivor)
    uow.emit(
        pb.MergeUndone(merge=merge_pb(record)),
        aggregate_type=kind,
        aggregate_id=record.survivor_id,
        aggregate_version=survivor.version,
        action="merge_undone",
        before={k: v for k, v in after_merge.items() if k not in SYSTEM},
        after={k: v for k, v in _snapshot_row(survivor).items() if k not in SYSTEM},
    )
    return record, survivor


async def _visible(session: AsyncSession, model: Any, row_id: str, visible: Any) -> bool:
    return bool(await session.scalar(select(model.id).where(model.id == row_id, visible(model))))


# The kinds of record merged, by their model: a merge is read in its survivor's data scope.
SOURCES = {"account": models.Account, "contact": models.Contact}


def visible(reads: Mapping[str, Decision]) -> Any:
    """The merges the caller may read (`reads`: their "read" per kind of record): those whose survivor is in
    their data scope, and their own."""
    principal = caller()
    return or_(
        *(
            and_(Merge.record_type == kind, reads[kind].source_filter(principal, Merge.survivor_id, model))
            for kind, model in SOURCES.items()
        ),
        Merge.merged_by == principal.actor_id,
    )


async def get(session: AsyncSession, merge_id: str, *, reads: Mapping[str, Decision] | None = None) -> Merge:
    """The merge; with the reader's `reads`, only one they may read (`visible`)."""
    scope = visible(reads) if reads is not None else None
    return await get_owned(session, Merge, "merge", merge_id, visible=scope)


async def list_merges(
    session: AsyncSession,
    reads: Mapping[str, Decision],
    *,
    page_request: Any,
    record_type: int = 0,
    survivor_id: str = "",
) -> tuple[list[Merge], str]:
    keys = [SortKey(Merge.id, descending=True)]
    page = Page.of(page_request, len(keys))
    stmt = select(Merge).where(Merge.tenant_id == caller().tenant_id, visible(reads))
    if record_type:
        stmt = stmt.where(Merge.record_type == RECORD_TYPES.get(record_type, "?"))
    if survivor_id:
        stmt = stmt.where(Merge.survivor_id == survivor_id)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda m: [m.id])


async def expire_undo_data(session: AsyncSession) -> int:
    """Drop what undo needs once the period is over (run now and then by the worker)."""
    result = await session.execute(
        update(Merge).where(Merge.undo_until < utcnow(), Merge.undo_data.is_not(None)).values(undo_data=None)
    )
    return result.rowcount or 0
