"""Collection after the plan is made: re-scheduling a payment plan, and refunds.

Re-scheduling: the caller sends the plan's instalments after the change, all of them (keep and change by id,
add without one, remove by leaving out). The plan's total never changes — it is its order's total or its
contract's amount, fixed once the contract is approved — so the instalments must add up to it exactly, as when
the plan was made; what a customer owes changes through a new order or contract, not here. An instalment keeps
at least what was paid on it (net of refunds), and one with payments recorded cannot be removed, so no payment
loses its instalment. A fully paid plan does not change.

Refunds: money paid back against one payment, at most what is left of it. The payment keeps its amount and
counts `refunded_amount`; the instalment's `paid_amount` goes down by the refund, so receivables, the
forecast's collected figures and the overdue job see the money as owed again. An instalment past its due date
that is no longer paid in full is overdue at once (with `InstalmentOverdue`), as is a re-scheduled one.

All amounts are exact decimals (`NUMERIC`, `Decimal`, decimal strings).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from crm.sales.v1 import contracts_pb2 as pb
from crm.sales.v1 import events_pb2
from crm_kit.db import UnitOfWork, expect_version
from crm_kit.errors import Conflict
from crm_kit.ids import new_id
from crm_kit.policy import Decision
from crm_kit.validation import Check
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models
from crm_sales.domain.common import caller, dec_str, get_owned, parse_date, parse_decimal, to_message
from crm_sales.domain.contracts import (
    METHODS,
    emit_overdue,
    get_plan,
    instalment_pb,
    list_in_visible_plans,
    payment_pb,
    plan_pb,
    scoped,
)

MAX_INSTALMENTS = 120


def refund_pb(r: models.Refund, decision: Decision | None = None) -> pb.Refund:
    msg = to_message(r, pb.Refund)
    return decision.redact_message(msg) if decision else msg


def settle(uow: UnitOfWork, inst: models.Instalment, *, today: dt.date) -> None:
    """The instalment's status after its amount, due date or paid amount changed."""
    previous = inst.status
    if inst.paid_amount >= inst.amount:
        inst.status = "paid"
    elif inst.due_date < today:
        inst.status = "overdue"
    else:
        inst.status = "partially_paid" if inst.paid_amount > 0 else "pending"
    if inst.status == "overdue" and previous != "overdue":
        emit_overdue(uow, inst)


def _schedule(rows: list[models.Instalment]) -> list[dict[str, Any]]:
    return [
        {
            "id": i.id,
            "sequence": i.sequence,
            "due_date": i.due_date.isoformat(),
            "amount": dec_str(i.amount),
            "paid_amount": dec_str(i.paid_amount),
            "status": i.status,
        }
        for i in sorted(rows, key=lambda i: i.sequence)
    ]


async def update_plan(
    uow: UnitOfWork, decision: Decision, request: pb.UpdatePaymentPlanRequest, *, now: dt.datetime
) -> models.PaymentPlan:
    session = uow.session
    plan = await get_owned(
        session,
        models.PaymentPlan,
        "payment_plan",
        request.id,
        lock=True,
        visible=scoped(decision, models.PaymentPlan),
    )
    expect_version(plan, request.expected_version)
    I = models.Instalment  # noqa: E741
    rows = list(
        (
            await session.scalars(
                select(I).where(I.plan_id == plan.id).order_by(I.sequence).with_for_update()
            )
        ).all()
    )
    if all(i.paid_amount >= i.amount for i in rows):
        raise Conflict("the plan is paid in full; it cannot change", reason="payment_plan_paid")
    current = {i.id: i for i in rows}
    with_payments = set(
        (
            await session.scalars(
                select(models.Payment.instalment_id).where(models.Payment.plan_id == plan.id).distinct()
            )
        ).all()
    )

    check = Check()
    if not request.instalments:
        check.fail("instalments", "a plan needs at least one instalment")
    if len(request.instalments) > MAX_INSTALMENTS:
        check.fail("instalments", f"at most {MAX_INSTALMENTS} instalments")
    kept: set[str] = set()
    wanted: list[tuple[models.Instalment | None, dt.date | None, Decimal | None]] = []
    for n, item in enumerate(request.instalments):
        field = f"instalments[{n}]"
        inst = current.get(item.id) if item.id else None
        if item.id and inst is None:
            check.fail(f"{field}.id", "is not an instalment of this plan")
        elif item.id in kept:
            check.fail(f"{field}.id", "is listed twice")
        elif inst is not None:
            kept.add(inst.id)
        if not item.due_date:
            check.fail(f"{field}.due_date", "is required")
        due = parse_date(check, f"{field}.due_date", item.due_date)
        amount = parse_decimal(check, f"{field}.amount", item.amount, required=True)
        if amount is not None and amount <= 0:
            check.fail(f"{field}.amount", "must be more than 0")
        elif amount is not None and inst is not None and amount < inst.paid_amount:
            check.fail(f"{field}.amount", f"is less than the {inst.paid_amount} already paid on it")
        wanted.append((inst, due, amount))
    for inst in rows:
        if inst.id not in kept and inst.id in with_payments:
            check.fail("instalments", f"instalment {inst.sequence} has payments and cannot be removed")
    if not check.errors:
        planned = sum((a for _, _, a in wanted if a is not None), Decimal(0))
        if planned != plan.total:
            check.fail("instalments", f"add up to {planned}, not the total of {plan.total}")
    check.done()

    before = _schedule(rows)
    removed = [i for i in rows if i.id not in kept]
    for inst in removed:
        await session.delete(inst)
    schedule: list[tuple[dt.date, int, models.Instalment]] = []
    for n, (inst, due, amount) in enumerate(wanted):
        assert due is not None and amount is not None
        if inst is None:
            inst = models.Instalment(
                id=new_id(),
                tenant_id=plan.tenant_id,
                plan_id=plan.id,
                account_id=plan.account_id,
                owner_id=plan.owner_id,
                sequence=0,
                paid_amount=Decimal(0),
                currency=plan.currency,
                status="pending",
            )
            session.add(inst)
        inst.due_date, inst.amount = due, amount
        schedule.append((due, n, inst))
    schedule.sort(key=lambda s: (s[0], s[1]))
    today = now.date()
    for sequence, (_, _, inst) in enumerate(schedule, start=1):
        inst.sequence = sequence
        settle(uow, inst, today=today)
    after = _schedule([inst for _, _, inst in schedule])
    if after == before:
        return plan
    plan.version += 1
    await session.flush()
    await session.refresh(plan)
    uow.emit(
        events_pb2.PaymentPlanUpdated(
            plan=await plan_pb(session, plan), removed_instalment_ids=[i.id for i in removed]
        ),
        aggregate_type="payment_plan",
        aggregate_id=plan.id,
        aggregate_version=plan.version,
        action="updated",
        before={"instalments": before},
        after={"instalments": after},
    )
    return plan


async def refund_payment(
    uow: UnitOfWork, decision: Decision, request: pb.CreateRefundRequest, *, now: dt.datetime
) -> tuple[models.Refund, models.Payment, models.Instalment]:
    principal = caller()
    session = uow.session
    found = await get_owned(session, models.Payment, "payment", request.id)
    await get_plan(session, decision, found.plan_id)  # the caller's data scope
    # Locks in the order payments take them: the instalment, then the payment.
    inst = await get_owned(session, models.Instalment, "instalment", found.instalment_id, lock=True)
    payment = await get_owned(session, models.Payment, "payment", found.id, lock=True)
    await session.refresh(payment)
    check = Check()
    amount = parse_decimal(check, "amount", request.amount, required=True)
    left = payment.amount - payment.refunded_amount
    if amount is not None and amount <= 0:
        check.fail("amount", "must be more than 0")
    elif amount is not None and amount > left:
        check.fail("amount", f"is more than the {left} left of this payment")
    refund_date = parse_date(check, "refund_date", request.refund_date) or now.date()
    if refund_date < payment.paid_date:
        check.fail("refund_date", "is before the payment")
    reason = request.reason.strip()
    check.required("reason", reason)
    check.length("reason", reason, max_len=2000)
    method = request.method or payment.method
    check.one_of("method", method, METHODS)
    check.length("reference", request.reference, max_len=200)
    check.done()
    assert amount is not None
    refund = models.Refund(
        id=new_id(),
        tenant_id=payment.tenant_id,
        payment_id=payment.id,
        instalment_id=inst.id,
        plan_id=payment.plan_id,
        account_id=payment.account_id,
        amount=amount,
        currency=payment.currency,
        refund_date=refund_date,
        reason=reason,
        method=method,
        reference=request.reference.strip(),
        recorded_by=principal.actor_id,
        owner_id=payment.owner_id,
    )
    session.add(refund)
    refunded_before = payment.refunded_amount
    payment.refunded_amount = refunded_before + amount
    inst.paid_amount = inst.paid_amount - amount
    settle(uow, inst, today=now.date())
    await session.flush()
    await session.refresh(refund)
    uow.emit(
        events_pb2.PaymentRefunded(
            refund=refund_pb(refund), payment=payment_pb(payment), instalment=instalment_pb(inst)
        ),
        aggregate_type="payment",
        aggregate_id=payment.id,
        aggregate_version=1,
        action="refunded",
        before={"refunded_amount": dec_str(refunded_before)},
        after={"refunded_amount": dec_str(payment.refunded_amount), "refund_id": refund.id},
    )
    return refund, payment, inst


async def list_refunds(
    session: AsyncSession, decision: Decision, request: pb.ListRefundsRequest
) -> tuple[list[models.Refund], str]:
    return await list_in_visible_plans(
        session, decision, models.Refund, request, ("plan_id", "payment_id", "account_id")
    )
