"""Collection after the plan is made: re-scheduling a payment plan (add, change, remove instalments; the total
stays; paid money is never orphaned) and refunds (the instalment owes the money again, receivables and overdue
follow), all in exact decimals and each an event."""

from __future__ import annotations

import datetime as dt

import grpc
from crm.sales.v1 import contracts_pb2 as cpb
from crm.sales.v1 import events_pb2
from crm_kit.errors import from_rpc_error

from tests.identity.helpers import rpc_error
from tests.sales.helpers import new_account, payloads, team


async def contract_plan(
    contracts, who, amount: str, instalments: list[tuple[str, str]], account_id: str = ""
):
    c = (
        await contracts.CreateContract(
            cpb.CreateContractRequest(title="维保合同", account_id=account_id, amount=amount), metadata=who.md
        )
    ).contract
    await contracts.SubmitContract(cpb.SubmitContractRequest(id=c.id), metadata=who.md)
    return (
        await contracts.CreatePaymentPlan(
            cpb.CreatePaymentPlanRequest(
                contract_id=c.id,
                instalments=[cpb.InstalmentInput(due_date=d, amount=a) for d, a in instalments],
            ),
            metadata=who.md,
        )
    ).plan


def change(instalment_id: str, due_date: str, amount: str) -> cpb.InstalmentChange:
    return cpb.InstalmentChange(id=instalment_id, due_date=due_date, amount=amount)


async def reschedule(contracts, who, plan_id: str, *changes: cpb.InstalmentChange, version: int = 0):
    return (
        await contracts.UpdatePaymentPlan(
            cpb.UpdatePaymentPlanRequest(id=plan_id, instalments=list(changes), expected_version=version),
            metadata=who.md,
        )
    ).plan


async def refused(call) -> tuple[grpc.StatusCode, str, list[str]]:
    details = from_rpc_error(await rpc_error(call))
    return details.code, details.reason, [f.field for f in details.field_errors]


async def rejected(contracts, who, plan_id: str, *changes: cpb.InstalmentChange, version: int = 0):
    """How a re-schedule that must fail was refused: (code, reason, fields)."""
    return await refused(
        contracts.UpdatePaymentPlan(
            cpb.UpdatePaymentPlanRequest(id=plan_id, instalments=list(changes), expected_version=version),
            metadata=who.md,
        )
    )


async def test_a_plan_is_rescheduled_while_not_paid_without_changing_its_total_or_losing_payments(
    identity, contracts, clock, outbox
):
    company, _ = await team(identity, 0)
    plan = await contract_plan(
        contracts,
        company,
        "1000.00",
        [("2030-01-31", "300.00"), ("2030-02-28", "300.00"), ("2030-03-31", "400.00")],
    )
    first, second, third = plan.instalments
    await contracts.CreatePayment(
        cpb.CreatePaymentRequest(instalment_id=first.id, amount="100.00"), metadata=company.md
    )

    # What cannot be: below what was paid, removing a paid-on instalment, another total, ids not of this plan.
    assert await rejected(
        contracts,
        company,
        plan.id,
        change(first.id, "2030-01-31", "99.99"),
        change(second.id, "2030-02-28", "500.01"),
        change(third.id, "2030-03-31", "400.00"),
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "validation_failed", ["instalments[0].amount"])
    removed_paid = await rejected(
        contracts,
        company,
        plan.id,
        change(second.id, "2030-02-28", "600.00"),
        change("", "2030-03-31", "400.00"),
    )
    assert removed_paid[2] == ["instalments"]
    one_cent_short = await rejected(
        contracts,
        company,
        plan.id,
        change(first.id, "2030-01-31", "300.00"),
        change(second.id, "2030-02-28", "300.00"),
        change(third.id, "2030-03-31", "399.99"),
    )
    assert one_cent_short[2] == ["instalments"]
    other = await contract_plan(contracts, company, "5.00", [("2030-01-01", "5.00")])
    not_these = await rejected(
        contracts,
        company,
        plan.id,
        change(first.id, "2030-01-31", "300.00"),
        change(other.instalments[0].id, "2030-02-28", "300.00"),
        change(first.id, "2030-03-31", "0.001"),
        change("", "", "400.00"),
    )
    assert not_these[2] == [
        "instalments[1].id",
        "instalments[2].id",
        "instalments[2].amount",
        "instalments[3].due_date",
    ]

    # Change the first (still above what was paid), move the second, drop the third, add two.
    updated = await reschedule(
        contracts,
        company,
        plan.id,
        change(first.id, "2030-01-31", "200.00"),
        change(second.id, "2030-04-30", "300.00"),
        change("", "2030-02-15", "249.99"),
        change("", "2030-05-31", "250.01"),
        version=plan.version,
    )
    assert updated.version == plan.version + 1 and updated.total == "1000.00"
    assert [(i.sequence, i.due_date, i.amount, i.paid_amount) for i in updated.instalments] == [
        (1, "2030-01-31", "200.00", "100.00"),
        (2, "2030-02-15", "249.99", "0.00"),
        (3, "2030-04-30", "300.00", "0.00"),
        (4, "2030-05-31", "250.01", "0.00"),
    ]
    assert updated.instalments[0].id == first.id and updated.instalments[2].id == second.id
    ((envelope, event),) = payloads(await outbox(plan.id), events_pb2.PaymentPlanUpdated)
    assert list(event.removed_instalment_ids) == [third.id] and envelope.aggregate_version == updated.version
    (changed,) = envelope.changes
    assert changed.field == "instalments" and len(changed.before.list_value.values) == 3
    stale = await rejected(
        contracts, company, plan.id, change(first.id, "2030-01-31", "1000.00"), version=plan.version
    )
    assert stale[0] == grpc.StatusCode.ABORTED

    # An instalment moved into the past is overdue at once; moved out again, it is not.
    today = clock.now().date()
    yesterday, later = str(today - dt.timedelta(days=1)), str(today + dt.timedelta(days=30))
    keep = [change(i.id, i.due_date, i.amount) for i in updated.instalments[1:]]
    past = await reschedule(contracts, company, plan.id, change(first.id, yesterday, "200.00"), *keep)
    assert past.instalments[0].status == cpb.INSTALMENT_STATUS_OVERDUE
    overdue = payloads(await outbox(first.id), events_pb2.InstalmentOverdue)
    assert len(overdue) == 1
    moved = await reschedule(contracts, company, plan.id, change(first.id, later, "200.00"), *keep)
    (back,) = [i for i in moved.instalments if i.id == first.id]
    assert back.status == cpb.INSTALMENT_STATUS_PARTIALLY_PAID

    # Paid in full, a plan no longer changes; another company's plan is not found.
    await contracts.CreatePayment(
        cpb.CreatePaymentRequest(instalment_id=other.instalments[0].id, amount="5.00"), metadata=company.md
    )
    paid_up = await rejected(
        contracts, company, other.id, change(other.instalments[0].id, "2031-01-01", "5.00")
    )
    assert paid_up[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "payment_plan_paid")
    beta, _ = await team(identity, 0, name="Beta Ltd")
    elsewhere = await rejected(contracts, beta, plan.id, change("", "2030-01-01", "1000.00"))
    assert elsewhere[0] == grpc.StatusCode.NOT_FOUND


async def test_a_refund_makes_the_instalment_owe_the_money_again_and_receivables_follow(
    identity, contracts, clock, outbox, customers_channel
):
    company, _ = await team(identity, 0)
    account = await new_account(customers_channel, company.md)
    plan = await contract_plan(
        contracts, company, "1000.00", [("2020-01-31", "500.00"), ("2099-01-31", "500.00")], account
    )
    due, later = plan.instalments
    paid = await contracts.CreatePayment(
        cpb.CreatePaymentRequest(
            instalment_id=due.id, amount="500.00", paid_date="2020-01-20", method="alipay"
        ),
        metadata=company.md,
    )
    assert paid.instalment.status == cpb.INSTALMENT_STATUS_PAID
    payment = paid.payment

    assert await refused(
        contracts.CreateRefund(
            cpb.CreateRefundRequest(id=payment.id, amount="500.01", refund_date="2020-01-19"),
            metadata=company.md,
        )
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "validation_failed", ["amount", "refund_date", "reason"])
    refunded = await contracts.CreateRefund(
        cpb.CreateRefundRequest(
            id=payment.id, amount="199.99", reason="部分货物退回", reference="退款单 R-001"
        ),
        metadata=company.md,
    )
    r = refunded.refund
    assert (r.amount, r.currency, r.method, r.account_id, r.plan_id, r.instalment_id) == (
        "199.99",
        "CNY",
        "alipay",
        account,
        plan.id,
        due.id,
    )
    assert r.refund_date == str(clock.now().date()) and r.recorded_by == company.admin.id
    assert (refunded.payment.amount, refunded.payment.refunded_amount) == ("500.00", "199.99")
    # Past due and no longer paid in full: overdue at once.
    inst = refunded.instalment
    assert (inst.paid_amount, inst.outstanding_amount, inst.status) == (
        "300.01",
        "199.99",
        cpb.INSTALMENT_STATUS_OVERDUE,
    )
    owed = await contracts.GetReceivables(cpb.GetReceivablesRequest(id=account), metadata=company.md)
    (cny,) = owed.totals
    assert (cny.planned, cny.paid, cny.outstanding, cny.overdue, cny.refunded) == (
        "1000.00",
        "300.01",
        "699.99",
        "199.99",
        "199.99",
    )
    assert [i.id for i in owed.open_instalments] == [due.id, later.id]
    ((envelope, event),) = payloads(await outbox(payment.id), events_pb2.PaymentRefunded)
    assert event.refund.id == r.id and event.instalment.status == cpb.INSTALMENT_STATUS_OVERDUE
    assert {c.field: (c.before.string_value, c.after.string_value) for c in envelope.changes}[
        "refunded_amount"
    ] == ("0.00", "199.99")
    assert len(payloads(await outbox(due.id), events_pb2.InstalmentOverdue)) == 1

    # At most what is left of the payment; the rest can go back too.
    over = await refused(
        contracts.CreateRefund(
            cpb.CreateRefundRequest(id=payment.id, amount="300.02", reason="x"), metadata=company.md
        )
    )
    assert over[2] == ["amount"]
    rest = await contracts.CreateRefund(
        cpb.CreateRefundRequest(
            id=payment.id, amount="300.01", reason="全部退款", method="bank_transfer"
        ),
        metadata=company.md,
    )
    assert (rest.payment.refunded_amount, rest.instalment.paid_amount) == ("500.00", "0.00")
    # A refund on an instalment not yet due leaves it pending, not overdue.
    on_later = await contracts.CreatePayment(
        cpb.CreatePaymentRequest(instalment_id=later.id, amount="100.00"), metadata=company.md
    )
    back = await contracts.CreateRefund(
        cpb.CreateRefundRequest(id=on_later.payment.id, amount="100.00", reason="重复付款"),
        metadata=company.md,
    )
    assert back.instalment.status == cpb.INSTALMENT_STATUS_PENDING

    listed = await contracts.ListRefunds(cpb.ListRefundsRequest(payment_id=payment.id), metadata=company.md)
    assert sorted(x.amount for x in listed.items) == ["199.99", "300.01"]
    by_account = await contracts.ListRefunds(cpb.ListRefundsRequest(account_id=account), metadata=company.md)
    assert len(by_account.items) == 3
    # An instalment with payments keeps them, even when all was paid back.
    kept_payments = await rejected(contracts, company, plan.id, change(later.id, "2099-01-31", "1000.00"))
    assert kept_payments[2] == ["instalments"]

    beta, _ = await team(identity, 0, name="Beta Ltd")
    assert (
        await refused(
            contracts.CreateRefund(
                cpb.CreateRefundRequest(id=payment.id, amount="1.00", reason="x"), metadata=beta.md
            )
        )
    )[0] == grpc.StatusCode.NOT_FOUND
    assert not (await contracts.ListRefunds(cpb.ListRefundsRequest(), metadata=beta.md)).items
