"""Contracts (合同) with approval, status, dates and renewal reminders; orders from an accepted quote or a
contract; payment plans in instalments; payments (partial, several per instalment); overdue detection;
receivables per account. Every step is an event, so an ERP or finance system can follow along."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from crm.common.v1 import event_pb2
from crm.sales.v1 import contracts_pb2 as pb
from crm.sales.v1 import events_pb2
from crm_kit.db import UnitOfWork, expect_version
from crm_kit.errors import Conflict, InvalidArgument
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.policy import Decision, Text
from crm_kit.validation import Check, updatable
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models
from crm_sales.domain import approvals, quotes
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

CONTRACT_STATUS = pb.ContractStatus.DESCRIPTOR
ORDER_STATUS = pb.OrderStatus.DESCRIPTOR
CONTRACT_FIELDS = (
    "title",
    "customer_name",
    "amount",
    "currency",
    "start_date",
    "end_date",
    "renewal_reminder_days",
    "terms",
)
CONTRACT_AUDITED = ("number", "status", "account_id", "signed_date", *CONTRACT_FIELDS)
METHODS = ("bank_transfer", "cash", "cheque", "alipay", "wechat_pay", "card", "other")
SYSTEM_ACTOR = event_pb2.Actor(type=event_pb2.ACTOR_TYPE_SYSTEM, id="system", name="system")


def scoped(decision: Decision, model: Any) -> Any:
    return decision.row_filter(caller(), owner_column=model.owner_id, department_column=model.department_id)


def contract_pb(c: models.Contract, decision: Decision | None = None) -> pb.Contract:
    msg = to_message(c, pb.Contract)
    return decision.redact_message(msg) if decision else msg


def order_pb(o: models.Order, decision: Decision | None = None) -> pb.Order:
    """An order's lines are a quote's: a hidden price or discount hides the line amounts computed from it."""
    msg = to_message(o, pb.Order)
    return decision.redact_message(msg, quotes.LINE_DERIVED) if decision else msg


def instalment_pb(i: models.Instalment, decision: Decision | None = None) -> pb.Instalment:
    msg = to_message(i, pb.Instalment, outstanding_amount=i.amount - i.paid_amount)
    return decision.redact_message(msg) if decision else msg


def payment_pb(p: models.Payment, decision: Decision | None = None) -> pb.Payment:
    msg = to_message(p, pb.Payment)
    return decision.redact_message(msg) if decision else msg


async def plan_pb(
    session: AsyncSession, plan: models.PaymentPlan, decision: Decision | None = None
) -> pb.PaymentPlan:
    rows = (
        await session.scalars(
            select(models.Instalment)
            .where(models.Instalment.plan_id == plan.id)
            .order_by(models.Instalment.sequence)
        )
    ).all()
    msg = to_message(plan, pb.PaymentPlan, instalments=[instalment_pb(i) for i in rows])
    return decision.redact_message(msg) if decision else msg


def _emit(
    uow: UnitOfWork, payload: Any, kind: str, row: Any, action: str, before=None, after=None, **kw
) -> None:  # type: ignore[no-untyped-def]
    uow.emit(
        payload,
        aggregate_type=kind,
        aggregate_id=row.id,
        aggregate_version=getattr(row, "version", 1) or 1,
        action=action,
        before=before,
        after=after,
        **kw,
    )


# ---------------------------------------------------------------- contracts


async def create_contract(
    uow: UnitOfWork,
    decision: Decision,
    quote_decision: Decision,
    request: pb.CreateContractRequest,
    *,
    people: People,
    now: dt.datetime,
) -> models.Contract:
    principal = caller()
    session = uow.session
    check = Check()
    for f in ("account_id", "opportunity_id", "quote_id"):
        check.uuid(f, getattr(request, f))
    await people.check_record(check, "account_id", "account", request.account_id)
    await check_local(
        session, check, "opportunity_id", models.Opportunity, request.opportunity_id, what="opportunity"
    )
    check.length("title", request.title, max_len=300)
    check.length("terms", request.terms, max_len=20_000)
    start = parse_date(check, "start_date", request.start_date)
    end = parse_date(check, "end_date", request.end_date)
    if start and end and end < start:
        check.fail("end_date", "is before start_date")
    if not 0 <= request.renewal_reminder_days <= 3650:
        check.fail("renewal_reminder_days", "must be between 0 and 3650")
    quote = None
    if request.quote_id and not check.errors:
        quote = await quotes.get(session, quote_decision, request.quote_id)
        if quote.status not in ("approved", "accepted"):
            check.fail("quote_id", "the quote is not approved")
    amount = quote.total if quote else parse_decimal(check, "amount", request.amount, required=True)
    currency = quote.currency if quote else currency_code(check, "currency", request.currency)
    check.done()
    number = f"C-{now:%Y%m%d}-{await quotes.next_number(session, principal.tenant_id, 'contract'):04d}"
    c = models.Contract(
        id=new_id(),
        tenant_id=principal.tenant_id,
        number=number,
        title=request.title.strip() or (quote.title if quote else ""),
        account_id=request.account_id or (quote.account_id if quote else ""),
        customer_name=request.customer_name.strip() or (quote.customer_name if quote else ""),
        opportunity_id=request.opportunity_id or (quote.opportunity_id if quote else ""),
        quote_id=quote.id if quote else "",
        amount=amount,
        currency=currency,
        status="draft",
        start_date=start,
        end_date=end,
        renewal_reminder_days=request.renewal_reminder_days,
        terms=request.terms,
        owner_id=principal.actor_id,
        department_id=principal.department_id or None,
        version=1,
    )
    session.add(c)
    await session.flush()
    await session.refresh(c)
    _emit(
        uow,
        events_pb2.ContractCreated(contract=contract_pb(c)),
        "contract",
        c,
        "created",
        after=snapshot(c, CONTRACT_AUDITED),
    )
    return c


async def get_contract(
    session: AsyncSession, decision: Decision, contract_id: str, *, lock: bool = False
) -> models.Contract:
    return await get_owned(
        session,
        models.Contract,
        "contract",
        contract_id,
        lock=lock,
        visible=scoped(decision, models.Contract),
    )


async def list_contracts(
    session: AsyncSession, decision: Decision, request: pb.ListContractsRequest
) -> tuple[list[models.Contract], str]:
    keys = [SortKey(models.Contract.id, descending=True)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.Contract).where(
        models.Contract.tenant_id == caller().tenant_id, scoped(decision, models.Contract)
    )
    if request.account_id:
        stmt = stmt.where(models.Contract.account_id == request.account_id)
    if request.status:
        stmt = stmt.where(models.Contract.status == enum_name(CONTRACT_STATUS, request.status))
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def update_contract(
    uow: UnitOfWork, decision: Decision, request: pb.UpdateContractRequest
) -> models.Contract:
    paths = list(request.update_mask.paths)
    updatable(paths, CONTRACT_FIELDS)
    c = await get_contract(uow.session, decision, request.id, lock=True)
    expect_version(c, request.expected_version)
    if c.status not in ("draft", "rejected") and set(paths) - {"renewal_reminder_days", "end_date"}:
        raise Conflict(
            "only a draft contract changes its terms; renewal settings may change later",
            reason="contract_locked",
        )
    src = request.contract
    check = Check()
    values: dict[str, Any] = {}
    if "amount" in paths:
        values["amount"] = parse_decimal(check, "amount", src.amount, required=True)
    if "currency" in paths:
        values["currency"] = currency_code(check, "currency", src.currency)
    for f in ("start_date", "end_date"):
        if f in paths:
            values[f] = parse_date(check, f, getattr(src, f))
    for f in ("title", "customer_name", "terms"):
        if f in paths:
            check.length(f, getattr(src, f), max_len=20_000 if f == "terms" else 300)
            values[f] = getattr(src, f).strip()
    if "renewal_reminder_days" in paths:
        if not 0 <= src.renewal_reminder_days <= 3650:
            check.fail("renewal_reminder_days", "must be between 0 and 3650")
        values["renewal_reminder_days"] = src.renewal_reminder_days
    start, end = values.get("start_date", c.start_date), values.get("end_date", c.end_date)
    if start and end and end < start:
        check.fail("end_date", "is before start_date")
    check.done()
    before = snapshot(c, CONTRACT_AUDITED)
    for k, v in values.items():
        setattr(c, k, v)
    if "end_date" in paths:
        c.renewal_reminded_at = None
    after = snapshot(c, CONTRACT_AUDITED)
    if after == before:
        return c
    c.version += 1
    await uow.session.flush()
    await uow.session.refresh(c)
    _emit(uow, events_pb2.ContractUpdated(contract=contract_pb(c)), "contract", c, "updated", before, after)
    return c


async def _contract_status(uow: UnitOfWork, c: models.Contract, status: str) -> None:
    previous = c.status
    before = snapshot(c, CONTRACT_AUDITED)
    c.status = status
    c.version += 1
    await uow.session.flush()
    await uow.session.refresh(c)
    _emit(
        uow,
        events_pb2.ContractStatusChanged(contract=contract_pb(c), previous_status=previous),
        "contract",
        c,
        status,
        before,
        snapshot(c, CONTRACT_AUDITED),
    )


async def submit_contract(
    uow: UnitOfWork, decision: Decision, contract_id: str
) -> tuple[models.Contract, models.Approval | None]:
    c = await get_contract(uow.session, decision, contract_id, lock=True)
    if c.status not in ("draft", "rejected"):
        raise Conflict(f"a {c.status} contract cannot be submitted", reason="contract_not_draft")
    policy = await approvals.policy(uow.session, c.tenant_id)
    if not policy.steps:
        await _contract_status(uow, c, "approved")
        return c, None
    approval = await approvals.request_approval(
        uow,
        object_type="contract",
        object_id=c.id,
        reason=Text.join(
            "合同审批 / contract approval:",
            Text.of(c.number, "number"),
            Text.of(f"{c.amount} {c.currency}", "amount"),
            sep=" ",
        ),
        steps=[list(s) for s in policy.steps],
    )
    c.approval_id = approval.id
    await _contract_status(uow, c, "pending_approval")
    return c, approval


async def on_contract_approval(uow: UnitOfWork, contract_id: str, outcome: str, now: dt.datetime) -> None:
    c = await uow.session.get(models.Contract, contract_id, with_for_update=True)
    if c is not None and c.status == "pending_approval":
        await _contract_status(uow, c, outcome)


approvals.OUTCOMES["contract"] = on_contract_approval


async def activate_contract(
    uow: UnitOfWork, decision: Decision, request: pb.ActivateContractRequest, *, now: dt.datetime
) -> models.Contract:
    c = await get_contract(uow.session, decision, request.id, lock=True)
    if c.status != "approved":
        raise Conflict(
            "only an approved contract can be signed and activated", reason="contract_not_approved"
        )
    check = Check()
    signed = parse_date(check, "signed_date", request.signed_date) or now.date()
    check.done()
    c.signed_date = signed
    await _contract_status(uow, c, "active")
    return c


async def terminate_contract(
    uow: UnitOfWork, decision: Decision, request: pb.TerminateContractRequest
) -> models.Contract:
    c = await get_contract(uow.session, decision, request.id, lock=True)
    if c.status != "active":
        raise Conflict("only an active contract can be terminated", reason="contract_not_active")
    if not request.reason.strip():
        raise InvalidArgument.for_field("reason", "say why the contract ends early")
    c.terms = (c.terms + f"\n\n[终止 / terminated] {request.reason.strip()}").strip()
    await _contract_status(uow, c, "terminated")
    return c


# ---------------------------------------------------------------- orders


async def create_order(
    uow: UnitOfWork,
    quote_decision: Decision,
    contract_decision: Decision,
    request: pb.CreateOrderRequest,
    *,
    now: dt.datetime,
) -> models.Order:
    principal = caller()
    session = uow.session
    if bool(request.quote_id) == bool(request.contract_id):
        raise InvalidArgument.for_field("quote_id", "give either quote_id or contract_id")
    if request.quote_id:
        q = await quotes.get(session, quote_decision, request.quote_id, lock=True)
        if q.status != "accepted":
            raise Conflict("an order comes from an accepted quote", reason="quote_not_accepted")
        if await session.scalar(
            select(models.Order.id).where(
                models.Order.tenant_id == q.tenant_id, models.Order.quote_id == q.id
            )
        ):
            raise Conflict("this quote already has an order", reason="order_exists")
        source = {
            "account_id": q.account_id,
            "customer_name": q.customer_name,
            "quote_id": q.id,
            "contract_id": "",
            "currency": q.currency,
            "lines": q.lines,
            "total": q.total,
        }
    else:
        c = await get_contract(session, contract_decision, request.contract_id, lock=True)
        if c.status not in ("approved", "active"):
            raise Conflict(
                "an order comes from an approved or active contract", reason="contract_not_approved"
            )
        lines: list[dict[str, Any]] = []
        if c.quote_id:
            q = await session.get(models.Quote, c.quote_id)
            lines = q.lines if q else []
        source = {
            "account_id": c.account_id,
            "customer_name": c.customer_name,
            "quote_id": "",
            "contract_id": c.id,
            "currency": c.currency,
            "lines": lines,
            "total": c.amount,
        }
    number = f"O-{now:%Y%m%d}-{await quotes.next_number(session, principal.tenant_id, 'order'):04d}"
    o = models.Order(
        id=new_id(),
        tenant_id=principal.tenant_id,
        number=number,
        status="open",
        owner_id=principal.actor_id,
        department_id=principal.department_id or None,
        version=1,
        **source,
    )
    session.add(o)
    await session.flush()
    await session.refresh(o)
    _emit(
        uow,
        events_pb2.OrderCreated(order=order_pb(o)),
        "order",
        o,
        "created",
        after={"number": o.number, "total": format(o.total, "f"), "currency": o.currency},
    )
    return o


async def get_order(session: AsyncSession, decision: Decision, order_id: str) -> models.Order:
    return await get_owned(session, models.Order, "order", order_id, visible=scoped(decision, models.Order))


async def list_orders(
    session: AsyncSession, decision: Decision, request: pb.ListOrdersRequest
) -> tuple[list[models.Order], str]:
    keys = [SortKey(models.Order.id, descending=True)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.Order).where(
        models.Order.tenant_id == caller().tenant_id, scoped(decision, models.Order)
    )
    if request.account_id:
        stmt = stmt.where(models.Order.account_id == request.account_id)
    if request.status:
        stmt = stmt.where(models.Order.status == enum_name(ORDER_STATUS, request.status))
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def close_order(
    uow: UnitOfWork, decision: Decision, order_id: str, *, status: str, reason: str = ""
) -> models.Order:
    o = await get_owned(
        uow.session, models.Order, "order", order_id, lock=True, visible=scoped(decision, models.Order)
    )
    if o.status != "open":
        raise Conflict(f"the order is already {o.status}", reason="order_closed")
    if status == "cancelled":
        if not reason.strip():
            raise InvalidArgument.for_field("reason", "say why the order is cancelled")
        # What the customer has paid and not been refunded: an order paid back in full may be cancelled.
        kept = await uow.session.scalar(
            select(func.coalesce(func.sum(models.Payment.amount - models.Payment.refunded_amount), 0))
            .join(models.PaymentPlan, models.PaymentPlan.id == models.Payment.plan_id)
            .where(models.PaymentPlan.order_id == o.id)
        )
        if kept:
            raise Conflict(
                "money was received for this order and not refunded; refund it before cancelling",
                reason="order_paid",
            )
    previous = o.status
    o.status = status
    o.version += 1
    await uow.session.flush()
    await uow.session.refresh(o)
    _emit(
        uow,
        events_pb2.OrderStatusChanged(order=order_pb(o), previous_status=previous, reason=reason.strip()),
        "order",
        o,
        status,
        before={"status": previous},
        after={"status": status},
    )
    return o


# ---------------------------------------------------------------- payment plans and payments


async def create_plan(
    uow: UnitOfWork,
    order_decision: Decision,
    contract_decision: Decision,
    request: pb.CreatePaymentPlanRequest,
) -> models.PaymentPlan:
    principal = caller()
    session = uow.session
    if bool(request.order_id) == bool(request.contract_id):
        raise InvalidArgument.for_field("order_id", "give either order_id or contract_id")
    if request.order_id:
        source: Any = await get_order(session, order_decision, request.order_id)
        total, link = source.total, {"order_id": source.id, "contract_id": source.contract_id}
    else:
        source = await get_contract(session, contract_decision, request.contract_id)
        if source.status not in ("approved", "active"):
            raise Conflict(
                "a payment plan needs an approved or active contract", reason="contract_not_approved"
            )
        total, link = source.amount, {"order_id": "", "contract_id": source.id}
    check = Check()
    if not request.instalments:
        check.fail("instalments", "a plan needs at least one instalment")
    if len(request.instalments) > 120:
        check.fail("instalments", "at most 120 instalments")
    parsed = []
    for i, inst in enumerate(request.instalments):
        due = parse_date(check, f"instalments[{i}].due_date", inst.due_date)
        if not inst.due_date:
            check.fail(f"instalments[{i}].due_date", "is required")
        amount = parse_decimal(check, f"instalments[{i}].amount", inst.amount, required=True)
        if amount is not None and amount <= 0:
            check.fail(f"instalments[{i}].amount", "must be more than 0")
        parsed.append((due, amount))
    if not check.errors:
        planned = sum((a for _, a in parsed if a is not None), Decimal(0))
        if planned != total:
            check.fail("instalments", f"add up to {planned}, not the total of {total}")
    check.done()
    existing = await session.scalar(
        select(models.PaymentPlan.id).where(
            models.PaymentPlan.tenant_id == principal.tenant_id,
            models.PaymentPlan.order_id == link["order_id"]
            if link["order_id"]
            else models.PaymentPlan.contract_id == link["contract_id"],
        )
    )
    if existing:
        raise Conflict("it already has a payment plan", reason="payment_plan_exists")
    plan = models.PaymentPlan(
        id=new_id(),
        tenant_id=principal.tenant_id,
        account_id=source.account_id,
        currency=source.currency,
        total=total,
        owner_id=source.owner_id,
        department_id=source.department_id,
        version=1,
        **link,
    )
    session.add(plan)
    for seq, (due, amount) in enumerate(sorted(parsed, key=lambda x: x[0]), start=1):
        session.add(
            models.Instalment(
                id=new_id(),
                tenant_id=principal.tenant_id,
                plan_id=plan.id,
                account_id=source.account_id,
                owner_id=source.owner_id,
                sequence=seq,
                due_date=due,
                amount=amount,
                paid_amount=Decimal(0),
                currency=source.currency,
                status="pending",
            )
        )
    await session.flush()
    await session.refresh(plan)
    message = await plan_pb(session, plan)
    _emit(
        uow,
        events_pb2.PaymentPlanCreated(plan=message),
        "payment_plan",
        plan,
        "created",
        after={"total": format(total, "f"), "currency": plan.currency, "instalments": len(parsed)},
    )
    return plan


async def get_plan(session: AsyncSession, decision: Decision, plan_id: str) -> models.PaymentPlan:
    return await get_owned(
        session, models.PaymentPlan, "payment_plan", plan_id, visible=scoped(decision, models.PaymentPlan)
    )


async def list_plans(
    session: AsyncSession, decision: Decision, request: pb.ListPaymentPlansRequest
) -> tuple[list[models.PaymentPlan], str]:
    keys = [SortKey(models.PaymentPlan.id, descending=True)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.PaymentPlan).where(
        models.PaymentPlan.tenant_id == caller().tenant_id, scoped(decision, models.PaymentPlan)
    )
    for f in ("account_id", "order_id", "contract_id"):
        if getattr(request, f):
            stmt = stmt.where(getattr(models.PaymentPlan, f) == getattr(request, f))
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


def _instalment_status(i: models.Instalment) -> str:
    """After a payment. Only the overdue job marks an instalment overdue (and says so with an event); a
    payment on an overdue instalment leaves it overdue until it is paid in full."""
    if i.paid_amount >= i.amount:
        return "paid"
    if i.status == "overdue":
        return "overdue"
    return "partially_paid" if i.paid_amount > 0 else "pending"


async def record_payment(
    uow: UnitOfWork, decision: Decision, request: pb.CreatePaymentRequest, *, now: dt.datetime
) -> tuple[models.Payment, models.Instalment]:
    principal = caller()
    session = uow.session
    inst = await get_owned(session, models.Instalment, "instalment", request.instalment_id, lock=True)
    await get_plan(session, decision, inst.plan_id)  # the caller's data scope
    check = Check()
    amount = parse_decimal(check, "amount", request.amount, required=True)
    if amount is not None and amount <= 0:
        check.fail("amount", "must be more than 0")
    paid_date = parse_date(check, "paid_date", request.paid_date) or now.date()
    method = request.method or "bank_transfer"
    check.one_of("method", method, METHODS)
    check.length("reference", request.reference, max_len=200)
    outstanding = inst.amount - inst.paid_amount
    if amount is not None and amount > outstanding:
        check.fail("amount", f"is more than the {outstanding} still open on this instalment")
    check.done()
    assert amount is not None
    payment = models.Payment(
        id=new_id(),
        tenant_id=inst.tenant_id,
        instalment_id=inst.id,
        plan_id=inst.plan_id,
        account_id=inst.account_id,
        amount=amount,
        currency=inst.currency,
        paid_date=paid_date,
        method=method,
        reference=request.reference.strip(),
        recorded_by=principal.actor_id,
        owner_id=inst.owner_id,
    )
    session.add(payment)
    inst.paid_amount = inst.paid_amount + amount
    inst.status = _instalment_status(inst)
    await session.flush()
    await session.refresh(payment)
    _emit(
        uow,
        events_pb2.PaymentRecorded(payment=payment_pb(payment), instalment=instalment_pb(inst)),
        "payment",
        payment,
        "recorded",
        after={"amount": format(amount, "f"), "currency": inst.currency, "instalment_id": inst.id},
    )
    return payment, inst


async def list_in_visible_plans(
    session: AsyncSession, decision: Decision, model: Any, request: Any, filters: tuple[str, ...]
) -> tuple[list[Any], str]:
    """Rows of `model` (payments, refunds) whose plan the caller may see, filtered by the request's `filters`
    fields that are set; newest first."""
    keys = [SortKey(model.id, descending=True)]
    page = Page.of(request.page, len(keys))
    principal = caller()
    stmt = select(model).where(
        model.tenant_id == principal.tenant_id,
        decision.source_filter(principal, model.plan_id, models.PaymentPlan),
    )
    for f in filters:
        if getattr(request, f):
            stmt = stmt.where(getattr(model, f) == getattr(request, f))
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def list_payments(
    session: AsyncSession, decision: Decision, request: pb.ListPaymentsRequest
) -> tuple[list[models.Payment], str]:
    return await list_in_visible_plans(session, decision, models.Payment, request, ("plan_id", "account_id"))


async def receivables(
    session: AsyncSession, decision: Decision, account_id: str, *, today: dt.date
) -> tuple[list[pb.ReceivableTotal], list[models.Instalment]]:
    principal = caller()
    if not account_id:
        raise InvalidArgument.for_field("account_id", "is required")
    visible_plans = select(models.PaymentPlan.id).where(
        models.PaymentPlan.tenant_id == principal.tenant_id,
        models.PaymentPlan.account_id == account_id,
        scoped(decision, models.PaymentPlan),
    )
    I = models.Instalment  # noqa: E741
    rows = (
        await session.execute(
            select(
                I.currency,
                func.sum(I.amount),
                func.sum(I.paid_amount),
                func.coalesce(func.sum(I.amount - I.paid_amount).filter(I.due_date < today), 0),
            )
            .where(I.tenant_id == principal.tenant_id, I.plan_id.in_(visible_plans))
            .group_by(I.currency)
            .order_by(I.currency)
        )
    ).all()
    R = models.Refund
    refunded = dict(
        (
            await session.execute(
                select(R.currency, func.sum(R.amount))
                .where(R.tenant_id == principal.tenant_id, R.plan_id.in_(visible_plans))
                .group_by(R.currency)
            )
        ).all()
    )
    totals = [
        pb.ReceivableTotal(
            currency=cur,
            planned=format(planned, "f"),
            paid=format(paid, "f"),
            outstanding=format(planned - paid, "f"),
            overdue=format(Decimal(overdue), "f"),
            refunded=format(refunded.get(cur, Decimal("0.00")), "f"),
        )
        for cur, planned, paid, overdue in rows
    ]
    open_rows = (
        await session.scalars(
            select(I)
            .where(I.tenant_id == principal.tenant_id, I.plan_id.in_(visible_plans), I.status != "paid")
            .order_by(I.due_date, I.sequence)
            .limit(500)
        )
    ).all()
    return totals, list(open_rows)


# ---------------------------------------------------------------- the daily jobs

OVERDUE = text(
    """
    SELECT id FROM instalments
    WHERE status IN ('pending', 'partially_paid') AND due_date < :today
      AND (CAST(:tenant AS text) IS NULL OR tenant_id = :tenant)
    ORDER BY id LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)
RENEWALS = text(
    """
    SELECT id FROM contracts
    WHERE status = 'active' AND renewal_reminded_at IS NULL AND renewal_reminder_days > 0
      AND end_date IS NOT NULL AND end_date - renewal_reminder_days <= :today
      AND (CAST(:tenant AS text) IS NULL OR tenant_id = :tenant)
    ORDER BY id LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)


def emit_overdue(uow: UnitOfWork, inst: models.Instalment, *, actor: event_pb2.Actor | None = None) -> None:
    """The instalment just became overdue (by the job, or at once by a refund or a re-schedule)."""
    uow.emit(
        events_pb2.InstalmentOverdue(
            instalment=instalment_pb(inst), account_id=inst.account_id, owner_id=inst.owner_id
        ),
        aggregate_type="instalment",
        aggregate_id=inst.id,
        aggregate_version=1,
        action="overdue",
        tenant_id=inst.tenant_id,
        actor=actor,
    )


async def run_jobs(
    uow: UnitOfWork, *, now: dt.datetime, tenant_id: str | None, limit: int = 500
) -> tuple[int, int]:
    """Overdue detection and renewal reminders, one batch each. Returns (overdue, reminders)."""
    session = uow.session
    today = now.date()
    overdue_ids = (
        (await session.execute(OVERDUE, {"today": today, "tenant": tenant_id, "limit": limit}))
        .scalars()
        .all()
    )
    for iid in overdue_ids:
        inst = await session.get(models.Instalment, iid)
        assert inst is not None
        inst.status = "overdue"
        await session.flush()
        emit_overdue(uow, inst, actor=SYSTEM_ACTOR)
    renewal_ids = (
        (await session.execute(RENEWALS, {"today": today, "tenant": tenant_id, "limit": limit}))
        .scalars()
        .all()
    )
    for cid in renewal_ids:
        c = await session.get(models.Contract, cid)
        assert c is not None
        c.renewal_reminded_at = now
        await session.flush()
        await session.refresh(c)
        uow.emit(
            events_pb2.ContractRenewalDue(contract=contract_pb(c)),
            aggregate_type="contract",
            aggregate_id=c.id,
            aggregate_version=c.version,
            action="renewal_due",
            tenant_id=c.tenant_id,
            actor=SYSTEM_ACTOR,
        )
    return len(overdue_ids), len(renewal_ids)
