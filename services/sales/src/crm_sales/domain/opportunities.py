"""Opportunities (商机): amount and currency as exact decimals, close date, products, competitors, team,
followers, next step; stage moves with required fields, time in stage and history; won and lost."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from crm.sales.v1 import events_pb2
from crm.sales.v1 import pipelines_pb2 as pb
from crm_kit.db import UnitOfWork, expect_version
from crm_kit.errors import FieldError, InvalidArgument
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.policy import Decision
from crm_kit.validation import Check, updatable
from sqlalchemy import any_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models
from crm_sales.domain import pipelines
from crm_sales.domain.common import (
    People,
    caller,
    check_local,
    currency_code,
    enum_name,
    get_owned,
    parse_date,
    parse_decimal,
    snapshot,
    to_message,
)

STATUS = pb.OpportunityStatus.DESCRIPTOR
FORECAST = pb.ForecastCategory.DESCRIPTOR
UPDATABLE = (
    "name",
    "account_id",
    "contact_id",
    "amount",
    "currency",
    "close_date",
    "forecast_category",
    "next_step",
    "competitors",
    "products",
    "team_member_ids",
    "follower_ids",
    "owner_id",
    "description",
)
AUDITED = (*UPDATABLE, "pipeline_id", "stage_id", "status", "won_reason", "lost_reason", "probability")


def opportunity_pb(o: models.Opportunity, decision: Decision | None = None) -> pb.Opportunity:
    msg = to_message(o, pb.Opportunity)
    return decision.redact_message(msg) if decision else msg


def change_pb(c: models.StageChange, now: dt.datetime) -> pb.OpportunityStageChange:
    end = c.left_at or now
    return to_message(
        c, pb.OpportunityStageChange, seconds_in_stage=max(0, int((end - c.entered_at).total_seconds()))
    )


def visible(decision: Decision) -> Any:
    principal = caller()
    Opp = models.Opportunity
    # Beyond the data scope: the opportunity's team members and its followers (关注人) see it too.
    return or_(
        decision.row_filter(principal, owner_column=Opp.owner_id, department_column=Opp.department_id),
        any_(Opp.team_member_ids) == principal.actor_id,
        any_(Opp.follower_ids) == principal.actor_id,
    )


def _emit(uow: UnitOfWork, payload: Any, o: models.Opportunity, action: str, before=None, after=None) -> None:  # type: ignore[no-untyped-def]
    uow.emit(
        payload,
        aggregate_type="opportunity",
        aggregate_id=o.id,
        aggregate_version=o.version,
        action=action,
        before=before,
        after=after,
    )


def _parse_values(check: Check, src: Any, paths: set[str]) -> dict[str, Any]:
    """The writable fields named in `paths`, validated; money and dates exact."""
    out: dict[str, Any] = {}
    if "name" in paths:
        check.required("name", src.name)
        check.length("name", src.name, max_len=300)
        out["name"] = src.name.strip()
    for f in ("account_id", "contact_id"):
        if f in paths:
            check.uuid(f, getattr(src, f))
            out[f] = getattr(src, f)
    if "amount" in paths:
        out["amount"] = parse_decimal(check, "amount", src.amount)
    if "currency" in paths:
        out["currency"] = currency_code(check, "currency", src.currency)
    if "close_date" in paths:
        out["close_date"] = parse_date(check, "close_date", src.close_date)
    if "forecast_category" in paths:
        out["forecast_category"] = enum_name(FORECAST, src.forecast_category) or "pipeline"
    if "next_step" in paths:
        check.length("next_step", src.next_step, max_len=2000)
        out["next_step"] = src.next_step.strip()
    if "description" in paths:
        check.length("description", src.description, max_len=10_000)
        out["description"] = src.description
    if "competitors" in paths:
        if len(src.competitors) > 50:
            check.fail("competitors", "at most 50")
        out["competitors"] = [c.strip() for c in src.competitors if c.strip()]
    for f in ("team_member_ids", "follower_ids"):
        if f in paths:
            ids = list(dict.fromkeys(getattr(src, f)))
            for i, uid in enumerate(ids):
                check.uuid(f"{f}[{i}]", uid)
            if len(ids) > 200:
                check.fail(f, "at most 200 people")
            out[f] = ids
    if "products" in paths:
        products = []
        for i, p in enumerate(src.products):
            check.uuid(f"products[{i}].product_id", p.product_id)
            qty = parse_decimal(check, f"products[{i}].quantity", p.quantity or "1", places=4)
            price = parse_decimal(check, f"products[{i}].unit_price", p.unit_price, places=4)
            products.append(
                {
                    "product_id": p.product_id,
                    "name": p.name.strip()[:300],
                    "quantity": format(qty, "f") if qty is not None else "1",
                    "unit_price": format(price, "f") if price is not None else "",
                }
            )
        out["products"] = products
    return out


async def _references_exist(
    session: AsyncSession,
    people: People,
    check: Check,
    values: dict[str, Any],
    current: models.Opportunity | None = None,
) -> None:
    """What the values name (newly) exists in the caller's company: the account and contact at the customers
    service, team members and followers at identity."""
    if check.errors:
        return
    for f, kind in (("account_id", "account"), ("contact_id", "contact")):
        if values.get(f) and (current is None or values[f] != getattr(current, f)):
            await people.check_record(check, f, kind, values[f])
    for f in ("team_member_ids", "follower_ids"):
        if f in values:
            known = set(getattr(current, f, None) or []) if current is not None else set()
            await people.check_users(check, f, [u if u not in known else "" for u in values[f]])


async def _stage(session: AsyncSession, pipeline: models.Pipeline, stage_id: str) -> models.Stage:
    stages = await pipelines.stages_of(session, pipeline.id)
    if not stage_id:
        open_stages = [s for s in stages if s.kind == "open"]
        return open_stages[0] if open_stages else stages[0]
    for s in stages:
        if s.id == stage_id:
            return s
    raise InvalidArgument.for_field("stage_id", "no such stage in this pipeline")


def _missing_required(o: models.Opportunity, stage: models.Stage) -> list[FieldError]:
    missing = []
    for f in stage.required_fields or []:
        v = getattr(o, f, None)
        if v in (None, "", [], {}):
            missing.append(FieldError(f, f"is required in stage {stage.name}"))
    return missing


async def create(
    uow: UnitOfWork,
    request: pb.CreateOpportunityRequest,
    *,
    people: People,
    now: dt.datetime,
    references_checked: bool = False,
) -> models.Opportunity:
    """`references_checked`: the account and contact come from the customers service's own answers (a lead
    conversion), so they are not asked about again."""
    principal = caller()
    session = uow.session
    check = Check()
    check.required("name", request.name)
    values = _parse_values(check, request, set(UPDATABLE) - {"owner_id"})
    check.uuid("lead_id", request.lead_id)
    check.uuid("pipeline_id", request.pipeline_id)
    if not references_checked:
        await _references_exist(session, people, check, values)
        await check_local(session, check, "lead_id", models.Lead, request.lead_id, what="lead")
    check.done()
    if request.pipeline_id:
        try:
            pipeline = await pipelines.get(session, request.pipeline_id)
        except Exception:
            raise InvalidArgument.for_field("pipeline_id", "no such pipeline") from None
    else:
        pipeline = await pipelines.first(session)
    stage = await _stage(session, pipeline, request.stage_id)
    owner = request.owner_id or principal.actor_id
    department = await people.department_of("owner_id", owner)
    o = models.Opportunity(
        id=new_id(),
        tenant_id=principal.tenant_id,
        lead_id=request.lead_id,
        pipeline_id=pipeline.id,
        stage_id=stage.id,
        probability=stage.probability,
        owner_id=owner,
        department_id=department,
        status="open" if stage.kind == "open" else stage.kind,
        stage_entered_at=now,
        closed_at=None if stage.kind == "open" else now,
        version=1,
        **values,
    )
    missing = _missing_required(o, stage)
    if missing:
        raise InvalidArgument(
            "; ".join(f"{e.field}: {e.message}" for e in missing),
            field_errors=missing,
            reason="stage_requirements",
        )
    session.add(o)
    session.add(
        models.StageChange(
            id=new_id(),
            tenant_id=o.tenant_id,
            opportunity_id=o.id,
            to_stage_id=stage.id,
            actor_id=principal.actor_id,
            entered_at=now,
        )
    )
    await session.flush()
    await session.refresh(o)
    _emit(
        uow,
        events_pb2.OpportunityCreated(opportunity=opportunity_pb(o)),
        o,
        "created",
        after=snapshot(o, AUDITED),
    )
    return o


async def get(
    session: AsyncSession, decision: Decision, opportunity_id: str, *, lock: bool = False
) -> models.Opportunity:
    return await get_owned(
        session, models.Opportunity, "opportunity", opportunity_id, lock=lock, visible=visible(decision)
    )


async def list_opportunities(
    session: AsyncSession, decision: Decision, request: pb.ListOpportunitiesRequest
) -> tuple[list[models.Opportunity], str]:
    Opp = models.Opportunity
    keys = [SortKey(Opp.id, descending=True)]
    page = Page.of(request.page, len(keys))
    stmt = select(Opp).where(Opp.tenant_id == caller().tenant_id, visible(decision))
    for f in ("pipeline_id", "stage_id", "owner_id", "account_id"):
        if getattr(request, f):
            stmt = stmt.where(getattr(Opp, f) == getattr(request, f))
    if request.status:
        stmt = stmt.where(Opp.status == enum_name(STATUS, request.status))
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def update(
    uow: UnitOfWork, decision: Decision, request: pb.UpdateOpportunityRequest, *, people: People
) -> models.Opportunity:
    paths = list(request.update_mask.paths)
    updatable(paths, UPDATABLE)
    o = await get(uow.session, decision, request.id, lock=True)
    expect_version(o, request.expected_version)
    check = Check()
    values = _parse_values(check, request.opportunity, set(paths))
    if "owner_id" in paths:
        check.uuid("owner_id", request.opportunity.owner_id, required=True)
    await _references_exist(uow.session, people, check, values, o)
    check.done()
    if "owner_id" in paths:
        values["owner_id"] = request.opportunity.owner_id
        values["department_id"] = await people.department_of("owner_id", request.opportunity.owner_id)
    before = snapshot(o, AUDITED)
    for k, v in values.items():
        setattr(o, k, v)
    stage = await uow.session.get(models.Stage, o.stage_id)
    if stage is not None and o.status == "open":
        missing = _missing_required(o, stage)
        if missing:
            raise InvalidArgument(
                "; ".join(f"{e.field}: {e.message}" for e in missing),
                field_errors=missing,
                reason="stage_requirements",
            )
    after = snapshot(o, AUDITED)
    if after == before:
        return o
    o.version += 1
    await uow.session.flush()
    await uow.session.refresh(o)
    _emit(uow, events_pb2.OpportunityUpdated(opportunity=opportunity_pb(o)), o, "updated", before, after)
    return o


async def delete(uow: UnitOfWork, decision: Decision, opportunity_id: str, expected_version: int) -> None:
    o = await get(uow.session, decision, opportunity_id, lock=True)
    expect_version(o, expected_version)
    message = opportunity_pb(o)
    before = snapshot(o, AUDITED)
    await uow.session.delete(o)
    uow.emit(
        events_pb2.OpportunityDeleted(opportunity=message),
        aggregate_type="opportunity",
        aggregate_id=o.id,
        aggregate_version=o.version + 1,
        action="deleted",
        before=before,
    )


async def move(
    uow: UnitOfWork, decision: Decision, request: pb.MoveOpportunityStageRequest, *, now: dt.datetime
) -> models.Opportunity:
    session = uow.session
    o = await get(session, decision, request.id, lock=True)
    expect_version(o, request.expected_version)
    pipeline = await pipelines.get(session, o.pipeline_id)
    if not request.stage_id:
        raise InvalidArgument.for_field("stage_id", "is required")
    stage = await _stage(session, pipeline, request.stage_id)
    if stage.id == o.stage_id:
        return o
    check = Check()
    if stage.kind == "lost":
        check.required("lost_reason", request.lost_reason, "say why the opportunity was lost")
    check.length("lost_reason", request.lost_reason, max_len=2000)
    check.length("won_reason", request.won_reason, max_len=2000)
    check.done()
    missing = _missing_required(o, stage)
    if missing:
        raise InvalidArgument(
            "; ".join(f"{e.field}: {e.message}" for e in missing),
            field_errors=missing,
            reason="stage_requirements",
        )
    before = snapshot(o, AUDITED)
    previous = o.stage_id
    current = await session.scalar(
        select(models.StageChange)
        .where(models.StageChange.opportunity_id == o.id, models.StageChange.left_at.is_(None))
        .order_by(models.StageChange.id.desc())
        .limit(1)
    )
    if current is not None:
        current.left_at = now
    change = models.StageChange(
        id=new_id(),
        tenant_id=o.tenant_id,
        opportunity_id=o.id,
        from_stage_id=previous,
        to_stage_id=stage.id,
        actor_id=caller().actor_id,
        entered_at=now,
    )
    session.add(change)
    o.stage_id = stage.id
    o.probability = stage.probability
    o.stage_entered_at = now
    o.status = stage.kind
    if stage.kind == "open":
        o.closed_at = None
        o.won_reason = o.lost_reason = ""
    else:
        o.closed_at = now
        o.won_reason = request.won_reason.strip() if stage.kind == "won" else ""
        o.lost_reason = request.lost_reason.strip() if stage.kind == "lost" else ""
    o.version += 1
    await session.flush()
    await session.refresh(o)
    message = opportunity_pb(o)
    after = snapshot(o, AUDITED)
    _emit(
        uow,
        events_pb2.OpportunityStageChanged(opportunity=message, change=change_pb(change, now)),
        o,
        "stage_changed",
        before,
        after,
    )
    if stage.kind == "won":
        _emit(uow, events_pb2.OpportunityWon(opportunity=message), o, "won")
    elif stage.kind == "lost":
        _emit(uow, events_pb2.OpportunityLost(opportunity=message), o, "lost")
    return o


async def stage_history(
    session: AsyncSession, decision: Decision, request: pb.ListStageHistoryRequest
) -> tuple[list[models.StageChange], str]:
    o = await get(session, decision, request.id)
    keys = [SortKey(models.StageChange.id)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.StageChange).where(
        models.StageChange.tenant_id == o.tenant_id, models.StageChange.opportunity_id == o.id
    )
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


def weighted(o: models.Opportunity) -> Decimal:
    return (o.amount or Decimal(0)) * o.probability / 100
