"""Merges in customers reach sales through real events: every sales reference to a merged account or contact
moves to the survivor (once, however often the event arrives), and undoing the merge moves back exactly what
the merge moved."""

from __future__ import annotations

import uuid
from typing import Any

import nats
from crm.common.v1 import event_pb2
from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc, data_quality_pb2_grpc
from crm.customers.v1 import data_quality_pb2 as dq
from crm.sales.v1 import activities_pb2 as apb
from crm.sales.v1 import contracts_pb2 as kpb
from crm.sales.v1 import events_pb2
from crm.sales.v1 import leads_pb2 as lpb
from crm.sales.v1 import pipelines_pb2 as ppb
from crm.sales.v1 import quotes_pb2 as qpb
from crm_kit.events.inbox import InboxEntry
from crm_kit.events.subjects import namespaced, subject_for
from crm_kit.testing import eventually, recorded_events
from google.protobuf import field_mask_pb2
from sqlalchemy import select, text

from tests.customers.helpers import without_default_rules
from tests.sales.helpers import payloads, team
from tests.sales.test_contracts_and_collection import accepted_quote

ACCOUNT, CONTACT = cpb.RECORD_TYPE_ACCOUNT, cpb.RECORD_TYPE_CONTACT
EVERYTHING = (
    "lead",
    "opportunity",
    "second opportunity",
    "quote",
    "order",
    "plan",
    "payment",
    "contract",
    "task",
    "follow-up",
)


async def convert(leads, rep, pipeline, *, name: str, company: str, email: str) -> lpb.ConvertLeadResponse:
    lead = (
        await leads.CreateLead(
            lpb.CreateLeadRequest(name=name, company=company, email=email), metadata=rep.md
        )
    ).lead
    return await leads.ConvertLead(
        lpb.ConvertLeadRequest(id=lead.id, pipeline_id=pipeline.id, amount="80000.00"), metadata=rep.md
    )


async def opportunity(pipelines, who, opp_id: str) -> ppb.Opportunity:
    return (await pipelines.GetOpportunity(ppb.GetOpportunityRequest(id=opp_id), metadata=who.md)).opportunity


async def events_of(service, aggregate_id: str, payload: type) -> list[tuple[event_pb2.EventEnvelope, Any]]:
    return payloads(await recorded_events(service.runtime.db, aggregate_id), payload)


async def replay_as_new_event(test_infra, customers_service, aggregate_id: str, payload: type) -> str:
    """Publish a copy of customers' last `payload` event for the aggregate under a new event id, as a replay
    from a dead-letter stream would: the inbox does not know it, so only the domain can keep it harmless."""
    ((envelope, _),) = (await events_of(customers_service, aggregate_id, payload))[-1:]
    envelope.id = str(uuid.uuid4())
    nc = await nats.connect(test_infra.nats_url)
    try:
        await nc.jetstream().publish(
            namespaced(subject_for(envelope.type), test_infra.events_namespace),
            envelope.SerializeToString(),
            headers={"Nats-Msg-Id": envelope.id},
        )
    finally:
        await nc.close()
    return envelope.id


async def handled(sales_service, event_id: str) -> bool:
    async with sales_service.runtime.db.read() as session:
        return bool(await session.scalar(select(InboxEntry.event_id).where(InboxEntry.event_id == event_id)))


async def test_a_merge_re_points_sales_once_and_its_undo_moves_back_exactly_what_it_moved(
    test_infra,
    identity,
    leads,
    pipelines,
    quotes,
    contracts,
    activities,
    customers_channel,
    sales_service,
    customers_for_sales,
):
    company, (rep,) = await team(identity, 1)
    data = data_quality_pb2_grpc.CustomersDataServiceStub(customers_channel)
    customers = customers_pb2_grpc.CustomersServiceStub(customers_channel)
    # The two conversions below make two accounts of one customer: no default rule may match them first.
    await without_default_rules(data, company.tenant.id, company.md)
    pipeline = (
        await pipelines.CreatePipeline(ppb.CreatePipelineRequest(name="直销"), metadata=company.md)
    ).pipeline
    # The same customer came in twice, as two leads converted into two accounts (each with a contact).
    dup = await convert(
        leads, rep, pipeline, name="孙丽", company="成都天府软件有限公司", email="sl@tf.example"
    )
    keep = await convert(
        leads, rep, pipeline, name="孙丽 Sun Li", company="Tianfu Software", email="s@t.example"
    )
    merged, survivor = dup.account_id, keep.account_id
    other = (
        await customers.CreateAccount(
            cpb.CreateAccountRequest(account=cpb.Account(name="重庆山城物流")), metadata=rep.md
        )
    ).account.id

    # What sales holds about the duplicate: a second opportunity, a quote → order → plan → payment, a contract,
    # a task and a follow-up record.
    second_opp = (
        await pipelines.CreateOpportunity(
            ppb.CreateOpportunityRequest(name="二期", pipeline_id=pipeline.id, account_id=merged),
            metadata=rep.md,
        )
    ).opportunity
    quote = await accepted_quote(quotes, company, merged)
    order = (
        await contracts.CreateOrder(kpb.CreateOrderRequest(quote_id=quote.id), metadata=company.md)
    ).order
    plan = (
        await contracts.CreatePaymentPlan(
            kpb.CreatePaymentPlanRequest(
                order_id=order.id,
                instalments=[
                    kpb.InstalmentInput(due_date="2030-01-31", amount="50000.00"),
                    kpb.InstalmentInput(due_date="2030-06-30", amount="53959.98"),
                ],
            ),
            metadata=company.md,
        )
    ).plan
    await contracts.CreatePayment(
        kpb.CreatePaymentRequest(instalment_id=plan.instalments[0].id, amount="20000.00"), metadata=company.md
    )
    contract = (
        await contracts.CreateContract(
            kpb.CreateContractRequest(title="软件许可合同", account_id=merged, amount="1000.00"),
            metadata=rep.md,
        )
    ).contract
    task = (
        await activities.CreateTask(
            apb.CreateTaskRequest(title="确认开票信息", related_type="account", related_id=merged),
            metadata=rep.md,
        )
    ).task
    note = (
        await activities.CreateActivity(
            apb.CreateActivityRequest(
                related_type="account", related_id=merged, kind="call", content="电话沟通"
            ),
            metadata=rep.md,
        )
    ).activity
    # Another company that happens to use the same id string is not touched. (It cannot name another
    # company's account itself any more: the row is written as data from before references were checked.)
    beta, _ = await team(identity, 0, name="Beta Ltd")
    await pipelines.CreatePipeline(ppb.CreatePipelineRequest(name="P"), metadata=beta.md)
    foreign = (
        await pipelines.CreateOpportunity(ppb.CreateOpportunityRequest(name="外部"), metadata=beta.md)
    ).opportunity
    async with sales_service.runtime.db.unit_of_work() as uow:
        await uow.session.execute(
            text("UPDATE opportunities SET account_id = :a WHERE id = :o"), {"a": merged, "o": foreign.id}
        )
    before = await opportunity(pipelines, rep, dup.opportunity_id)

    merge = (
        await data.CreateMerge(
            dq.CreateMergeRequest(record_type=ACCOUNT, survivor_id=survivor, merged_ids=[merged]),
            metadata=company.md,
        )
    ).merge

    async def moved_to(account_id: str) -> bool:
        return (await opportunity(pipelines, rep, dup.opportunity_id)).account_id == account_id

    async def accounts() -> dict[str, str]:
        """The account each sales record names now."""
        lead = (await leads.GetLead(lpb.GetLeadRequest(id=dup.lead.id), metadata=rep.md)).lead
        md = company.md
        (paid,) = (await contracts.ListPayments(kpb.ListPaymentsRequest(plan_id=plan.id), metadata=md)).items
        notes = (
            await activities.ListActivities(apb.ListActivitiesRequest(related_type="account"), metadata=md)
        ).items
        return {
            "lead": lead.converted_account_id,
            "opportunity": (await opportunity(pipelines, rep, dup.opportunity_id)).account_id,
            "second opportunity": (await opportunity(pipelines, rep, second_opp.id)).account_id,
            "quote": (await quotes.GetQuote(qpb.GetQuoteRequest(id=quote.id), metadata=md)).quote.account_id,
            "order": (
                await contracts.GetOrder(kpb.GetOrderRequest(id=order.id), metadata=md)
            ).order.account_id,
            "plan": (
                await contracts.GetPaymentPlan(kpb.GetPaymentPlanRequest(id=plan.id), metadata=md)
            ).plan.account_id,
            "payment": paid.account_id,
            "contract": (
                await contracts.GetContract(kpb.GetContractRequest(id=contract.id), metadata=md)
            ).contract.account_id,
            "task": (await activities.GetTask(apb.GetTaskRequest(id=task.id), metadata=md)).task.related_id,
            "follow-up": next(n.related_id for n in notes if n.id == note.id),
        }

    await eventually(lambda: moved_to(survivor), what="sales follows the merge")
    assert await accounts() == dict.fromkeys(EVERYTHING, survivor)
    opp = await opportunity(pipelines, rep, dup.opportunity_id)
    assert opp.version == before.version + 1 and opp.contact_id == dup.contact_id
    moved_plan = (
        await contracts.GetPaymentPlan(kpb.GetPaymentPlanRequest(id=plan.id), metadata=company.md)
    ).plan
    assert moved_plan.version == plan.version + 1
    owed = await contracts.GetReceivables(kpb.GetReceivablesRequest(id=survivor), metadata=company.md)
    assert [(t.planned, t.paid) for t in owed.totals] == [("103959.98", "20000.00")]
    assert not (
        await contracts.GetReceivables(kpb.GetReceivablesRequest(id=merged), metadata=company.md)
    ).totals
    assert (await opportunity(pipelines, beta, foreign.id)).account_id == merged

    # Each changed record tells, with the before and after of the field; the plan carries its instalments.
    ((envelope, event),) = await events_of(sales_service, opp.id, events_pb2.CustomerReferencesMoved)
    assert (event.merge_id, event.object_type, list(event.fields), event.undone) == (
        merge.id,
        "opportunity",
        ["account_id"],
        False,
    )
    assert envelope.actor.id == company.admin.id and envelope.aggregate_version == opp.version
    (change,) = envelope.changes
    assert (change.field, change.before.string_value, change.after.string_value) == (
        "account_id",
        merged,
        survivor,
    )
    ((_, plan_event),) = await events_of(sales_service, plan.id, events_pb2.CustomerReferencesMoved)
    assert sorted(plan_event.fields) == sorted(
        ["account_id"] + [f"instalments.{i.id}.account_id" for i in plan.instalments]
    )
    ((_, summary),) = await events_of(sales_service, merge.id, events_pb2.CustomerMergeFollowed)
    # lead, 2 opportunities, quote, order, plan + 2 instalments, payment, contract, task, follow-up
    assert summary.references_moved == 12 and summary.survivor_id == survivor

    # A replay of the merge event under another id moves nothing and says nothing.
    replay = await replay_as_new_event(test_infra, customers_for_sales, survivor, dq.RecordsMerged)
    await eventually(lambda: handled(sales_service, replay), what="the replay handled")
    assert (await opportunity(pipelines, rep, dup.opportunity_id)).version == opp.version
    assert len(await events_of(sales_service, merge.id, events_pb2.CustomerMergeFollowed)) == 1

    # After the merge someone files the second opportunity under another account: undo leaves that alone.
    await pipelines.UpdateOpportunity(
        ppb.UpdateOpportunityRequest(
            id=second_opp.id,
            opportunity=ppb.Opportunity(account_id=other),
            update_mask=field_mask_pb2.FieldMask(paths=["account_id"]),
        ),
        metadata=rep.md,
    )
    await data.UndoMerge(dq.UndoMergeRequest(id=merge.id), metadata=company.md)
    await eventually(lambda: moved_to(merged), what="sales follows the undo")
    assert await accounts() == {**dict.fromkeys(EVERYTHING, merged), "second opportunity": other}
    back_plan = (
        await contracts.GetPaymentPlan(kpb.GetPaymentPlanRequest(id=plan.id), metadata=company.md)
    ).plan
    assert back_plan.version == plan.version + 2
    summaries = await events_of(sales_service, merge.id, events_pb2.CustomerMergeFollowed)
    assert [(s.undone, s.references_moved) for _, s in summaries] == [(False, 12), (True, 11)]
    undo_events = await events_of(sales_service, opp.id, events_pb2.CustomerReferencesMoved)
    assert [e.undone for _, e in undo_events] == [False, True]
    (change,) = undo_events[-1][0].changes
    assert (change.before.string_value, change.after.string_value) == (survivor, merged)

    # And a replay of the undo changes nothing more.
    replay = await replay_as_new_event(test_infra, customers_for_sales, survivor, dq.MergeUndone)
    await eventually(lambda: handled(sales_service, replay), what="the replay handled")
    assert len(await events_of(sales_service, merge.id, events_pb2.CustomerMergeFollowed)) == 2


async def test_a_contact_merge_moves_converted_leads_and_opportunities_to_the_surviving_contact(
    identity, leads, pipelines, customers_channel
):
    company, (rep,) = await team(identity, 1)
    data = data_quality_pb2_grpc.CustomersDataServiceStub(customers_channel)
    pipeline = (
        await pipelines.CreatePipeline(ppb.CreatePipelineRequest(name="渠道"), metadata=company.md)
    ).pipeline
    dup = await convert(leads, rep, pipeline, name="周杰", company="深圳星河电子", email="zj@xh.example")
    keep = await convert(leads, rep, pipeline, name="周杰 Zhou", company="Xinghe Elec", email="z@x.example")
    await data.CreateMerge(
        dq.CreateMergeRequest(record_type=CONTACT, survivor_id=keep.contact_id, merged_ids=[dup.contact_id]),
        metadata=company.md,
    )

    async def followed() -> bool:
        return (await opportunity(pipelines, rep, dup.opportunity_id)).contact_id == keep.contact_id

    await eventually(followed, what="sales follows the contact merge")
    opp = await opportunity(pipelines, rep, dup.opportunity_id)
    assert opp.account_id == dup.account_id  # a contact merge leaves accounts alone
    lead = (await leads.GetLead(lpb.GetLeadRequest(id=dup.lead.id), metadata=rep.md)).lead
    assert (lead.converted_contact_id, lead.converted_account_id) == (keep.contact_id, dup.account_id)
