"""Interactions (calls, meetings, visits, e-mails, notes) and the timeline of accounts and contacts.

An interaction belongs to one or more accounts and/or contacts. Its own data scope is that of its owner
(who logged it); the timeline of a record shows the record's interactions to whoever may read the record.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import events_pb2
from crm_kit.db import UnitOfWork, utcnow
from crm_kit.errors import FieldError, InvalidArgument
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.policy import Decision, Text
from crm_kit.validation import Check
from sqlalchemy import or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from crm_customers import models
from crm_customers.domain.common import (
    INTERACTION_KINDS,
    PARTICIPANT_KINDS,
    caller,
    expect_version,
    get_owned,
    soft_delete,
    ts,
    visible,
)

UPDATABLE = (
    "kind",
    "subject",
    "body",
    "occurred_at",
    "duration_minutes",
    "outcome",
    "location",
    "account_ids",
    "contact_ids",
    "participants",
    "attachments",
)
KIND_TITLES = {
    "call": ("电话", "Call"),
    "meeting": ("会议", "Meeting"),
    "visit": ("拜访", "Visit"),
    "email": ("邮件", "E-mail"),
    "note": ("备注", "Note"),
}


def interaction_pb(i: models.Interaction) -> pb.Interaction:
    return pb.Interaction(
        id=i.id,
        kind=INTERACTION_KINDS.number(i.kind),
        subject=i.subject,
        body=i.body,
        occurred_at=ts(i.occurred_at),
        duration_minutes=i.duration_minutes,
        outcome=i.outcome,
        location=i.location,
        account_ids=list(i.account_ids or []),
        contact_ids=list(i.contact_ids or []),
        participants=[
            pb.Participant(
                kind=PARTICIPANT_KINDS.number(p.get("kind", "")),
                id=p.get("id", ""),
                name=p.get("name", ""),
                email=p.get("email", ""),
            )
            for p in i.participants or []
        ],
        attachments=[pb.Attachment(**a) for a in i.attachments or []],
        owner_id=i.owner_id,
        department_id=i.department_id,
        created_by=i.created_by,
        created_at=ts(i.created_at),
        updated_at=ts(i.updated_at),
        version=i.version,
    )


def snapshot(i: models.Interaction) -> dict[str, Any]:
    out = {k: getattr(i, k) for k in UPDATABLE}
    out["occurred_at"] = i.occurred_at.isoformat() if i.occurred_at else ""
    for k in ("account_ids", "contact_ids", "participants", "attachments"):
        out[k] = list(out[k] or [])
    return out


def timeline_item(i: models.Interaction, decision: Decision, locale: str = "zh-CN") -> pb.TimelineItem:
    """The interaction on a timeline, as a reader with this "interaction" read decision may see it: the title
    names the subject and the summary quotes the outcome (else the start of the body) only when the reader sees
    those fields."""
    zh, en = KIND_TITLES.get(i.kind, (i.kind, i.kind))
    label = en if locale == "en" else zh
    summary = decision.render(Text.of(i.outcome, "outcome")) or decision.render(Text.of(i.body[:200], "body"))
    return pb.TimelineItem(
        id=i.id,
        kind=f"interaction.{i.kind}",
        occurred_at=ts(i.occurred_at),
        title=decision.render(Text.join(label, Text.of(i.subject, "subject"), sep=": ")),
        summary=summary,
        interaction=decision.redact_message(interaction_pb(i)),
    )


async def _check_records(session: AsyncSession, check: Check, row: models.Interaction) -> None:
    if not row.account_ids and not row.contact_ids:
        check.fail("account_ids", "an interaction belongs to at least one account or contact")
        return
    for field, model, ids in (
        ("account_ids", models.Account, row.account_ids),
        ("contact_ids", models.Contact, row.contact_ids),
    ):
        for n, value in enumerate(ids):
            check.uuid(f"{field}[{n}]", value)
        if check.errors or not ids:
            continue
        found = set(
            (
                await session.scalars(
                    select(model.id).where(
                        model.tenant_id == row.tenant_id, model.id.in_(list(ids)), model.deleted_at.is_(None)
                    )
                )
            ).all()
        )
        for n, value in enumerate(ids):
            if value not in found:
                check.fail(f"{field}[{n}]", "no such record")


def _copy(check: Check, row: models.Interaction, src: pb.Interaction, paths: list[str]) -> None:
    for p in paths:
        if p == "kind":
            row.kind = INTERACTION_KINDS.name(src.kind)
            if not row.kind:
                check.fail("kind", "is required")
        elif p in ("subject", "location"):
            setattr(row, p, getattr(src, p).strip())
            check.length(p, getattr(row, p), max_len=300)
        elif p in ("body", "outcome"):
            setattr(row, p, getattr(src, p))
            check.length(p, getattr(row, p), max_len=50000)
        elif p == "occurred_at":
            row.occurred_at = (
                src.occurred_at.ToDatetime(tzinfo=dt.UTC) if src.HasField("occurred_at") else utcnow()
            )
        elif p == "duration_minutes":
            if not 0 <= src.duration_minutes <= 24 * 60:
                check.fail("duration_minutes", "must be 0 to 1440")
            row.duration_minutes = src.duration_minutes
        elif p in ("account_ids", "contact_ids"):
            ids = list(dict.fromkeys(v.strip() for v in getattr(src, p) if v.strip()))
            if len(ids) > 50:
                check.fail(p, "at most 50")
            setattr(row, p, ids)
        elif p == "participants":
            people = []
            for n, part in enumerate(src.participants):
                kind = PARTICIPANT_KINDS.name(part.kind) or "external"
                if kind in ("user", "contact"):
                    check.uuid(f"participants[{n}].id", part.id, required=True)
                elif not part.name.strip() and not part.email.strip():
                    check.fail(f"participants[{n}]", "an external participant needs a name or an e-mail")
                people.append(
                    {"kind": kind, "id": part.id, "name": part.name.strip(), "email": part.email.strip()}
                )
            if len(people) > 100:
                check.fail("participants", "at most 100")
            row.participants = people
        elif p == "attachments":
            files = []
            for n, a in enumerate(src.attachments):
                if not a.name.strip() or len(a.name) > 300:
                    check.fail(f"attachments[{n}].name", "must be 1 to 300 characters")
                if a.size_bytes < 0:
                    check.fail(f"attachments[{n}].size_bytes", "must not be negative")
                files.append(
                    {
                        "name": a.name.strip(),
                        "content_type": a.content_type,
                        "size_bytes": a.size_bytes,
                        "url": a.url,
                        "sha256": a.sha256,
                    }
                )
            if len(files) > 50:
                check.fail("attachments", "at most 50")
            row.attachments = files


async def create(uow: UnitOfWork, src: pb.Interaction) -> models.Interaction:
    principal = caller()
    row = models.Interaction(
        id=new_id(),
        tenant_id=principal.tenant_id,
        owner_id=principal.actor_id,
        department_id=principal.department_id,
        created_by=principal.actor_id,
        version=1,
    )
    check = Check()
    _copy(check, row, src, list(UPDATABLE))
    await _check_records(uow.session, check, row)
    check.done()
    uow.session.add(row)
    await uow.session.flush()
    await uow.session.refresh(row)
    uow.emit(
        events_pb2.InteractionCreated(interaction=interaction_pb(row)),
        aggregate_type="interaction",
        aggregate_id=row.id,
        aggregate_version=1,
        action="created",
        after=snapshot(row),
    )
    return row


async def get(session: AsyncSession, interaction_id: str, decision: Decision) -> models.Interaction:
    return await get_owned(session, models.Interaction, "interaction", interaction_id, decision=decision)


async def list_interactions(
    session: AsyncSession, request: pb.ListInteractionsRequest, decision: Decision
) -> tuple[list[models.Interaction], str]:
    I = models.Interaction  # noqa: E741
    keys = [SortKey(I.occurred_at, descending=True), SortKey(I.id, descending=True)]
    page = Page.of(request.page, 2)
    stmt = select(I).where(I.tenant_id == caller().tenant_id, I.deleted_at.is_(None), visible(decision, I))
    if request.account_id:
        stmt = stmt.where(I.account_ids.contains([request.account_id]))
    if request.contact_id:
        stmt = stmt.where(I.contact_ids.contains([request.contact_id]))
    if request.kind:
        stmt = stmt.where(I.kind == INTERACTION_KINDS.name(request.kind))
    if request.HasField("occurred_after"):
        stmt = stmt.where(I.occurred_at >= request.occurred_after.ToDatetime(tzinfo=dt.UTC))
    if request.HasField("occurred_before"):
        stmt = stmt.where(I.occurred_at < request.occurred_before.ToDatetime(tzinfo=dt.UTC))
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.occurred_at.isoformat(), r.id])


async def timeline(
    session: AsyncSession,
    *,
    account_ids: list[str],
    contact_ids: list[str],
    page_request: Any,
    shown: Any,
    entries: Any = None,
) -> tuple[list[models.Interaction | models.TimelineEntry], str]:
    """Interactions on any of these records that `shown` lets through (a WHERE clause on interactions: those
    the caller may read, by the "interaction" permission and its data scope) and, when `entries` (a WHERE
    clause on timeline entries: those the caller may see) is given, the accounts' timeline entries from other
    services; newest first, one keyset over both (the caller has checked it may read the records)."""
    I, E = models.Interaction, models.TimelineEntry  # noqa: E741
    tenant_id = caller().tenant_id
    page = Page.of(page_request, 2)
    on = []
    if account_ids:
        on.append(I.account_ids.overlap(account_ids))
    if contact_ids:
        on.append(I.contact_ids.overlap(contact_ids))
    branches = [
        select(I.occurred_at.label("at"), I.id.label("id")).where(
            I.tenant_id == tenant_id, I.deleted_at.is_(None), or_(*on), shown
        )
    ]
    if entries is not None and account_ids:
        branches.append(
            select(E.occurred_at.label("at"), E.id.label("id")).where(
                E.tenant_id == tenant_id, E.account_id.in_(account_ids), entries
            )
        )
    merged = union_all(*branches).subquery()
    keys = [SortKey(merged.c.at, descending=True), SortKey(merged.c.id, descending=True)]
    ids = (await session.execute(page.apply(select(merged.c.at, merged.c.id), keys))).all()
    ids, cursor = page.split(ids, lambda r: [r.at.isoformat(), r.id])
    wanted = [r.id for r in ids]
    found: dict[str, Any] = {}
    if wanted:
        found.update({i.id: i for i in (await session.scalars(select(I).where(I.id.in_(wanted)))).all()})
        if len(branches) > 1 and len(found) < len(wanted):
            found.update({e.id: e for e in (await session.scalars(select(E).where(E.id.in_(wanted)))).all()})
    return [found[i] for i in wanted if i in found], cursor


async def update(
    uow: UnitOfWork, request: pb.UpdateInteractionRequest, decision: Decision
) -> models.Interaction:
    paths = list(request.update_mask.paths)
    unknown = [p for p in paths if p not in UPDATABLE]
    if unknown or not paths:
        raise InvalidArgument(
            f"these fields cannot be changed: {', '.join(unknown) or '(none named)'}",
            field_errors=[FieldError(p, "cannot be changed") for p in unknown],
        )
    row = await get_owned(
        uow.session, models.Interaction, "interaction", request.id, decision=decision, lock=True
    )
    expect_version(row, request.expected_version)
    before = snapshot(row)
    check = Check()
    _copy(check, row, request.interaction, paths)
    if {"account_ids", "contact_ids"} & set(paths):
        await _check_records(uow.session, check, row)
    check.done()
    after = snapshot(row)
    if after == before:
        return row
    row.version += 1
    await uow.session.flush()
    await uow.session.refresh(row)
    uow.emit(
        events_pb2.InteractionUpdated(interaction=interaction_pb(row)),
        aggregate_type="interaction",
        aggregate_id=row.id,
        aggregate_version=row.version,
        action="updated",
        before=before,
        after=after,
    )
    return row


async def delete(uow: UnitOfWork, interaction_id: str, expected_version: int, decision: Decision) -> None:
    row = await get_owned(
        uow.session, models.Interaction, "interaction", interaction_id, decision=decision, lock=True
    )
    expect_version(row, expected_version)
    await soft_delete(
        uow,
        row,
        before=snapshot(row),
        event_of=lambda r: events_pb2.InteractionDeleted(interaction=interaction_pb(r)),
        aggregate_type="interaction",
    )
