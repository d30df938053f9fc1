"""The forecast (销售预测) for a period — month "2026-11", quarter "2026-Q4" or year "2026" — per owner, team
(a department and its sub-departments) and pipeline, from the caller's visible records: weighted pipeline,
commit and best case, won, and the collection forecast from payment plans, each against its target."""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections import defaultdict
from decimal import Decimal
from typing import Any

from crm.sales.v1 import events_pb2
from crm.sales.v1 import forecasts_pb2 as pb
from crm_kit.db import UnitOfWork
from crm_kit.errors import InvalidArgument
from crm_kit.ids import new_id
from crm_kit.policy import Decision, PolicyCache
from crm_kit.validation import Check
from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models
from crm_sales.domain.common import caller, currency_code, money, parse_decimal

ZERO = Decimal(0)


def period_range(period: str) -> tuple[dt.date, dt.date]:
    m = re.fullmatch(r"(\d{4})(?:-(?:(\d{2})|Q([1-4])))?", period or "")
    if not m:
        raise InvalidArgument.for_field(
            "period", 'must be a month "2026-11", a quarter "2026-Q4" or a year "2026"'
        )
    year = int(m.group(1))
    if m.group(2):
        month = int(m.group(2))
        if not 1 <= month <= 12:
            raise InvalidArgument.for_field("period", "no such month")
        return dt.date(year, month, 1), dt.date(year, month, calendar.monthrange(year, month)[1])
    if m.group(3):
        q = int(m.group(3))
        first, last = 3 * q - 2, 3 * q
        return dt.date(year, first, 1), dt.date(year, last, calendar.monthrange(year, last)[1])
    return dt.date(year, 1, 1), dt.date(year, 12, 31)


async def team(policies: PolicyCache, tenant_id: str, department_id: str) -> frozenset[str]:
    """The team: the department and every department below it. One that is not the tenant's is a 422."""
    view = await policies.get(tenant_id)
    if department_id not in view.departments:
        # Made a moment ago, before identity's event reached this replica: look again once.
        policies.invalidate(tenant_id)
        view = await policies.get(tenant_id)
    if department_id not in view.departments:
        raise InvalidArgument.for_field("department_id", "no such department")
    return view.subtree(department_id)


def _s(d: Any) -> str:
    return format(money(Decimal(d or 0)), "f")


# The figures summed from opportunities' amounts and from instalments' amounts (payment plans): left out for
# a reader from whom those amounts are hidden (a sum of one deal is its amount).
FROM_OPPORTUNITIES = {
    f: ("amount",)
    for f in (
        "pipeline_amount",
        "weighted_amount",
        "won_amount",
        "commit_amount",
        "best_case_amount",
        "revenue_gap",
    )
}
FROM_PAYMENTS = {
    f: ("instalments.amount", "instalments.paid_amount")
    for f in ("collection_due", "collected", "collection_expected", "overdue_before_period", "collection_gap")
}


async def forecast(
    session: AsyncSession,
    opp_decision: Decision,
    pay_decision: Decision,
    request: pb.GetForecastRequest,
    *,
    team: frozenset[str] | None,
) -> pb.GetForecastResponse:
    principal = caller()
    start, end = period_range(request.period)
    O = models.Opportunity  # noqa: E741
    scope = [
        O.tenant_id == principal.tenant_id,
        opp_decision.row_filter(principal, owner_column=O.owner_id, department_column=O.department_id),
    ]
    if request.owner_id:
        scope.append(O.owner_id == request.owner_id)
    if team is not None:
        scope.append(O.department_id.in_(sorted(team)))
    if request.pipeline_id:
        scope.append(O.pipeline_id == request.pipeline_id)
    figures: dict[str, dict[str, Any]] = defaultdict(dict)
    open_rows = (
        await session.execute(
            select(
                O.currency,
                func.count(),
                func.coalesce(func.sum(O.amount), 0),
                func.coalesce(func.sum(O.amount * O.probability), 0),
                func.coalesce(func.sum(case((O.forecast_category == "commit", O.amount), else_=0)), 0),
                func.coalesce(func.sum(case((O.forecast_category == "best_case", O.amount), else_=0)), 0),
            )
            .where(*scope, O.status == "open", O.close_date.between(start, end))
            .group_by(O.currency)
        )
    ).all()
    for cur, count, amount, weighted, commit, best in open_rows:
        figures[cur].update(
            open_count=count, pipeline=amount, weighted=Decimal(weighted) / 100, commit=commit, best=best
        )
    start_ts = dt.datetime.combine(start, dt.time(), dt.UTC)
    end_ts = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC)
    won_rows = (
        await session.execute(
            select(O.currency, func.coalesce(func.sum(O.amount), 0))
            .where(*scope, O.status == "won", O.closed_at >= start_ts, O.closed_at < end_ts)
            .group_by(O.currency)
        )
    ).all()
    for cur, won in won_rows:
        figures[cur]["won"] = won

    P, I = models.PaymentPlan, models.Instalment  # noqa: E741
    plan_scope = [
        P.tenant_id == principal.tenant_id,
        pay_decision.row_filter(principal, owner_column=P.owner_id, department_column=P.department_id),
    ]
    if request.owner_id:
        plan_scope.append(P.owner_id == request.owner_id)
    if team is not None:
        plan_scope.append(P.department_id.in_(sorted(team)))
    if request.pipeline_id:
        in_pipeline = select(models.Order.id).where(
            models.Order.quote_id.in_(
                select(models.Quote.id).where(
                    models.Quote.opportunity_id.in_(select(O.id).where(O.pipeline_id == request.pipeline_id))
                )
            )
        )
        plan_scope.append(P.order_id.in_(in_pipeline))
    plans = select(P.id).where(*plan_scope)
    collection = (
        await session.execute(
            select(
                I.currency,
                func.coalesce(func.sum(I.amount).filter(I.due_date.between(start, end)), 0),
                func.coalesce(func.sum(I.paid_amount).filter(I.due_date.between(start, end)), 0),
                func.coalesce(
                    func.sum(I.amount - I.paid_amount).filter(and_(I.due_date < start, I.status != "paid")), 0
                ),
            )
            .where(I.tenant_id == principal.tenant_id, I.plan_id.in_(plans))
            .group_by(I.currency)
        )
    ).all()
    for cur, due, paid, overdue in collection:
        figures[cur].update(due=due, collected=paid, overdue=overdue)

    T = models.ForecastTarget
    targets = (
        await session.scalars(
            select(T).where(
                T.tenant_id == principal.tenant_id,
                T.period == request.period,
                T.owner_id == request.owner_id,
                T.department_id == request.department_id,
            )
        )
    ).all()
    for t in targets:
        figures[t.currency].update(revenue_target=t.revenue_target, collection_target=t.collection_target)

    out = pb.GetForecastResponse(
        period=request.period, start_date=start.isoformat(), end_date=end.isoformat()
    )
    for cur in sorted(figures):
        f = figures[cur]
        won = Decimal(f.get("won", 0))
        commit = won + Decimal(f.get("commit", 0))
        best = commit + Decimal(f.get("best", 0))
        due, collected, overdue = (Decimal(f.get(k, 0)) for k in ("due", "collected", "overdue"))
        revenue_target = Decimal(f.get("revenue_target", 0))
        collection_target = Decimal(f.get("collection_target", 0))
        out.figures.append(
            pb.ForecastFigures(
                currency=cur,
                open_count=f.get("open_count", 0),
                pipeline_amount=_s(f.get("pipeline")),
                weighted_amount=_s(f.get("weighted")),
                won_amount=_s(won),
                commit_amount=_s(commit),
                best_case_amount=_s(best),
                revenue_target=_s(revenue_target),
                revenue_gap=_s(revenue_target - commit),
                collection_due=_s(due),
                collected=_s(collected),
                collection_expected=_s(due - collected + overdue),
                overdue_before_period=_s(overdue),
                collection_target=_s(collection_target),
                collection_gap=_s(collection_target - due),
            )
        )
        opp_decision.redact_derived(out.figures[-1], FROM_OPPORTUNITIES)
        pay_decision.redact_derived(out.figures[-1], FROM_PAYMENTS)
    return out


def target_pb(t: models.ForecastTarget) -> pb.ForecastTarget:
    return pb.ForecastTarget(
        period=t.period,
        owner_id=t.owner_id,
        department_id=t.department_id,
        currency=t.currency,
        revenue_target=_s(t.revenue_target),
        collection_target=_s(t.collection_target),
        version=t.version,
    )


async def set_target(uow: UnitOfWork, request: pb.SetForecastTargetRequest) -> models.ForecastTarget:
    principal = caller()
    src = request.target
    paths = set(request.update_mask.paths) or {"revenue_target", "collection_target"}
    check = Check()
    period_range(src.period)
    check.uuid("owner_id", src.owner_id)
    check.uuid("department_id", src.department_id)
    currency = currency_code(check, "currency", src.currency)
    revenue = (
        parse_decimal(check, "revenue_target", src.revenue_target or "0")
        if "revenue_target" in paths
        else None
    )
    collection = (
        parse_decimal(check, "collection_target", src.collection_target or "0")
        if "collection_target" in paths
        else None
    )
    check.done()
    T = models.ForecastTarget
    row = await uow.session.scalar(
        select(T)
        .where(
            T.tenant_id == principal.tenant_id,
            T.period == src.period,
            T.owner_id == src.owner_id,
            T.department_id == src.department_id,
            T.currency == currency,
        )
        .with_for_update()
    )
    if row is None:
        row = T(
            id=new_id(),
            tenant_id=principal.tenant_id,
            period=src.period,
            owner_id=src.owner_id,
            department_id=src.department_id,
            currency=currency,
            revenue_target=ZERO,
            collection_target=ZERO,
            version=0,
        )
        uow.session.add(row)
    before = {
        "revenue_target": format(row.revenue_target, "f"),
        "collection_target": format(row.collection_target, "f"),
    }
    if revenue is not None:
        row.revenue_target = revenue
    if collection is not None:
        row.collection_target = collection
    row.version = (row.version or 0) + 1
    await uow.session.flush()
    uow.emit(
        events_pb2.ForecastTargetSet(target=target_pb(row)),
        aggregate_type="forecast_target",
        aggregate_id=row.id,
        aggregate_version=row.version,
        action="set",
        before=before,
        after={
            "revenue_target": format(row.revenue_target, "f"),
            "collection_target": format(row.collection_target, "f"),
        },
    )
    return row
