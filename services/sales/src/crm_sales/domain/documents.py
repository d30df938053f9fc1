"""What goes into the documents sales prints (crm_sales.pdf): the contract with its quote's lines and its
payment schedule, and the tenant's letterhead on contracts and quotes.

A document shows only what the caller may read: the quote's lines when they may read the quote, the schedule
when they may read the payment plan, each as the messages the API would answer (hidden fields empty)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crm.sales.v1 import contracts_pb2
from crm_kit.errors import Conflict, InvalidArgument, NotFound
from crm_kit.policy import Decision
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models
from crm_sales.domain import contracts, quotes, settings
from crm_sales.pdf import Letterhead

LOCALES = ("zh-CN", "en")
PRINTABLE = ("approved", "active", "terminated")


@dataclass
class ContractDocument:
    contract: contracts_pb2.Contract
    locale: str
    letterhead: Letterhead
    filename: str
    lines: list[Any] = field(default_factory=list)
    instalments: list[Any] = field(default_factory=list)


async def letterhead(session: AsyncSession, tenant_id: str, locale: str) -> Letterhead:
    return Letterhead.of(await settings.get(session, tenant_id), locale)


async def contract_document(
    session: AsyncSession,
    decision: Decision,
    quote_decision: Decision,
    payment_decision: Decision,
    contract_id: str,
    locale: str,
) -> ContractDocument:
    if locale and locale not in LOCALES:
        raise InvalidArgument.for_field("locale", 'must be "zh-CN" or "en"')
    c = await contracts.get_contract(session, decision, contract_id)
    if c.status not in PRINTABLE:
        raise Conflict(
            "only an approved, active or terminated contract renders to a PDF", reason="contract_not_approved"
        )
    quote = None
    if c.quote_id and quote_decision.allowed:
        try:
            quote = await quotes.get(session, quote_decision, c.quote_id)
        except NotFound:
            quote = None
    locale = locale or (quote.locale if quote and quote.locale in LOCALES else "zh-CN")
    instalments: list[Any] = []
    if payment_decision.allowed:
        P, I = models.PaymentPlan, models.Instalment  # noqa: E741
        plan_id = await session.scalar(
            select(P.id)
            .where(P.tenant_id == c.tenant_id, P.contract_id == c.id, contracts.scoped(payment_decision, P))
            .order_by(P.id)
            .limit(1)
        )
        if plan_id:
            rows = (await session.scalars(select(I).where(I.plan_id == plan_id).order_by(I.sequence))).all()
            plan = contracts_pb2.PaymentPlan(instalments=[contracts.instalment_pb(i) for i in rows])
            instalments = list(payment_decision.redact_message(plan).instalments)
    return ContractDocument(
        contract=contracts.contract_pb(c, decision),
        locale=locale,
        letterhead=await letterhead(session, c.tenant_id, locale),
        filename=f"{c.number}.pdf",
        lines=list(quotes.quote_pb(quote, quote_decision).lines) if quote else [],
        instalments=instalments,
    )
