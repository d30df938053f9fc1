"""What the sales service does for an account, on the account's timeline: a consumer of sales events writes one
`TimelineEntry` per relevant event (title and summary in zh-CN and en, a link to the sales object), and the
account timeline shows them beside the interactions.

Relevant: opportunities created, won and lost; quotes created, accepted and declined; contracts coming into
force and terminated; orders created, fulfilled and cancelled; payment plans, payments and overdue instalments;
leads converted into the account. Other sales events (and quote or contract steps inside the company, such as
approvals) are not the customer's story and are left out.

Who sees an entry: whoever may read the account and may read that sales object ("opportunity", "quote",
"contract", "order", "payment", "lead") within their data scope, judged on the owner and department the
event named — so the timeline never shows a deal its reader could not open in sales. A payment names no owner:
it takes its plan's (and the plan its order's or contract's department), from the entries already written.

Idempotent: the kit's inbox skips a redelivered event, and `event_id` is unique besides (a replay of the
stream after the inbox forgot it adds nothing either). An event about an account this service does not know
(purged, or never here) adds nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from crm.common.v1 import event_pb2
from crm.customers.v1 import customers_pb2 as pb
from crm.sales.v1 import contracts_pb2, events_pb2, quotes_pb2
from crm_kit.db import UnitOfWork
from crm_kit.ids import new_id
from crm_kit.policy import Decision
from sqlalchemy import and_, false, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from crm_customers import models
from crm_customers.domain.common import caller, ts

# The sales events the consumer asks for.
EVENTS = (
    events_pb2.OpportunityCreated,
    events_pb2.OpportunityWon,
    events_pb2.OpportunityLost,
    events_pb2.QuoteCreated,
    events_pb2.QuoteStatusChanged,
    events_pb2.ContractStatusChanged,
    events_pb2.OrderCreated,
    events_pb2.OrderStatusChanged,
    events_pb2.PaymentPlanCreated,
    events_pb2.PaymentRecorded,
    events_pb2.InstalmentOverdue,
    events_pb2.LeadConverted,
)
# The permission objects whose "read" shows entries.
OBJECTS = ("opportunity", "quote", "contract", "order", "payment", "lead")


@dataclass
class Entry:
    kind: str
    account_id: str
    object_type: str
    link_type: str
    link_id: str
    title: tuple[str, str]
    summary: tuple[str, str] = ("", "")
    owner_id: str = ""
    department_id: str = ""
    amount: str = ""
    currency: str = ""


def _money(amount: str, currency: str) -> str:
    return f"{amount} {currency}".strip() if amount else ""


def _join(*parts: str, sep: str) -> str:
    return sep.join(p for p in parts if p)


def _about(
    m: Any, what: str, kind: str, title: tuple[str, str], summary: tuple[str, str], amount: str
) -> Entry:
    """An entry about sales object `m` (an opportunity, quote, contract or order: it names its account, owner,
    department and currency), linked to it and shown by the data scope of `what`."""
    return Entry(
        f"sales.{what}_{kind}",
        m.account_id,
        what,
        what,
        m.id,
        title,
        summary,
        m.owner_id,
        m.department_id,
        amount,
        m.currency,
    )


def describe(payload: Any) -> Entry | None:
    """The timeline entry a sales event makes, or None when it is not one for the timeline."""
    P = events_pb2
    if isinstance(payload, P.OpportunityCreated | P.OpportunityWon | P.OpportunityLost):
        o = payload.opportunity
        money = _money(o.amount, o.currency)
        if isinstance(payload, P.OpportunityCreated):
            kind, title = "created", (f"新商机：{o.name}", f"New opportunity: {o.name}")
            zh, en = (
                (f"预计 {o.close_date} 成交", f"expected to close {o.close_date}")
                if o.close_date
                else ("", "")
            )
            summary = (_join(money, zh, sep="，"), _join(money, en, sep=", "))
        else:
            won = isinstance(payload, P.OpportunityWon)
            kind = "won" if won else "lost"
            title = (
                (f"赢单：{o.name}", f"Opportunity won: {o.name}")
                if won
                else (
                    f"输单：{o.name}",
                    f"Opportunity lost: {o.name}",
                )
            )
            reason = o.won_reason if won else o.lost_reason
            summary = (
                _join(money, f"原因：{reason}" if reason else "", sep="；"),
                _join(money, f"reason: {reason}" if reason else "", sep="; "),
            )
        return _about(o, "opportunity", kind, title, summary, o.amount)
    if isinstance(payload, P.QuoteCreated | P.QuoteStatusChanged):
        q = payload.quote
        money = _money(q.total, q.currency)
        if isinstance(payload, P.QuoteCreated):
            kind = "created"
            title = (
                _join(f"报价 {q.number}（第 {q.revision} 版）", q.title, sep="："),
                _join(f"Quote {q.number} (revision {q.revision})", q.title, sep=": "),
            )
        elif q.status == quotes_pb2.QUOTE_STATUS_ACCEPTED:
            kind, title = "accepted", (f"客户接受报价 {q.number}", f"Quote {q.number} accepted")
        elif q.status == quotes_pb2.QUOTE_STATUS_DECLINED:
            kind, title = "declined", (f"客户拒绝报价 {q.number}", f"Quote {q.number} declined")
        else:
            return None
        return _about(q, "quote", kind, title, (money, money), q.total)
    if isinstance(payload, P.ContractStatusChanged):
        c = payload.contract
        name = f"{c.number} {c.title}".strip()
        if c.status == contracts_pb2.CONTRACT_STATUS_ACTIVE:
            kind, title = "active", (f"合同生效：{name}", f"Contract in force: {name}")
        elif c.status == contracts_pb2.CONTRACT_STATUS_TERMINATED:
            kind, title = "terminated", (f"合同终止：{name}", f"Contract ended: {name}")
        else:
            return None
        money = _money(c.amount, c.currency)
        period = f"{c.start_date} – {c.end_date}" if c.start_date or c.end_date else ""
        return _about(
            c,
            "contract",
            kind,
            title,
            (_join(money, period, sep="，"), _join(money, period, sep=", ")),
            c.amount,
        )
    if isinstance(payload, P.OrderCreated | P.OrderStatusChanged):
        o = payload.order
        money = _money(o.total, o.currency)
        reason = payload.reason if isinstance(payload, P.OrderStatusChanged) else ""
        if isinstance(payload, P.OrderCreated):
            kind, title = "created", (f"新订单 {o.number}", f"New order {o.number}")
        elif o.status == contracts_pb2.ORDER_STATUS_FULFILLED:
            kind, title = "fulfilled", (f"订单已履行 {o.number}", f"Order {o.number} fulfilled")
        elif o.status == contracts_pb2.ORDER_STATUS_CANCELLED:
            kind, title = "cancelled", (f"订单已取消 {o.number}", f"Order {o.number} cancelled")
        else:
            return None
        return _about(
            o, "order", kind, title, (_join(money, reason, sep="；"), _join(money, reason, sep="; ")), o.total
        )
    if isinstance(payload, P.PaymentPlanCreated):
        p = payload.plan
        n = len(p.instalments)
        money = _money(p.total, p.currency)
        title = (f"收款计划：{n} 期", f"Payment plan: {n} instalment{'s' if n != 1 else ''}")
        return Entry(
            "sales.payment_plan_created",
            p.account_id,
            "payment",
            "payment_plan",
            p.id,
            title,
            (money, money),
            p.owner_id,
            amount=p.total,
            currency=p.currency,
        )
    if isinstance(payload, P.PaymentRecorded):
        m = payload.payment
        money = _money(m.amount, m.currency)
        detail = _join(m.paid_date, m.method, m.reference, sep=" · ")
        title = (f"回款 {money}", f"Payment received: {money}")
        return Entry(
            "sales.payment_recorded",
            m.account_id,
            "payment",
            "payment",
            m.id,
            title,
            (detail, detail),
            amount=m.amount,
            currency=m.currency,
        )
    if isinstance(payload, P.InstalmentOverdue):
        i = payload.instalment
        due = (f"应于 {i.due_date} 收款", f"due {i.due_date}") if i.due_date else ("", "")
        summary = (
            _join(f"待收 {i.outstanding_amount}", due[0], sep="，"),
            _join(f"{i.outstanding_amount} outstanding", due[1], sep=", "),
        )
        title = (f"回款逾期：第 {i.sequence} 期", f"Instalment {i.sequence} overdue")
        return Entry(
            "sales.instalment_overdue",
            payload.account_id,
            "payment",
            "payment_plan",
            i.plan_id,
            title,
            summary,
            payload.owner_id,
            amount=i.outstanding_amount,
        )
    if isinstance(payload, P.LeadConverted):
        lead = payload.lead
        title = (f"线索转化：{lead.name}", f"Lead converted: {lead.name}")
        return Entry(
            "sales.lead_converted",
            payload.account_id,
            "lead",
            "lead",
            lead.id,
            title,
            (lead.company,) * 2,
            lead.owner_id,
            lead.department_id,
        )
    return None


async def _owner_of(session: AsyncSession, tenant_id: str, link_ids: list[str]) -> tuple[str, str]:
    """The owner and department of the first entry already written for any of these sales objects."""
    ids = [i for i in link_ids if i]
    if not ids:
        return "", ""
    E = models.TimelineEntry
    row = (
        await session.execute(
            select(E.owner_id, E.department_id)
            .where(E.tenant_id == tenant_id, E.link_id.in_(ids))
            .order_by(E.occurred_at)
            .limit(1)
        )
    ).first()
    return (row[0], row[1]) if row else ("", "")


async def record(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload: Any) -> None:
    """The consumer's handler: one entry per relevant event, on an account of the event's tenant."""
    entry = describe(payload)
    if entry is None or not entry.account_id:
        return
    session, tenant = uow.session, envelope.tenant_id
    known = await session.scalar(
        select(models.Account.id).where(
            models.Account.tenant_id == tenant, models.Account.id == entry.account_id
        )
    )
    if known is None:
        return
    if isinstance(payload, events_pb2.PaymentPlanCreated):
        _, entry.department_id = await _owner_of(
            session, tenant, [payload.plan.order_id, payload.plan.contract_id]
        )
    elif isinstance(payload, events_pb2.PaymentRecorded):
        entry.owner_id, entry.department_id = await _owner_of(session, tenant, [payload.payment.plan_id])
    elif isinstance(payload, events_pb2.InstalmentOverdue):
        owner, entry.department_id = await _owner_of(session, tenant, [payload.instalment.plan_id])
        entry.owner_id = entry.owner_id or owner
    occurred = envelope.occurred_at.ToDatetime(tzinfo=dt.UTC) if envelope.HasField("occurred_at") else None
    await session.execute(
        insert(models.TimelineEntry)
        .values(
            id=new_id(),
            tenant_id=tenant,
            account_id=entry.account_id,
            kind=entry.kind,
            occurred_at=occurred or dt.datetime.now(dt.UTC),
            title_zh=entry.title[0][:300],
            title_en=entry.title[1][:300],
            summary_zh=entry.summary[0][:500],
            summary_en=entry.summary[1][:500],
            object_type=entry.object_type,
            owner_id=entry.owner_id,
            department_id=entry.department_id,
            link_type=entry.link_type,
            link_id=entry.link_id,
            amount=entry.amount[:40],
            currency=entry.currency[:3],
            event_type=envelope.type,
            event_id=envelope.id,
        )
        .on_conflict_do_nothing(index_elements=["event_id"])
    )


# ---------------------------------------------------------------- reading


def visible(decisions: dict[str, Decision]) -> Any:
    """The entries a caller may see, given their "read" decision on each sales object (see OBJECTS)."""
    E = models.TimelineEntry
    principal = caller()
    shown = [
        and_(
            E.object_type == obj,
            d.row_filter(principal, owner_column=E.owner_id, department_column=E.department_id),
        )
        for obj, d in decisions.items()
        if d.allowed
    ]
    return or_(*shown) if shown else false()


def item(e: models.TimelineEntry, locale: str = "zh-CN") -> pb.TimelineItem:
    en = locale == "en"
    return pb.TimelineItem(
        id=e.id,
        kind=e.kind,
        occurred_at=ts(e.occurred_at),
        title=e.title_en if en else e.title_zh,
        summary=e.summary_en if en else e.summary_zh,
        sales_event=pb.SalesEvent(
            link_type=e.link_type,
            link_id=e.link_id,
            event_type=e.event_type,
            event_id=e.event_id,
            amount=e.amount,
            currency=e.currency,
            title_zh=e.title_zh,
            title_en=e.title_en,
            summary_zh=e.summary_zh,
            summary_en=e.summary_en,
        ),
    )
