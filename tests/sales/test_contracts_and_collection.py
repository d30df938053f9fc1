"""Contracts with approval and renewal reminders, orders from accepted quotes, payment plans, partial payments,
overdue detection and receivables per account."""

from __future__ import annotations

import datetime as dt

import grpc
from crm.sales.v1 import contracts_pb2 as cpb
from crm.sales.v1 import quotes_pb2 as qpb
from crm_kit.errors import from_rpc_error
from google.protobuf import field_mask_pb2, timestamp_pb2

from tests.identity.helpers import rpc_error
from tests.sales.helpers import new_account, team
from tests.sales.test_quotes import catalog


def at(day: dt.date) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(dt.datetime.combine(day, dt.time(9), dt.UTC))
    return out


async def accepted_quote(quotes, company, account_id: str) -> qpb.Quote:
    server, _, book = await catalog(quotes, company)
    q = (
        await quotes.CreateQuote(
            qpb.CreateQuoteRequest(
                account_id=account_id,
                customer_name="上海远景能源有限公司",
                price_book_id=book.id,
                lines=[qpb.QuoteLineInput(product_id=server.id, quantity="2")],
            ),
            metadata=company.md,
        )
    ).quote
    await quotes.SubmitQuote(qpb.SubmitQuoteRequest(id=q.id), metadata=company.md)
    return (await quotes.AcceptQuote(qpb.AcceptQuoteRequest(id=q.id), metadata=company.md)).quote


async def test_an_accepted_quote_becomes_an_order_paid_in_instalments_with_partial_payments(
    identity, quotes, contracts, clock, customers_channel
):
    company, _ = await team(identity, 0)
    account = await new_account(customers_channel, company.md)
    q = await accepted_quote(quotes, company, account)
    assert q.total == "103959.98"  # 2 × 45999.99 + 13 % tax
    order = (await contracts.CreateOrder(cpb.CreateOrderRequest(quote_id=q.id), metadata=company.md)).order
    assert (order.total, order.currency, order.account_id, len(order.lines)) == (
        "103959.98",
        "CNY",
        account,
        1,
    )
    again = await rpc_error(contracts.CreateOrder(cpb.CreateOrderRequest(quote_id=q.id), metadata=company.md))
    assert from_rpc_error(again).reason == "order_exists"

    today = clock.now().date()
    wrong = await rpc_error(
        contracts.CreatePaymentPlan(
            cpb.CreatePaymentPlanRequest(
                order_id=order.id,
                instalments=[
                    cpb.InstalmentInput(due_date=str(today + dt.timedelta(days=30)), amount="31187.99"),
                    cpb.InstalmentInput(due_date=str(today + dt.timedelta(days=60)), amount="72771.98"),
                ],
            ),
            metadata=company.md,
        )
    )
    assert [f.field for f in from_rpc_error(wrong).field_errors] == ["instalments"]  # one cent short
    plan = (
        await contracts.CreatePaymentPlan(
            cpb.CreatePaymentPlanRequest(
                order_id=order.id,
                instalments=[
                    cpb.InstalmentInput(due_date=str(today + dt.timedelta(days=60)), amount="72771.99"),
                    cpb.InstalmentInput(due_date=str(today + dt.timedelta(days=30)), amount="31187.99"),
                ],
            ),
            metadata=company.md,
        )
    ).plan
    first, second = plan.instalments
    assert (first.sequence, first.amount, second.amount) == (1, "31187.99", "72771.99")

    for amount in ("10000.00", "0.99"):
        paid = await contracts.CreatePayment(
            cpb.CreatePaymentRequest(
                instalment_id=first.id, amount=amount, method="bank_transfer", reference="招行回单"
            ),
            metadata=company.md,
        )
    assert paid.instalment.status == cpb.INSTALMENT_STATUS_PARTIALLY_PAID
    assert (paid.instalment.paid_amount, paid.instalment.outstanding_amount) == ("10000.99", "21187.00")
    over = await rpc_error(
        contracts.CreatePayment(
            cpb.CreatePaymentRequest(instalment_id=first.id, amount="21187.01"), metadata=company.md
        )
    )
    assert [f.field for f in from_rpc_error(over).field_errors] == ["amount"]
    done = await contracts.CreatePayment(
        cpb.CreatePaymentRequest(instalment_id=first.id, amount="21187.00", method="alipay"),
        metadata=company.md,
    )
    assert done.instalment.status == cpb.INSTALMENT_STATUS_PAID
    payments = (
        await contracts.ListPayments(cpb.ListPaymentsRequest(plan_id=plan.id), metadata=company.md)
    ).items
    assert sorted(p.amount for p in payments) == ["0.99", "10000.00", "21187.00"]

    # Sixty-one days on, the second instalment is overdue: the job marks it once, receivables show it.
    later = today + dt.timedelta(days=61)
    run = await contracts.RunCollectionJobs(cpb.RunCollectionJobsRequest(now=at(later)), metadata=company.md)
    assert run.overdue == 1
    run = await contracts.RunCollectionJobs(cpb.RunCollectionJobsRequest(now=at(later)), metadata=company.md)
    assert run.overdue == 0
    clock.advance(days=61)
    owed = await contracts.GetReceivables(cpb.GetReceivablesRequest(id=account), metadata=company.md)
    (cny,) = owed.totals
    assert (cny.planned, cny.paid, cny.outstanding, cny.overdue) == (
        "103959.98",
        "31187.99",
        "72771.99",
        "72771.99",
    )
    (open_one,) = owed.open_instalments
    assert open_one.id == second.id and open_one.status == cpb.INSTALMENT_STATUS_OVERDUE


async def test_a_contract_goes_through_approval_activation_and_a_renewal_reminder(
    identity, quotes, contracts
):
    company, (rep, manager) = await team(identity, 2)
    await quotes.UpdateApprovalPolicy(
        qpb.UpdateApprovalPolicyRequest(
            policy=qpb.ApprovalPolicy(steps=[qpb.ApprovalStep(approver_ids=[manager.id])]),
            update_mask=field_mask_pb2.FieldMask(paths=["steps"]),
        ),
        metadata=company.md,
    )
    start = dt.date(2027, 1, 1)
    c = (
        await contracts.CreateContract(
            cpb.CreateContractRequest(
                title="年度服务合同",
                customer_name="杭州青山制造",
                amount="360000.00",
                currency="CNY",
                start_date=str(start),
                end_date=str(dt.date(2027, 12, 31)),
                renewal_reminder_days=60,
            ),
            metadata=rep.md,
        )
    ).contract
    assert c.number.startswith("C-") and c.status == cpb.CONTRACT_STATUS_DRAFT
    bad = await rpc_error(
        contracts.CreateContract(
            cpb.CreateContractRequest(amount="1.001", start_date="2027-02-01", end_date="2027-01-01"),
            metadata=rep.md,
        )
    )
    assert {f.field for f in from_rpc_error(bad).field_errors} == {"amount", "end_date"}

    submitted = await contracts.SubmitContract(cpb.SubmitContractRequest(id=c.id), metadata=rep.md)
    assert submitted.contract.status == cpb.CONTRACT_STATUS_PENDING_APPROVAL
    early = await rpc_error(contracts.ActivateContract(cpb.ActivateContractRequest(id=c.id), metadata=rep.md))
    assert from_rpc_error(early).reason == "contract_not_approved"
    await quotes.ApproveApproval(
        qpb.ApproveApprovalRequest(id=submitted.approval.id, comment="条款已审"), metadata=manager.md
    )
    active = (
        await contracts.ActivateContract(
            cpb.ActivateContractRequest(id=c.id, signed_date="2026-12-20"), metadata=rep.md
        )
    ).contract
    assert active.status == cpb.CONTRACT_STATUS_ACTIVE and active.signed_date == "2026-12-20"

    run = await contracts.RunCollectionJobs(
        cpb.RunCollectionJobsRequest(now=at(dt.date(2027, 10, 31))), metadata=company.md
    )
    assert run.renewal_reminders == 0
    run = await contracts.RunCollectionJobs(
        cpb.RunCollectionJobsRequest(now=at(dt.date(2027, 11, 1))), metadata=company.md
    )
    assert run.renewal_reminders == 1
    again = await contracts.RunCollectionJobs(
        cpb.RunCollectionJobsRequest(now=at(dt.date(2027, 11, 2))), metadata=company.md
    )
    assert again.renewal_reminders == 0
    reminded = (await contracts.GetContract(cpb.GetContractRequest(id=c.id), metadata=rep.md)).contract
    assert reminded.renewal_reminded_at.seconds

    order = (await contracts.CreateOrder(cpb.CreateOrderRequest(contract_id=c.id), metadata=rep.md)).order
    assert (order.total, order.contract_id) == ("360000.00", c.id)
    plan = (
        await contracts.CreatePaymentPlan(
            cpb.CreatePaymentPlanRequest(
                contract_id=c.id,
                instalments=[
                    cpb.InstalmentInput(due_date=f"2027-{m:02d}-01", amount="30000.00") for m in range(1, 13)
                ],
            ),
            metadata=rep.md,
        )
    ).plan
    assert len(plan.instalments) == 12 and plan.total == "360000.00"


async def test_another_tenants_contracts_orders_and_plans_are_not_found(identity, quotes, contracts):
    alpha, _ = await team(identity, 0)
    beta, _ = await team(identity, 0, name="Gamma Inc")
    q = await accepted_quote(quotes, alpha, "")
    order = (await contracts.CreateOrder(cpb.CreateOrderRequest(quote_id=q.id), metadata=alpha.md)).order
    plan = (
        await contracts.CreatePaymentPlan(
            cpb.CreatePaymentPlanRequest(
                order_id=order.id,
                instalments=[cpb.InstalmentInput(due_date="2027-01-01", amount=order.total)],
            ),
            metadata=alpha.md,
        )
    ).plan
    for call in (
        contracts.GetOrder(cpb.GetOrderRequest(id=order.id), metadata=beta.md),
        contracts.GetPaymentPlan(cpb.GetPaymentPlanRequest(id=plan.id), metadata=beta.md),
        contracts.CreatePayment(
            cpb.CreatePaymentRequest(instalment_id=plan.instalments[0].id, amount="1"), metadata=beta.md
        ),
        contracts.CreateOrder(cpb.CreateOrderRequest(quote_id=q.id), metadata=beta.md),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND


async def test_an_unpaid_order_is_cancelled_with_a_reason_once(identity, quotes, contracts):
    company, _ = await team(identity, 0)
    q = await accepted_quote(quotes, company, "")
    order = (await contracts.CreateOrder(cpb.CreateOrderRequest(quote_id=q.id), metadata=company.md)).order
    no_reason = await rpc_error(
        contracts.CancelOrder(cpb.CancelOrderRequest(id=order.id), metadata=company.md)
    )
    assert [f.field for f in from_rpc_error(no_reason).field_errors] == ["reason"]
    cancelled = (
        await contracts.CancelOrder(
            cpb.CancelOrderRequest(id=order.id, reason="客户预算冻结"), metadata=company.md
        )
    ).order
    assert cancelled.status == cpb.ORDER_STATUS_CANCELLED
    twice = await rpc_error(contracts.FulfilOrder(cpb.FulfilOrderRequest(id=order.id), metadata=company.md))
    assert from_rpc_error(twice).reason == "order_closed"


async def test_a_paid_order_is_cancelled_only_once_the_money_went_back(identity, quotes, contracts):
    company, _ = await team(identity, 0)
    q = await accepted_quote(quotes, company, "")
    order = (await contracts.CreateOrder(cpb.CreateOrderRequest(quote_id=q.id), metadata=company.md)).order
    plan = (
        await contracts.CreatePaymentPlan(
            cpb.CreatePaymentPlanRequest(
                order_id=order.id,
                instalments=[cpb.InstalmentInput(due_date="2099-01-31", amount=order.total)],
            ),
            metadata=company.md,
        )
    ).plan
    paid = await contracts.CreatePayment(
        cpb.CreatePaymentRequest(instalment_id=plan.instalments[0].id, amount="1000.00"), metadata=company.md
    )
    cancel = cpb.CancelOrderRequest(id=order.id, reason="客户取消订单")
    refused = await rpc_error(contracts.CancelOrder(cancel, metadata=company.md))
    assert from_rpc_error(refused).reason == "order_paid"
    await contracts.CreateRefund(
        cpb.CreateRefundRequest(id=paid.payment.id, amount="999.99", reason="部分退款"),
        metadata=company.md,
    )
    still = await rpc_error(contracts.CancelOrder(cancel, metadata=company.md))
    assert from_rpc_error(still).reason == "order_paid"  # one cent is still the customer's
    await contracts.CreateRefund(
        cpb.CreateRefundRequest(id=paid.payment.id, amount="0.01", reason="全部退款"),
        metadata=company.md,
    )
    cancelled = (await contracts.CancelOrder(cancel, metadata=company.md)).order
    assert cancelled.status == cpb.ORDER_STATUS_CANCELLED
