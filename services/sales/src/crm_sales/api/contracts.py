from __future__ import annotations

import asyncio

from crm.sales.v1 import contracts_pb2 as pb
from crm.sales.v1 import contracts_pb2_grpc
from crm_kit.db import Database
from crm_kit.errors import NotFound
from crm_kit.policy import PolicyCache

from crm_sales import pdf
from crm_sales.clock import Clock
from crm_sales.domain import approvals, collection, contracts, documents
from crm_sales.domain.common import People, authorize, caller, from_ts

SERVICE = pb.DESCRIPTOR.services_by_name["ContractsService"]


class ContractsApi(contracts_pb2_grpc.ContractsServiceServicer):
    def __init__(self, *, db: Database, policies: PolicyCache, clock: Clock, people: People):
        self.db = db
        self.policies = policies
        self.clock = clock
        self.people = people

    async def _decide(self, obj: str, action: str = "read"):  # type: ignore[no-untyped-def]
        return await self.policies.decide(caller(), obj, action)

    # ------------------------------------------------------------ contracts

    async def CreateContract(self, request, context):
        decision = await authorize(self.policies, "contract", "create")
        quote_decision = await self._decide("quote")
        async with self.db.unit_of_work() as uow:
            c = await contracts.create_contract(
                uow, decision, quote_decision, request, people=self.people, now=self.clock.now()
            )
        return pb.CreateContractResponse(contract=contracts.contract_pb(c, await self._decide("contract")))

    async def GetContract(self, request, context):
        decision = await authorize(self.policies, "contract", "read")
        async with self.db.read() as session:
            c = await contracts.get_contract(session, decision, request.id)
        return pb.GetContractResponse(contract=contracts.contract_pb(c, decision))

    async def ListContracts(self, request, context):
        decision = await authorize(self.policies, "contract", "read")
        async with self.db.read() as session:
            rows, cursor = await contracts.list_contracts(session, decision, request)
        return pb.ListContractsResponse(
            items=[contracts.contract_pb(c, decision) for c in rows], next_cursor=cursor
        )

    async def UpdateContract(self, request, context):
        decision = await authorize(self.policies, "contract", "update")
        decision.check_writable(request.update_mask.paths)
        async with self.db.unit_of_work() as uow:
            c = await contracts.update_contract(uow, decision, request)
        return pb.UpdateContractResponse(contract=contracts.contract_pb(c, await self._decide("contract")))

    async def SubmitContract(self, request, context):
        decision = await authorize(self.policies, "contract", "update")
        async with self.db.unit_of_work() as uow:
            c, approval = await contracts.submit_contract(uow, decision, request.id)
        return pb.SubmitContractResponse(
            contract=contracts.contract_pb(c, await self._decide("contract")),
            approval=approvals.approval_pb(approval, {"contract": await self._decide("contract")})
            if approval
            else None,
        )

    async def ActivateContract(self, request, context):
        decision = await authorize(self.policies, "contract", "update")
        async with self.db.unit_of_work() as uow:
            c = await contracts.activate_contract(uow, decision, request, now=self.clock.now())
        return pb.ActivateContractResponse(contract=contracts.contract_pb(c, await self._decide("contract")))

    async def TerminateContract(self, request, context):
        decision = await authorize(self.policies, "contract", "update")
        async with self.db.unit_of_work() as uow:
            c = await contracts.terminate_contract(uow, decision, request)
        return pb.TerminateContractResponse(contract=contracts.contract_pb(c, await self._decide("contract")))

    # ------------------------------------------------------------ orders

    async def CreateOrder(self, request, context):
        await authorize(self.policies, "order", "create")
        async with self.db.unit_of_work() as uow:
            o = await contracts.create_order(
                uow,
                await self._decide("quote"),
                await self._decide("contract"),
                request,
                now=self.clock.now(),
            )
        return pb.CreateOrderResponse(order=contracts.order_pb(o, await self._decide("order")))

    async def GetOrder(self, request, context):
        decision = await authorize(self.policies, "order", "read")
        async with self.db.read() as session:
            o = await contracts.get_order(session, decision, request.id)
        return pb.GetOrderResponse(order=contracts.order_pb(o, decision))

    async def ListOrders(self, request, context):
        decision = await authorize(self.policies, "order", "read")
        async with self.db.read() as session:
            rows, cursor = await contracts.list_orders(session, decision, request)
        return pb.ListOrdersResponse(
            items=[contracts.order_pb(o, decision) for o in rows], next_cursor=cursor
        )

    async def FulfilOrder(self, request, context):
        decision = await authorize(self.policies, "order", "update")
        async with self.db.unit_of_work() as uow:
            o = await contracts.close_order(uow, decision, request.id, status="fulfilled")
        return pb.FulfilOrderResponse(order=contracts.order_pb(o, decision))

    async def CancelOrder(self, request, context):
        decision = await authorize(self.policies, "order", "update")
        async with self.db.unit_of_work() as uow:
            o = await contracts.close_order(
                uow, decision, request.id, status="cancelled", reason=request.reason
            )
        return pb.CancelOrderResponse(order=contracts.order_pb(o, decision))

    # ------------------------------------------------------------ collection

    async def CreatePaymentPlan(self, request, context):
        await authorize(self.policies, "payment", "create")
        async with self.db.unit_of_work() as uow:
            plan = await contracts.create_plan(
                uow, await self._decide("order"), await self._decide("contract"), request
            )
            message = await contracts.plan_pb(uow.session, plan, await self._decide("payment"))
        return pb.CreatePaymentPlanResponse(plan=message)

    async def GetPaymentPlan(self, request, context):
        decision = await authorize(self.policies, "payment", "read")
        async with self.db.read() as session:
            plan = await contracts.get_plan(session, decision, request.id)
            return pb.GetPaymentPlanResponse(plan=await contracts.plan_pb(session, plan, decision))

    async def ListPaymentPlans(self, request, context):
        decision = await authorize(self.policies, "payment", "read")
        async with self.db.read() as session:
            rows, cursor = await contracts.list_plans(session, decision, request)
            items = [await contracts.plan_pb(session, p, decision) for p in rows]
        return pb.ListPaymentPlansResponse(items=items, next_cursor=cursor)

    async def CreatePayment(self, request, context):
        decision = await authorize(self.policies, "payment", "create")
        async with self.db.unit_of_work() as uow:
            payment, inst = await contracts.record_payment(uow, decision, request, now=self.clock.now())
        read = await self._decide("payment")
        return pb.CreatePaymentResponse(
            payment=contracts.payment_pb(payment, read), instalment=contracts.instalment_pb(inst, read)
        )

    async def ListPayments(self, request, context):
        decision = await authorize(self.policies, "payment", "read")
        async with self.db.read() as session:
            rows, cursor = await contracts.list_payments(session, decision, request)
        return pb.ListPaymentsResponse(
            items=[contracts.payment_pb(p, decision) for p in rows], next_cursor=cursor
        )

    async def GetReceivables(self, request, context):
        decision = await authorize(self.policies, "payment", "read")
        # Of an account the customers service has for the caller: any other id is a 404, not zero totals.
        if request.id and not await self.people.record_exists("account", request.id):
            raise NotFound("no such account", reason="account_not_found")
        async with self.db.read() as session:
            totals, open_rows = await contracts.receivables(
                session, decision, request.id, today=self.clock.now().date()
            )
        return pb.GetReceivablesResponse(
            account_id=request.id,
            totals=totals,
            open_instalments=[contracts.instalment_pb(i, decision) for i in open_rows],
        )

    async def RunCollectionJobs(self, request, context):
        await authorize(self.policies, "payment", "update")
        now = from_ts(request.now, request.HasField("now")) or self.clock.now()
        overdue = reminders = 0
        while True:
            async with self.db.unit_of_work() as uow:
                o, r = await contracts.run_jobs(uow, now=now, tenant_id=caller().tenant_id)
            overdue, reminders = overdue + o, reminders + r
            if o < 500 and r < 500:
                break
        return pb.RunCollectionJobsResponse(overdue=overdue, renewal_reminders=reminders)

    # ------------------------------------------------------------ re-scheduling and refunds

    async def UpdatePaymentPlan(self, request, context):
        decision = await authorize(self.policies, "payment", "update")
        async with self.db.unit_of_work() as uow:
            plan = await collection.update_plan(uow, decision, request, now=self.clock.now())
            message = await contracts.plan_pb(uow.session, plan, await self._decide("payment"))
        return pb.UpdatePaymentPlanResponse(plan=message)

    async def CreateRefund(self, request, context):
        decision = await authorize(self.policies, "payment", "update")
        async with self.db.unit_of_work() as uow:
            refund, payment, inst = await collection.refund_payment(
                uow, decision, request, now=self.clock.now()
            )
        read = await self._decide("payment")
        return pb.CreateRefundResponse(
            refund=collection.refund_pb(refund, read),
            payment=contracts.payment_pb(payment, read),
            instalment=contracts.instalment_pb(inst, read),
        )

    async def ListRefunds(self, request, context):
        decision = await authorize(self.policies, "payment", "read")
        async with self.db.read() as session:
            rows, cursor = await collection.list_refunds(session, decision, request)
        return pb.ListRefundsResponse(
            items=[collection.refund_pb(r, decision) for r in rows], next_cursor=cursor
        )

    # ------------------------------------------------------------ the contract PDF

    async def GetContractPdf(self, request, context):
        decision = await authorize(self.policies, "contract", "read")
        async with self.db.read() as session:
            document = await documents.contract_document(
                session,
                decision,
                await self._decide("quote"),
                await self._decide("payment"),
                request.id,
                request.locale,
            )
        # Rendering is CPU work: off the event loop.
        content = await asyncio.to_thread(
            pdf.render_contract,
            document.contract,
            locale=document.locale,
            letterhead=document.letterhead,
            lines=document.lines,
            instalments=document.instalments,
        )
        return pb.GetContractPdfResponse(
            content=content, content_type="application/pdf", filename=document.filename
        )
