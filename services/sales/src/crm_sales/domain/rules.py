"""The tenant's lead rules: scoring (points when a field matches) and assignment (who gets a new lead)."""

from __future__ import annotations

from typing import Any

from crm.sales.v1 import events_pb2
from crm.sales.v1 import leads_pb2 as pb
from crm_kit.db import UnitOfWork
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.validation import Check
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models
from crm_sales.domain.common import caller, enum_name, get_owned, snapshot, to_message
from crm_sales.domain.leads import SOURCE, TEXT_FIELDS

OPERATORS = ("equals", "not_equals", "contains", "in", "not_empty", "gte", "lte")
SCORABLE = (*TEXT_FIELDS, "source", "campaign_id")
STRATEGIES = ("round_robin", "load")


def scoring_pb(r: models.ScoringRule) -> pb.ScoringRule:
    return to_message(r, pb.ScoringRule)


def assignment_pb(r: models.AssignmentRule) -> pb.AssignmentRule:
    return to_message(r, pb.AssignmentRule)


def _emit(uow: UnitOfWork, rule: Any, kind: str, action: str, fields: tuple[str, ...]) -> None:
    data = snapshot(rule, fields)
    uow.emit(
        events_pb2.LeadRuleChanged(rule_id=rule.id, kind=kind),
        aggregate_type=f"{kind}_rule",
        aggregate_id=rule.id,
        aggregate_version=1,
        action=action,
        before=data if action == "deleted" else None,
        after=data if action != "deleted" else None,
    )


SCORING_FIELDS = ("name", "field", "operator", "value", "points")
ASSIGNMENT_FIELDS = (
    "name",
    "priority",
    "regions",
    "industries",
    "territories",
    "sources",
    "strategy",
    "assignee_ids",
    "pool_id",
)


async def create_scoring(uow: UnitOfWork, request: pb.CreateScoringRuleRequest) -> models.ScoringRule:
    check = Check()
    check.required("name", request.name)
    check.length("name", request.name, max_len=200)
    check.required("field", request.field)
    if request.field and not (
        request.field in SCORABLE
        or (
            request.field.startswith("attributes.")
            and len(request.field) <= 100
            and request.field != "attributes."
        )
    ):
        check.fail("field", f"must be one of {', '.join(SCORABLE)} or attributes.<key>")
    check.required("operator", request.operator)
    check.one_of("operator", request.operator, OPERATORS)
    check.length("value", request.value, max_len=2000)
    if not -1000 <= request.points <= 1000:
        check.fail("points", "must be between -1000 and 1000")
    check.done()
    rule = models.ScoringRule(
        id=new_id(),
        tenant_id=caller().tenant_id,
        name=request.name.strip(),
        field=request.field,
        operator=request.operator,
        value=request.value,
        points=request.points,
    )
    uow.session.add(rule)
    await uow.session.flush()
    await uow.session.refresh(rule)
    _emit(uow, rule, "scoring", "created", SCORING_FIELDS)
    return rule


async def create_assignment(
    uow: UnitOfWork, request: pb.CreateAssignmentRuleRequest
) -> models.AssignmentRule:
    tenant_id = caller().tenant_id
    check = Check()
    check.required("name", request.name)
    check.length("name", request.name, max_len=200)
    strategy = request.strategy or "round_robin"
    check.one_of("strategy", strategy, STRATEGIES)
    if not request.assignee_ids and not request.pool_id:
        check.fail("assignee_ids", "name the people to assign to, or a pool_id")
    for i, uid in enumerate(request.assignee_ids):
        check.uuid(f"assignee_ids[{i}]", uid)
    if request.pool_id:
        check.uuid("pool_id", request.pool_id)
        if not check.errors and not await uow.session.scalar(
            select(models.LeadPool.id).where(
                models.LeadPool.id == request.pool_id, models.LeadPool.tenant_id == tenant_id
            )
        ):
            check.fail("pool_id", "no such lead pool")
    for name in ("regions", "industries", "territories"):
        for i, v in enumerate(getattr(request, name)):
            check.length(f"{name}[{i}]", v, max_len=100)
    check.done()
    rule = models.AssignmentRule(
        id=new_id(),
        tenant_id=tenant_id,
        name=request.name.strip(),
        priority=request.priority,
        regions=list(request.regions),
        industries=list(request.industries),
        territories=list(request.territories),
        sources=[enum_name(SOURCE, s) for s in request.sources if s],
        strategy=strategy,
        assignee_ids=list(request.assignee_ids),
        pool_id=request.pool_id,
        handed_out=0,
    )
    uow.session.add(rule)
    await uow.session.flush()
    await uow.session.refresh(rule)
    _emit(uow, rule, "assignment", "created", ASSIGNMENT_FIELDS)
    return rule


async def list_rules(session: AsyncSession, model: Any, request: Any) -> tuple[list[Any], str]:
    keys = [SortKey(model.id)]
    page = Page.of(request.page, len(keys))
    stmt = select(model).where(model.tenant_id == caller().tenant_id)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def delete_rule(uow: UnitOfWork, model: Any, kind: str, rule_id: str) -> None:
    rule = await get_owned(uow.session, model, f"{kind}_rule", rule_id, lock=True)
    await uow.session.delete(rule)
    _emit(uow, rule, kind, "deleted", SCORING_FIELDS if kind == "scoring" else ASSIGNMENT_FIELDS)
