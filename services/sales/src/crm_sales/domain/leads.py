"""Leads: capture, scoring, assignment, follow-ups, and the pool moves — claim, assign, release, reclaim.

Race safety of claims: a claim locks the claimer's pool membership row (`SELECT … FOR UPDATE`), so one rep's
claims in a pool run one after another and the held count it checks cannot change underneath; the lead itself
is taken with a conditional `UPDATE … WHERE owner_id IS NULL`, so of many reps claiming one lead exactly one
update matches and the others see 409. Reclaim takes its rows with `FOR UPDATE SKIP LOCKED`, so replicas
running the job at once never handle one lead twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from crm.common.v1 import event_pb2
from crm.sales.v1 import events_pb2
from crm.sales.v1 import leads_pb2 as pb
from crm_kit.context import SYSTEM
from crm_kit.db import DBAPIError, UnitOfWork, caller_error, expect_version
from crm_kit.errors import Conflict, InvalidArgument, PermissionDenied
from crm_kit.ids import new_id
from crm_kit.normalize import InvalidValue, normalize_email, normalize_phone
from crm_kit.paging import Page, SortKey
from crm_kit.policy import Decision
from crm_kit.validation import Check, updatable
from sqlalchemy import and_, any_, false, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models
from crm_sales.domain.common import (
    People,
    caller,
    enum_name,
    get_owned,
    snapshot,
    to_message,
    ts,
)

SOURCE = pb.LeadSource.DESCRIPTOR
STATUS = pb.LeadStatus.DESCRIPTOR
OPEN_STATUSES = ("new", "working", "qualified")
TEXT_FIELDS = {
    "name": 200,
    "company": 300,
    "title": 200,
    "email": 320,
    "phone": 50,
    "region": 100,
    "industry": 100,
    "territory": 100,
    "source_detail": 300,
    "channel": 100,
    "description": 10_000,
}
UPDATABLE = (*TEXT_FIELDS, "source", "campaign_id", "status", "attributes")
AUDITED = (*TEXT_FIELDS, "source", "campaign_id", "status", "score", "owner_id", "pool_id", "attributes")
FOLLOW_UP_KINDS = ("call", "visit", "email", "wechat", "meeting", "note")
MAX_ATTRIBUTES = 50


def lead_pb(lead: models.Lead, decision: Decision | None = None) -> pb.Lead:
    msg = to_message(lead, pb.Lead, owner_id=lead.owner_id or "", pool_id=lead.pool_id or "")
    return decision.redact_message(msg) if decision else msg


def move_pb(move: models.LeadMove) -> pb.LeadMove:
    return to_message(move, pb.LeadMove)


def follow_up_pb(f: models.LeadFollowUp) -> pb.LeadFollowUp:
    return to_message(f, pb.LeadFollowUp)


def my_pools(user_id: str) -> Any:
    return select(models.PoolMember.pool_id).where(models.PoolMember.user_id == user_id)


def managed_pools(user_id: str) -> Any:
    return select(models.LeadPool.id).where(any_(models.LeadPool.manager_ids) == user_id)


def visible(decision: Decision) -> Any:
    """Leads the caller sees: their data scope, plus the waiting leads of pools they belong to, plus every lead
    of pools they manage."""
    principal = caller()
    return or_(
        decision.row_filter(
            principal, owner_column=models.Lead.owner_id, department_column=models.Lead.department_id
        ),
        and_(models.Lead.owner_id.is_(None), models.Lead.pool_id.in_(my_pools(principal.actor_id))),
        models.Lead.pool_id.in_(managed_pools(principal.actor_id)),
    )


def _emit(
    uow: UnitOfWork, payload: Any, lead: models.Lead, action: str, before=None, after=None, **kw
) -> None:  # type: ignore[no-untyped-def]
    uow.emit(
        payload,
        aggregate_type="lead",
        aggregate_id=lead.id,
        aggregate_version=lead.version,
        action=action,
        before=before,
        after=after,
        **kw,
    )


def _record_move(
    uow: UnitOfWork,
    lead: models.Lead,
    *,
    action: str,
    now: dt.datetime,
    from_owner: str | None,
    to_owner: str | None,
    reason: str = "",
    actor_id: str | None = None,
    system: bool = False,
) -> models.LeadMove:
    move = models.LeadMove(
        id=new_id(),
        tenant_id=lead.tenant_id,
        lead_id=lead.id,
        action=action,
        from_owner_id=from_owner or "",
        to_owner_id=to_owner or "",
        pool_id=lead.pool_id or "",
        reason=reason,
        actor_id=actor_id if actor_id is not None else caller().actor_id,
        occurred_at=now,
    )
    uow.session.add(move)
    kwargs: dict[str, Any] = {}
    if system:
        kwargs = {"tenant_id": lead.tenant_id, "actor": SYSTEM.actor_message()}
    _emit(
        uow,
        events_pb2.LeadMoved(lead=lead_pb(lead), move=move_pb(move)),
        lead,
        action,
        before={"owner_id": from_owner or ""},
        after={"owner_id": to_owner or ""},
        **kwargs,
    )
    return move


# ---------------------------------------------------------------- scoring and assignment


def _field_value(lead: models.Lead, field: str) -> str:
    if field.startswith("attributes."):
        return str((lead.attributes or {}).get(field.removeprefix("attributes."), ""))
    return str(getattr(lead, field, "") or "")


def rule_matches(operator: str, actual: str, expected: str) -> bool:
    a, e = actual.strip().lower(), expected.strip().lower()
    if operator == "equals":
        return a == e
    if operator == "not_equals":
        return a != e
    if operator == "contains":
        return bool(e) and e in a
    if operator == "in":
        return a in {v.strip() for v in e.split(",") if v.strip()}
    if operator == "not_empty":
        return bool(a)
    if operator in ("gte", "lte"):
        try:
            x, y = float(a), float(e)
        except ValueError:
            return False
        return x >= y if operator == "gte" else x <= y
    return False


async def scoring_rules(session: AsyncSession, tenant_id: str) -> list[models.ScoringRule]:
    return list(
        (
            await session.scalars(select(models.ScoringRule).where(models.ScoringRule.tenant_id == tenant_id))
        ).all()
    )


def score_of(lead: models.Lead, rules: list[models.ScoringRule]) -> int:
    return sum(r.points for r in rules if rule_matches(r.operator, _field_value(lead, r.field), r.value))


async def score(session: AsyncSession, lead: models.Lead) -> int:
    return score_of(lead, await scoring_rules(session, lead.tenant_id))


async def held_count(session: AsyncSession, tenant_id: str, user_id: str, pool_id: str | None = None) -> int:
    stmt = select(func.count()).where(
        models.Lead.tenant_id == tenant_id,
        models.Lead.owner_id == user_id,
        models.Lead.status.in_(OPEN_STATUSES),
    )
    if pool_id:
        stmt = stmt.where(models.Lead.pool_id == pool_id)
    return int(await session.scalar(stmt) or 0)


async def assignment_rules(session: AsyncSession, tenant_id: str) -> list[models.AssignmentRule]:
    """The tenant's assignment rules in the order they are tried."""
    return list(
        (
            await session.scalars(
                select(models.AssignmentRule)
                .where(models.AssignmentRule.tenant_id == tenant_id)
                .order_by(models.AssignmentRule.priority, models.AssignmentRule.id)
            )
        ).all()
    )


async def apply_assignment_rules(
    session: AsyncSession, lead: models.Lead, rules: list[models.AssignmentRule] | None = None
) -> tuple[str | None, str | None]:
    """(owner, pool) from the first matching rule in priority order, or (None, None)."""
    if rules is None:
        rules = await assignment_rules(session, lead.tenant_id)
    for rule in rules:
        conditions = [
            (rule.regions, lead.region),
            (rule.industries, lead.industry),
            (rule.territories, lead.territory),
            (rule.sources, lead.source),
        ]
        if any(values and actual not in values for values, actual in conditions):
            continue
        if rule.pool_id:
            return None, rule.pool_id
        if not rule.assignee_ids:
            continue
        if rule.strategy == "load":
            counts = [
                (await held_count(session, lead.tenant_id, uid), i, uid)
                for i, uid in enumerate(rule.assignee_ids)
            ]
            return min(counts)[2], None
        # Round robin: the rule row is locked, so concurrent leads take consecutive turns.
        # populate_existing: the turn as committed when the lock was granted, not as first read.
        locked = (
            await session.execute(
                select(models.AssignmentRule)
                .where(models.AssignmentRule.id == rule.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        ).scalar_one()
        owner = locked.assignee_ids[locked.handed_out % len(locked.assignee_ids)]
        locked.handed_out += 1
        return owner, None
    return None, None


# ---------------------------------------------------------------- capture


def _check_values(check: Check, values: dict[str, str]) -> None:
    for name, max_len in TEXT_FIELDS.items():
        if name in values:
            check.length(name, values[name], max_len=max_len)
    if values.get("email"):
        check.email("email", values["email"])
    if "campaign_id" in values:
        check.length("campaign_id", values["campaign_id"], max_len=36)


def check_attributes(check: Check, attributes: dict[str, str]) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        check.fail("attributes", f"at most {MAX_ATTRIBUTES} attributes")
    for k, v in attributes.items():
        if not k or len(k) > 100 or len(v) > 2000:
            check.fail(f"attributes.{k[:100]}", "keys are 1..100 and values at most 2000 characters")


def check_new(check: Check, values: dict[str, str], attributes: dict[str, str]) -> None:
    """What a new lead's values must be, wherever it comes from (API, web form, import)."""
    check.required("name", values.get("name", ""))
    _check_values(check, values)
    check_attributes(check, attributes)


def contact_keys(phone: str, email: str) -> tuple[str, str]:
    """The phone (E.164) and e-mail (lower case) in their normal forms, for duplicate lookups ("" when absent
    or not valid)."""
    return _key(normalize_phone, phone), _key(normalize_email, email)


MAX_DUPLICATES = 10


async def open_duplicates(
    session: AsyncSession, lead: models.Lead, decision: Decision
) -> list[pb.LeadDuplicate]:
    """Other open leads of the tenant with the same phone or e-mail as `lead`, oldest first. Of those the
    caller may read (`decision`: reading leads) the name and owner come along, unless hidden from them; of
    the others only the id and what matched, so a warning never shows what the caller's scope keeps back."""
    L = models.Lead
    matches = [(kind, column, key) for kind, column, key in (
        ("phone", L.phone_key, lead.phone_key), ("email", L.email_key, lead.email_key)
    ) if key]  # fmt: skip
    if not matches:
        return []
    seen = visible(decision) if decision.allowed else false()
    rows = await session.execute(
        select(L.id, L.name, L.owner_id, L.phone_key, L.email_key, seen.label("seen"))
        .where(
            L.tenant_id == lead.tenant_id,
            L.id != lead.id,
            L.status.in_(OPEN_STATUSES),
            or_(*(column == key for _, column, key in matches)),
        )
        .order_by(L.id)
        .limit(MAX_DUPLICATES)
    )
    out = []
    for row in rows:
        kind = "phone" if lead.phone_key and row.phone_key == lead.phone_key else "email"
        found = pb.LeadDuplicate(lead_id=row.id, matched_on=kind)
        if row.seen:
            found.name = "" if "name" in decision.hidden else row.name
            found.owner_id = "" if "owner_id" in decision.hidden else (row.owner_id or "")
        out.append(found)
    return out


def refresh_keys(lead: models.Lead) -> None:
    lead.phone_key, lead.email_key = contact_keys(lead.phone, lead.email)


def _key(normalize: Any, raw: str) -> str:
    try:
        return normalize(raw) if raw and raw.strip() else ""
    except InvalidValue:
        return ""


async def place(
    session: AsyncSession,
    lead: models.Lead,
    *,
    owner_id: str | None,
    pool_id: str | None,
    fallback_owner: str | None,
    people: Any,
    now: dt.datetime,
    rules: list[models.AssignmentRule] | None = None,
) -> None:
    """Who gets a new lead: the given pool or owner; else the assignment rules; else `fallback_owner`. The
    owner's department files it for data scopes (`people.department_of`)."""
    owner, pool = (owner_id or None), (pool_id or None)
    if not owner and not pool:
        owner, pool = await apply_assignment_rules(session, lead, rules)
        if not owner and not pool:
            owner = fallback_owner
    department = None
    if owner and people is not None:
        department = await people.department_of("owner_id", owner)
    lead.owner_id, lead.pool_id, lead.department_id = owner, pool, department
    if owner and pool:
        lead.claimed_at = now


def record_created(uow: UnitOfWork, lead: models.Lead, *, now: dt.datetime, reason: str = "") -> None:
    """The lead's first move and its LeadCreated event, in the caller's transaction."""
    uow.session.add(
        models.LeadMove(
            id=new_id(),
            tenant_id=lead.tenant_id,
            lead_id=lead.id,
            action="created",
            to_owner_id=lead.owner_id or "",
            pool_id=lead.pool_id or "",
            reason=reason,
            actor_id=caller().actor_id,
            occurred_at=now,
        )
    )
    _emit(uow, events_pb2.LeadCreated(lead=lead_pb(lead)), lead, "created", after=snapshot(lead, AUDITED))


async def save_changes(
    uow: UnitOfWork,
    lead: models.Lead,
    before: dict[str, Any],
    *,
    scoring: list[models.ScoringRule] | None = None,
) -> None:
    """After a lead's fields changed: its keys and score again, and — if anything audited changed — a new
    version and a LeadUpdated event with the before and after."""
    refresh_keys(lead)
    lead.score = score_of(lead, scoring) if scoring is not None else await score(uow.session, lead)
    after = snapshot(lead, AUDITED)
    if after == before:
        return
    lead.version += 1
    await uow.session.flush()
    await uow.session.refresh(lead)
    _emit(uow, events_pb2.LeadUpdated(lead=lead_pb(lead)), lead, "updated", before=before, after=after)


async def create(
    uow: UnitOfWork,
    *,
    values: dict[str, str],
    source: str,
    attributes: dict[str, str],
    pool_id: str,
    owner_id: str,
    campaign_id: str = "",
    form_id: str = "",
    fallback_owner: str | None,
    people: People | None,
    now: dt.datetime,
) -> models.Lead:
    """A new lead. Placement: the given pool or owner; else the assignment rules; else `fallback_owner`."""
    principal = caller()
    session = uow.session
    check = Check()
    check_new(check, values, attributes)
    if pool_id:
        check.uuid("pool_id", pool_id)
        if not check.errors and not await session.scalar(
            select(models.LeadPool.id).where(
                models.LeadPool.id == pool_id, models.LeadPool.tenant_id == principal.tenant_id
            )
        ):
            check.fail("pool_id", "no such lead pool")
    check.done()
    lead = models.Lead(
        id=new_id(),
        tenant_id=principal.tenant_id,
        **{k: v.strip() for k, v in values.items() if k in TEXT_FIELDS},
        source=source or "manual",
        campaign_id=campaign_id,
        form_id=form_id,
        status="new",
        attributes=dict(attributes),
        version=1,
    )
    await place(
        session,
        lead,
        owner_id=owner_id,
        pool_id=pool_id,
        fallback_owner=fallback_owner,
        people=people,
        now=now,
    )
    refresh_keys(lead)
    lead.score = await score(session, lead)
    session.add(lead)
    await session.flush()
    await session.refresh(lead)
    record_created(uow, lead, now=now)
    return lead


async def get(
    session: AsyncSession, decision: Decision, lead_id: str, *, lock: bool | str = False
) -> models.Lead:
    return await get_owned(session, models.Lead, "lead", lead_id, lock=lock, visible=visible(decision))


async def list_leads(
    session: AsyncSession, decision: Decision, request: pb.ListLeadsRequest
) -> tuple[list[models.Lead], str]:
    keys = [SortKey(models.Lead.id, descending=True)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.Lead).where(models.Lead.tenant_id == caller().tenant_id, visible(decision))
    if request.pool_id:
        stmt = stmt.where(models.Lead.pool_id == request.pool_id)
    if request.owner_id:
        stmt = stmt.where(models.Lead.owner_id == request.owner_id)
    if request.unowned:
        stmt = stmt.where(models.Lead.owner_id.is_(None))
    if request.status:
        stmt = stmt.where(models.Lead.status == enum_name(STATUS, request.status))
    if request.q:
        like = "%" + request.q.strip().replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_") + "%"
        stmt = stmt.where(
            or_(
                models.Lead.name.ilike(like),
                models.Lead.company.ilike(like),
                models.Lead.email.ilike(like),
                models.Lead.phone.like(like),
            )
        )
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def update_lead(uow: UnitOfWork, decision: Decision, request: pb.UpdateLeadRequest) -> models.Lead:
    paths = list(request.update_mask.paths)
    updatable(paths, UPDATABLE)
    lead = await get(uow.session, decision, request.id, lock=True)
    expect_version(lead, request.expected_version)
    new = request.lead
    check = Check()
    values = {p: getattr(new, p) for p in paths if p in TEXT_FIELDS}
    if "name" in paths:
        check.required("name", new.name)
    _check_values(check, values)
    if "attributes" in paths:
        check_attributes(check, dict(new.attributes))
    status = enum_name(STATUS, new.status) if "status" in paths else None
    if status is not None:
        if status in ("", "converted"):
            check.fail("status", "converted is set by converting the lead")
        elif lead.status == "converted":
            check.fail("status", "a converted lead keeps its status")
    check.done()
    before = snapshot(lead, AUDITED)
    for p, v in values.items():
        setattr(lead, p, v.strip())
    if "source" in paths:
        lead.source = enum_name(SOURCE, new.source) or "manual"
    if "campaign_id" in paths:
        lead.campaign_id = new.campaign_id
    if "attributes" in paths:
        lead.attributes = dict(new.attributes)
    if status:
        lead.status = status
    await save_changes(uow, lead, before)
    return lead


async def delete(uow: UnitOfWork, decision: Decision, lead_id: str, expected_version: int) -> None:
    lead = await get(uow.session, decision, lead_id, lock=True)
    expect_version(lead, expected_version)
    before = snapshot(lead, AUDITED)
    message = lead_pb(lead)
    await uow.session.delete(lead)
    uow.emit(
        events_pb2.LeadDeleted(lead=message),
        aggregate_type="lead",
        aggregate_id=lead.id,
        aggregate_version=lead.version + 1,
        action="deleted",
        before=before,
    )


# ---------------------------------------------------------------- follow-ups


async def add_follow_up(
    uow: UnitOfWork, decision: Decision, request: pb.CreateLeadFollowUpRequest, *, now: dt.datetime
) -> tuple[models.LeadFollowUp, models.Lead]:
    lead = await get(uow.session, decision, request.id, lock=True)
    check = Check()
    kind = request.kind or "note"
    check.one_of("kind", kind, FOLLOW_UP_KINDS)
    check.required("content", request.content)
    check.length("content", request.content, max_len=10_000)
    check.done()
    principal = caller()
    follow = models.LeadFollowUp(
        id=new_id(),
        tenant_id=lead.tenant_id,
        lead_id=lead.id,
        author_id=principal.actor_id,
        kind=kind,
        content=request.content.strip(),
        occurred_at=now,
        next_follow_up_at=request.next_follow_up_at.ToDatetime(tzinfo=dt.UTC)
        if request.HasField("next_follow_up_at")
        else None,
    )
    uow.session.add(follow)
    lead.last_follow_up_at = now
    lead.warned_for = None
    if lead.status == "new":
        lead.status = "working"
    lead.version += 1
    await uow.session.flush()
    await uow.session.refresh(lead)
    _emit(
        uow,
        events_pb2.LeadFollowedUp(lead=lead_pb(lead), follow_up=follow_up_pb(follow)),
        lead,
        "followed_up",
        after={"last_follow_up_at": now.isoformat()},
    )
    return follow, lead


async def list_follow_ups(
    session: AsyncSession, decision: Decision, request: pb.ListLeadFollowUpsRequest
) -> tuple[list[models.LeadFollowUp], str]:
    lead = await get(session, decision, request.id)
    keys = [SortKey(models.LeadFollowUp.id, descending=True)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.LeadFollowUp).where(
        models.LeadFollowUp.tenant_id == lead.tenant_id, models.LeadFollowUp.lead_id == lead.id
    )
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def history(
    session: AsyncSession, decision: Decision, request: pb.ListLeadHistoryRequest
) -> tuple[list[models.LeadMove], str]:
    lead = await get(session, decision, request.id)
    keys = [SortKey(models.LeadMove.id)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.LeadMove).where(
        models.LeadMove.tenant_id == lead.tenant_id, models.LeadMove.lead_id == lead.id
    )
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


# ---------------------------------------------------------------- the pool


async def _pool(session: AsyncSession, lead: models.Lead) -> models.LeadPool:
    if not lead.pool_id:
        raise Conflict("the lead is not in a lead pool", reason="lead_not_in_pool")
    pool = await session.get(models.LeadPool, lead.pool_id)
    if pool is None or pool.tenant_id != lead.tenant_id:
        raise Conflict("the lead's pool no longer exists", reason="lead_not_in_pool")
    return pool


async def _lock_membership(session: AsyncSession, pool: models.LeadPool, user_id: str) -> bool:
    """Lock the rep's membership row: their claims and assignments in this pool now run one at a time."""
    row = await session.scalar(
        select(models.PoolMember.user_id)
        .where(models.PoolMember.pool_id == pool.id, models.PoolMember.user_id == user_id)
        .with_for_update()
    )
    return row is not None


async def _check_cap(session: AsyncSession, pool: models.LeadPool, user_id: str) -> None:
    if pool.claim_cap and await held_count(session, pool.tenant_id, user_id, pool.id) >= pool.claim_cap:
        raise Conflict(
            f"the cap of {pool.claim_cap} leads held from this pool is reached", reason="claim_cap_reached"
        )


async def _check_cooldown(
    session: AsyncSession, pool: models.LeadPool, lead: models.Lead, user_id: str, now: dt.datetime
) -> None:
    if not pool.cooldown_hours:
        return
    since = now - dt.timedelta(hours=pool.cooldown_hours)
    last = await session.scalar(
        select(func.max(models.LeadMove.occurred_at)).where(
            models.LeadMove.lead_id == lead.id,
            models.LeadMove.from_owner_id == user_id,
            models.LeadMove.action.in_(("released", "reclaimed")),
        )
    )
    if last is not None and last > since:
        until = last + dt.timedelta(hours=pool.cooldown_hours)
        raise Conflict(
            f"you gave this lead up recently; you can claim it again after {until.isoformat()}",
            reason="claim_cooldown",
        )


async def _take(
    session: AsyncSession, lead: models.Lead, owner_id: str, department_id: str | None, now: dt.datetime
) -> None:
    """The conditional update: exactly one of many concurrent takers matches `owner_id IS NULL`."""
    taken = await session.execute(
        update(models.Lead)
        .where(
            models.Lead.id == lead.id,
            models.Lead.tenant_id == lead.tenant_id,
            models.Lead.pool_id == lead.pool_id,
            models.Lead.owner_id.is_(None),
        )
        .values(
            owner_id=owner_id,
            department_id=department_id,
            claimed_at=now,
            last_follow_up_at=None,
            warned_for=None,
            version=models.Lead.version + 1,
        )
        .returning(models.Lead.id)
        .execution_options(synchronize_session=False)
    )
    if taken.scalar_one_or_none() is None:
        raise Conflict("someone else took this lead first", reason="lead_already_owned")
    await session.refresh(lead)


async def claim(uow: UnitOfWork, decision: Decision, lead_id: str, *, now: dt.datetime) -> models.Lead:
    principal = caller()
    session = uow.session
    # A member sees that a lead of their pool was taken (409), not a 404.
    lead = await get_owned(
        session,
        models.Lead,
        "lead",
        lead_id,
        visible=or_(visible(decision), models.Lead.pool_id.in_(my_pools(principal.actor_id))),
    )
    pool = await _pool(session, lead)
    if not await _lock_membership(session, pool, principal.actor_id):
        raise PermissionDenied("only members of the pool can claim its leads", reason="not_pool_member")
    if lead.owner_id is not None:
        raise Conflict("someone else took this lead first", reason="lead_already_owned")
    if lead.status == "converted":
        raise Conflict("the lead is converted", reason="lead_converted")
    await _check_cooldown(session, pool, lead, principal.actor_id, now)
    await _check_cap(session, pool, principal.actor_id)
    await _take(session, lead, principal.actor_id, principal.department_id or None, now)
    _record_move(uow, lead, action="claimed", now=now, from_owner=None, to_owner=principal.actor_id)
    return lead


def _is_manager(decision_assign: Decision | None, pool: models.LeadPool | None, user_id: str) -> bool:
    return (decision_assign is not None and decision_assign.allowed) or (
        pool is not None and user_id in (pool.manager_ids or [])
    )


async def assign(
    uow: UnitOfWork,
    decision: Decision,
    can_assign: Decision,
    request: pb.AssignLeadRequest,
    *,
    people: People,
    now: dt.datetime,
) -> models.Lead:
    """A manager gives the lead to a rep (from the pool, or from its current owner)."""
    principal = caller()
    session = uow.session
    lead = await get(session, decision, request.id, lock=True)
    pool = await _pool(session, lead) if lead.pool_id else None
    if not _is_manager(can_assign, pool, principal.actor_id):
        raise PermissionDenied("only a manager can assign leads", reason="permission_denied")
    if lead.status == "converted":
        raise Conflict("the lead is converted", reason="lead_converted")
    if not request.owner_id:
        raise InvalidArgument.for_field("owner_id", "is required")
    department = await people.department_of("owner_id", request.owner_id)
    if lead.owner_id == request.owner_id:
        return lead
    previous = lead.owner_id
    if pool is not None:
        await _lock_membership(session, pool, request.owner_id)
        await _check_cap(session, pool, request.owner_id)
    lead.owner_id = request.owner_id
    lead.department_id = department
    lead.claimed_at = now
    lead.last_follow_up_at = None
    lead.warned_for = None
    lead.version += 1
    await session.flush()
    await session.refresh(lead)
    _record_move(
        uow,
        lead,
        action="assigned",
        now=now,
        from_owner=previous,
        to_owner=request.owner_id,
        reason=request.reason.strip(),
    )
    return lead


async def release(
    uow: UnitOfWork,
    decision: Decision,
    can_assign: Decision,
    request: pb.ReleaseLeadRequest,
    *,
    now: dt.datetime,
) -> models.Lead:
    """The holder (or a manager) returns the lead to its pool, with a reason. The holder's cooldown starts."""
    principal = caller()
    session = uow.session
    lead = await get(session, decision, request.id, lock=True)
    pool = await _pool(session, lead)
    if lead.owner_id is None:
        raise Conflict("the lead is already in the pool", reason="lead_not_owned")
    if lead.owner_id != principal.actor_id and not _is_manager(can_assign, pool, principal.actor_id):
        raise PermissionDenied(
            "only the holder or a manager can return this lead", reason="permission_denied"
        )
    if lead.status == "converted":
        raise Conflict("the lead is converted", reason="lead_converted")
    reason = request.reason.strip()
    if not reason:
        raise InvalidArgument.for_field("reason", "say why the lead goes back to the pool")
    if len(reason) > 1000:
        raise InvalidArgument.for_field("reason", "must be at most 1000 characters")
    previous = lead.owner_id
    _give_back(lead)
    await session.flush()
    await session.refresh(lead)
    _record_move(uow, lead, action="released", now=now, from_owner=previous, to_owner=None, reason=reason)
    return lead


def _give_back(lead: models.Lead) -> None:
    lead.owner_id = None
    lead.department_id = None
    lead.claimed_at = None
    lead.last_follow_up_at = None
    lead.warned_for = None
    lead.version += 1


# ---------------------------------------------------------------- reclaim

DEADLINES = text(
    """
    SELECT l.id, l.tenant_id, l.owner_id, l.warned_for, d.follow_due, d.convert_due
    FROM leads l
    JOIN lead_pools p ON p.id = l.pool_id AND p.tenant_id = l.tenant_id
    CROSS JOIN LATERAL (
        SELECT
            CASE WHEN p.follow_up_days > 0 THEN
                greatest(l.claimed_at, coalesce(l.last_follow_up_at, l.claimed_at))
                + make_interval(days => p.follow_up_days) END AS follow_due,
            CASE WHEN p.conversion_days > 0 THEN
                l.claimed_at + make_interval(days => p.conversion_days) END AS convert_due
    ) d
    WHERE l.owner_id IS NOT NULL AND l.pool_id IS NOT NULL AND l.claimed_at IS NOT NULL
      AND l.status IN ('new', 'working', 'qualified')
      AND (p.follow_up_days > 0 OR p.conversion_days > 0)
      AND (CAST(:tenant AS text) IS NULL OR l.tenant_id = :tenant)
      AND least(d.follow_due, d.convert_due) - make_interval(hours => p.warn_hours_before) <= :now
      AND (least(d.follow_due, d.convert_due) <= :now
           OR l.warned_for IS DISTINCT FROM least(d.follow_due, d.convert_due))
    ORDER BY l.id
    LIMIT :limit
    FOR UPDATE OF l SKIP LOCKED
    """
)


async def reclaim(
    uow: UnitOfWork, *, now: dt.datetime, tenant_id: str | None, limit: int = 500
) -> tuple[int, int]:
    """One batch of the reclaim job: leads past their deadline go back to their pool (the holder's cooldown
    starts); leads within the warning window get one warning per deadline. Returns (reclaimed, warned)."""
    session = uow.session
    rows = (await session.execute(DEADLINES, {"now": now, "tenant": tenant_id, "limit": limit})).all()
    reclaimed = warned = 0
    for row in rows:
        follow_due, convert_due = row.follow_due, row.convert_due
        dues = [(d, r) for d, r in ((follow_due, "no_follow_up"), (convert_due, "not_converted")) if d]
        due, reason = min(dues, key=lambda x: x[0])
        lead = await session.get(models.Lead, row.id)
        assert lead is not None
        if due <= now:
            previous = lead.owner_id
            _give_back(lead)
            await session.flush()
            await session.refresh(lead)
            _record_move(
                uow,
                lead,
                action="reclaimed",
                now=now,
                from_owner=previous,
                to_owner=None,
                reason=reason,
                actor_id="system",
                system=True,
            )
            reclaimed += 1
        else:
            lead.warned_for = due
            await session.flush()
            await session.refresh(lead)
            uow.emit(
                events_pb2.LeadReclaimWarning(
                    lead=lead_pb(lead), owner_id=lead.owner_id or "", reclaim_at=ts(due), reason=reason
                ),
                aggregate_type="lead",
                aggregate_id=lead.id,
                aggregate_version=lead.version,
                action="reclaim_warning",
                tenant_id=lead.tenant_id,
                actor=event_pb2.Actor(type=event_pb2.ACTOR_TYPE_SYSTEM, id="system", name="system"),
            )
            warned += 1
    return reclaimed, warned




# ---------------------------------------------------------------- conversion bookkeeping


async def take_for_conversion(session: AsyncSession, decision: Decision, lead_id: str) -> models.Lead:
    """The lead, locked for the conversion's whole transaction (`FOR UPDATE NOWAIT`) and not converted yet.

    A lead another request holds (a concurrent conversion) is a 409 at once rather than a wait: of N concurrent
    conversions one goes on, the others are told another one is in progress."""
    try:
        lead = await get(session, decision, lead_id, lock="nowait")
    except DBAPIError as exc:
        if isinstance(caller_error(exc), Conflict):
            raise Conflict(
                "the lead is being converted or changed by another request; try again",
                reason="lead_busy",
            ) from None
        raise
    if lead.status == "converted":
        raise Conflict("the lead is already converted", reason="lead_converted")
    return lead


def conversion_key(lead: models.Lead, step: str) -> str:
    """The idempotency key of one remote write of a lead's conversion (`step`: "account", "contact").

    Derived from the lead and its version: a conversion that failed or crashed after the customers service
    created the account leaves the lead as it was (its transaction rolled back), so the retry sends the same key
    and the customers service answers with the record it made the first time instead of making another."""
    return hashlib.sha256(f"crm.sales.ConvertLead/{lead.id}/{lead.version}/{step}".encode()).hexdigest()


async def mark_converted(
    uow: UnitOfWork,
    lead: models.Lead,
    *,
    account_id: str,
    contact_id: str,
    opportunity_id: str,
    now: dt.datetime,
) -> None:
    if lead.status == "converted":
        raise Conflict("the lead is already converted", reason="lead_converted")
    before = snapshot(lead, AUDITED)
    lead.status = "converted"
    lead.converted_account_id = account_id
    lead.converted_contact_id = contact_id
    lead.converted_opportunity_id = opportunity_id
    lead.converted_at = now
    if lead.owner_id is None:
        lead.owner_id = caller().actor_id
    lead.version += 1
    await uow.session.flush()
    await uow.session.refresh(lead)
    uow.session.add(
        models.LeadMove(
            id=new_id(),
            tenant_id=lead.tenant_id,
            lead_id=lead.id,
            action="converted",
            from_owner_id=lead.owner_id or "",
            to_owner_id=lead.owner_id or "",
            pool_id=lead.pool_id or "",
            actor_id=caller().actor_id,
            occurred_at=now,
        )
    )
    _emit(
        uow,
        events_pb2.LeadConverted(
            lead=lead_pb(lead), account_id=account_id, contact_id=contact_id, opportunity_id=opportunity_id
        ),
        lead,
        "converted",
        before=before,
        after=snapshot(lead, AUDITED),
    )
