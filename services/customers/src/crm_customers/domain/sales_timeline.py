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
from crm_kit.policy import Decision, Text
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
# What an overdue instalment's outstanding amount is read from, on the payment plan.
OUTSTANDING = ("instalments.outstanding_amount", "instalments.amount")
# The permission objects whose "read" shows entries.
OBJECTS = ("opportunity", "quote", "contract", "order", "payment", "lead")


@dataclass
class Entry:
    """A timeline entry as described from a sales event: its title and summary (zh-CN, en) are `Text`s that
    remember which fields of the sales object each piece came from, and `amount_fields` the fields the amount
    is; the rules of `object_type` apply to them whenever the entry is read."""

    kind: str
    account_id: str
    object_type: str
    link_type: str
    link_id: str
    title: tuple[Text, Text]
    summary: tuple[Text, Text] = (Text(), Text())
    owner_id: str = ""
    department_id: str = ""
    amount: str = ""
    currency: str = ""
    amount_fields: tuple[str, ...] = ()

    def sources(self) -> dict[str, Any]:
        return {
            "title_zh": self.title[0].to_json(),
            "title_en": self.title[1].to_json(),
            "summary_zh": self.summary[0].to_json(),
            "summary_en": self.summary[1].to_json(),
            "amount": list(self.amount_fields),
            "currency": ["currency"],
        }


def _money(amount: str, currency: str, field: str = "amount") -> Text:
    return Text.of(f"{amount} {currency}".strip(), field) if amount else Text()


def _about(
    m: Any, what: str, kind: str, title: tuple[Text, Text], summary: tuple[Text, Text], amount_field: str
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
        getattr(m, amount_field),
        m.currency,
        (amount_field,),
    )


def _both(text: Text) -> tuple[Text, Text]:
    return (text, text)


def describe(payload: Any) -> Entry | None:
    """The timeline entry a sales event makes, or None when it is not one for the timeline."""
    P, T = events_pb2, Text
    if isinstance(payload, P.OpportunityCreated | P.OpportunityWon | P.OpportunityLost):
        o = payload.opportunity
        money = _money(o.amount, o.currency)
        name = T.of(o.name, "name")
        if isinstance(payload, P.OpportunityCreated):
            kind, title = "created", (T.join("新商机：", name), T.join("New opportunity: ", name))
            date = T.of(o.close_date, "close_date")
            zh = T.join("预计 ", date, " 成交") if o.close_date else T()
            en = T.join("expected to close ", date) if o.close_date else T()
            summary = (T.join(money, zh, sep="，"), T.join(money, en, sep=", "))
        else:
            won = isinstance(payload, P.OpportunityWon)
            kind = "won" if won else "lost"
            title = (
                (T.join("赢单：", name), T.join("Opportunity won: ", name))
                if won
                else (T.join("输单：", name), T.join("Opportunity lost: ", name))
            )
            field = "won_reason" if won else "lost_reason"
            reason = getattr(o, field)
            summary = (
                T.join(money, T.of(f"原因：{reason}", field) if reason else T(), sep="；"),
                T.join(money, T.of(f"reason: {reason}", field) if reason else T(), sep="; "),
            )
        return _about(o, "opportunity", kind, title, summary, "amount")
    if isinstance(payload, P.QuoteCreated | P.QuoteStatusChanged):
        q = payload.quote
        money = _money(q.total, q.currency, "total")
        number = T.of(q.number, "number")
        if isinstance(payload, P.QuoteCreated):
            kind = "created"
            head_zh = T.join("报价 ", number, T.of(f"（第 {q.revision} 版）", "revision"))
            head_en = T.join("Quote ", number, T.of(f" (revision {q.revision})", "revision"))
            title = (
                T.join(head_zh, T.of(q.title, "title"), sep="："),
                T.join(head_en, T.of(q.title, "title"), sep=": "),
            )
        elif q.status == quotes_pb2.QUOTE_STATUS_ACCEPTED:
            kind, title = "accepted", (T.join("客户接受报价 ", number), T.join("Quote ", number, " accepted"))
        elif q.status == quotes_pb2.QUOTE_STATUS_DECLINED:
            kind, title = "declined", (T.join("客户拒绝报价 ", number), T.join("Quote ", number, " declined"))
        else:
            return None
        return _about(q, "quote", kind, title, _both(money), "total")
    if isinstance(payload, P.ContractStatusChanged):
        c = payload.contract
        name = T.join(T.of(c.number, "number"), T.of(c.title, "title"), sep=" ")
        if c.status == contracts_pb2.CONTRACT_STATUS_ACTIVE:
            kind, title = "active", (T.join("合同生效：", name), T.join("Contract in force: ", name))
        elif c.status == contracts_pb2.CONTRACT_STATUS_TERMINATED:
            kind, title = "terminated", (T.join("合同终止：", name), T.join("Contract ended: ", name))
        else:
            return None
        money = _money(c.amount, c.currency)
        period = (
            T.join(T.of(c.start_date, "start_date"), T.of(c.end_date, "end_date"), sep=" – ")
            if c.start_date or c.end_date
            else T()
        )
        return _about(
            c,
            "contract",
            kind,
            title,
            (T.join(money, period, sep="，"), T.join(money, period, sep=", ")),
            "amount",
        )
    if isinstance(payload, P.OrderCreated | P.OrderStatusChanged):
        o = payload.order
        money = _money(o.total, o.currency, "total")
        reason = T.of(payload.reason if isinstance(payload, P.OrderStatusChanged) else "")
        number = T.of(o.number, "number")
        if isinstance(payload, P.OrderCreated):
            kind, title = "created", (T.join("新订单 ", number), T.join("New order ", number))
        elif o.status == contracts_pb2.ORDER_STATUS_FULFILLED:
            kind, title = "fulfilled", (T.join("订单已履行 ", number), T.join("Order ", number, " fulfilled"))
        elif o.status == contracts_pb2.ORDER_STATUS_CANCELLED:
            kind, title = "cancelled", (T.join("订单已取消 ", number), T.join("Order ", number, " cancelled"))
        else:
            return None
        return _about(
            o,
            "order",
            kind,
            title,
            (T.join(money, reason, sep="；"), T.join(money, reason, sep="; ")),
            "total",
        )
    if isinstance(payload, P.PaymentPlanCreated):
        p = payload.plan
        n = len(p.instalments)
        count = T.of(str(n), "instalments")
        title = (
            T.join("收款计划：", count, " 期"),
            T.join("Payment plan: ", count, f" instalment{'s' if n != 1 else ''}"),
        )
        return Entry(
            "sales.payment_plan_created",
            p.account_id,
            "payment",
            "payment_plan",
            p.id,
            title,
            _both(_money(p.total, p.currency, "total")),
            p.owner_id,
            amount=p.total,
            currency=p.currency,
            amount_fields=("total",),
        )
    if isinstance(payload, P.PaymentRecorded):
        m = payload.payment
        money = _money(m.amount, m.currency)
        detail = T.join(
            T.of(m.paid_date, "paid_date"),
            T.of(m.method, "method"),
            T.of(m.reference, "reference"),
            sep=" · ",
        )
        title = (T.join("回款 ", money), T.join("Payment received: ", money))
        return Entry(
            "sales.payment_recorded",
            m.account_id,
            "payment",
            "payment",
            m.id,
            title,
            _both(detail),
            amount=m.amount,
            currency=m.currency,
            amount_fields=("amount",),
        )
    if isinstance(payload, P.InstalmentOverdue):
        i = payload.instalment
        outstanding = T.of(i.outstanding_amount, *OUTSTANDING)
        date = T.of(i.due_date, "instalments.due_date")
        due = (T.join("应于 ", date, " 收款"), T.join("due ", date)) if i.due_date else (T(), T())
        summary = (
            T.join(T.join("待收 ", outstanding), due[0], sep="，"),
            T.join(T.join(outstanding, " outstanding"), due[1], sep=", "),
        )
        title = (T.of(f"回款逾期：第 {i.sequence} 期"), T.of(f"Instalment {i.sequence} overdue"))
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
            amount_fields=OUTSTANDING,
        )
    if isinstance(payload, P.LeadConverted):
        lead = payload.lead
        name = T.of(lead.name, "name")
        title = (T.join("线索转化：", name), T.join("Lead converted: ", name))
        return Entry(
            "sales.lead_converted",
            payload.account_id,
            "lead",
            "lead",
            lead.id,
            title,
            _both(T.of(lead.company, "company")),
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
            title_zh=entry.title[0].plain[:300],
            title_en=entry.title[1].plain[:300],
            summary_zh=entry.summary[0].plain[:500],
            summary_en=entry.summary[1].plain[:500],
            object_type=entry.object_type,
            owner_id=entry.owner_id,
            department_id=entry.department_id,
            link_type=entry.link_type,
            link_id=entry.link_id,
            amount=entry.amount[:40],
            currency=entry.currency[:3],
            sources=entry.sources(),
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


def item(e: models.TimelineEntry, decision: Decision, locale: str = "zh-CN") -> pb.TimelineItem:
    """The entry as this reader may see it: what it copied from the sales object, under that object's field
    rules (`decision`: the reader's "read" on `object_type`), applied to the pieces the entry recorded."""
    shown = decision.redact_sourced(
        {
            "title_zh": e.title_zh,
            "title_en": e.title_en,
            "summary_zh": e.summary_zh,
            "summary_en": e.summary_en,
            "amount": e.amount,
            "currency": e.currency,
        },
        e.sources,
    )
    en = locale == "en"
    return pb.TimelineItem(
        id=e.id,
        kind=e.kind,
        occurred_at=ts(e.occurred_at),
        title=shown["title_en"] if en else shown["title_zh"],
        summary=shown["summary_en"] if en else shown["summary_zh"],
        sales_event=pb.SalesEvent(
            link_type=e.link_type,
            link_id=e.link_id,
            event_type=e.event_type,
            event_id=e.event_id,
            amount=shown["amount"],
            currency=shown["currency"],
            title_zh=shown["title_zh"],
            title_en=shown["title_en"],
            summary_zh=shown["summary_zh"],
            summary_en=shown["summary_en"],
        ),
    )
