"""A reference names a record that exists in the caller's company: a task's or follow-up's `related_id`
(sales' leads, opportunities, quotes, contracts, orders; the customers service's accounts and contacts), the
people a task mentions, a pool's members and managers, an opportunity's account, contact, team and followers, a
quote's and a contract's account; anything else (a made-up id, another company's record) is a 422 naming the
field. The receivables of an account the caller's company does not have are a 404, not zero totals."""

from __future__ import annotations

import uuid

import grpc
from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.sales.v1 import activities_pb2 as apb
from crm.sales.v1 import contracts_pb2 as kpb
from crm.sales.v1 import leads_pb2 as lpb
from crm.sales.v1 import pipelines_pb2 as ppb
from crm.sales.v1 import quotes_pb2 as qpb
from crm_kit.errors import from_rpc_error

from tests.identity.helpers import rpc_error
from tests.sales.helpers import default_pipeline, team


async def _refused(call, *fields: str) -> None:
    err = await rpc_error(call)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert [f.field for f in from_rpc_error(err).field_errors] == list(fields), err.details()


async def _account(customers_channel, company, name: str) -> str:
    customers = customers_pb2_grpc.CustomersServiceStub(customers_channel)
    made = await customers.CreateAccount(
        cpb.CreateAccountRequest(account=cpb.Account(name=name)), metadata=company.md
    )
    return made.account.id


async def _contact(customers_channel, company, name: str) -> str:
    customers = customers_pb2_grpc.CustomersServiceStub(customers_channel)
    made = await customers.CreateContact(
        cpb.CreateContactRequest(contact=cpb.Contact(name=name)), metadata=company.md
    )
    return made.contact.id


async def test_a_task_or_follow_up_is_about_a_record_that_exists(
    identity, activities, leads, customers_channel
):
    company, _ = await team(identity, 0, name="青岛海湾化工有限公司")
    other, _ = await team(identity, 0, name="大连港湾物流有限公司")
    theirs = await _account(customers_channel, other, "大连港湾物流有限公司")
    mine = await _account(customers_channel, company, "青岛海湾化工有限公司")
    contact = await _contact(customers_channel, company, "刘洋")
    lead = (await leads.CreateLead(lpb.CreateLeadRequest(name="刘洋"), metadata=company.md)).lead
    made_up = str(uuid.uuid4())
    for related_type, related_id in (
        ("account", made_up),
        ("account", theirs),
        ("contact", made_up),
        ("lead", made_up),
        ("opportunity", made_up),
        ("quote", made_up),
        ("contract", made_up),
        ("order", made_up),
        ("account", lead.id),  # a lead's id is no account
    ):
        await _refused(
            activities.CreateTask(
                apb.CreateTaskRequest(title="回访", related_type=related_type, related_id=related_id),
                metadata=company.md,
            ),
            "related_id",
        )
        await _refused(
            activities.CreateActivity(
                apb.CreateActivityRequest(related_type=related_type, related_id=related_id, content="电话"),
                metadata=company.md,
            ),
            "related_id",
        )
    for related_type, related_id in (("account", mine), ("contact", contact), ("lead", lead.id)):
        task = await activities.CreateTask(
            apb.CreateTaskRequest(title="回访", related_type=related_type, related_id=related_id),
            metadata=company.md,
        )
        assert task.task.related_id == related_id
        note = await activities.CreateActivity(
            apb.CreateActivityRequest(related_type=related_type, related_id=related_id, content="电话"),
            metadata=company.md,
        )
        assert note.activity.related_id == related_id


async def test_mentions_and_pool_members_are_users_of_the_company(identity, activities, leads):
    company, (rep,) = await team(identity, 1, name="厦门鹭岛电子有限公司")
    _, (stranger,) = await team(identity, 1, name="福州榕城电子有限公司")
    made_up = str(uuid.uuid4())
    for bad in (made_up, stranger.id):
        await _refused(
            activities.CreateTask(
                apb.CreateTaskRequest(title="看一下", mentioned_user_ids=[rep.id, bad]), metadata=company.md
            ),
            "mentioned_user_ids[1]",
        )
        await _refused(
            activities.CreateActivity(
                apb.CreateActivityRequest(
                    related_type="lead",
                    related_id=(
                        await leads.CreateLead(lpb.CreateLeadRequest(name="张伟"), metadata=company.md)
                    ).lead.id,
                    content="@同事",
                    mentioned_user_ids=[bad],
                ),
                metadata=company.md,
            ),
            "mentioned_user_ids[0]",
        )
        await _refused(
            leads.CreateLeadPool(
                lpb.CreateLeadPoolRequest(name="公海", member_ids=[rep.id, bad]), metadata=company.md
            ),
            "member_ids[1]",
        )
        await _refused(
            leads.CreateLeadPool(
                lpb.CreateLeadPoolRequest(name="公海", manager_ids=[bad]), metadata=company.md
            ),
            "manager_ids[0]",
        )
    task = (
        await activities.CreateTask(
            apb.CreateTaskRequest(title="看一下", mentioned_user_ids=[rep.id]), metadata=company.md
        )
    ).task
    await _refused(
        activities.UpdateTask(
            apb.UpdateTaskRequest(
                id=task.id,
                task=apb.Task(mentioned_user_ids=[rep.id, made_up]),
                update_mask={"paths": ["mentioned_user_ids"]},
            ),
            metadata=company.md,
        ),
        "mentioned_user_ids[1]",
    )
    pool = (
        await leads.CreateLeadPool(
            lpb.CreateLeadPoolRequest(name="公海", member_ids=[rep.id]), metadata=company.md
        )
    ).pool
    await _refused(
        leads.UpdateLeadPool(
            lpb.UpdateLeadPoolRequest(
                id=pool.id,
                pool=lpb.LeadPool(member_ids=[rep.id, stranger.id]),
                update_mask={"paths": ["member_ids"]},
            ),
            metadata=company.md,
        ),
        "member_ids[1]",
    )


async def test_an_opportunity_quote_and_contract_name_an_account_and_contact_that_exist(
    identity, pipelines, quotes, contracts, customers_channel
):
    company, (rep,) = await team(identity, 1, name="昆明春城茶业有限公司")
    other, _ = await team(identity, 0, name="贵阳林城茶业有限公司")
    theirs = await _account(customers_channel, other, "贵阳林城茶业有限公司")
    await default_pipeline(pipelines, company)
    made_up = str(uuid.uuid4())
    for field, value in (("account_id", made_up), ("account_id", theirs), ("contact_id", made_up)):
        await _refused(
            pipelines.CreateOpportunity(
                ppb.CreateOpportunityRequest(name="一期", **{field: value}), metadata=company.md
            ),
            field,
        )
        await _refused(
            quotes.CreateQuote(qpb.CreateQuoteRequest(title="报价", **{field: value}), metadata=company.md),
            field,
        )
    await _refused(
        pipelines.CreateOpportunity(
            ppb.CreateOpportunityRequest(name="一期", team_member_ids=[rep.id, made_up]), metadata=company.md
        ),
        "team_member_ids[1]",
    )
    await _refused(
        pipelines.CreateOpportunity(
            ppb.CreateOpportunityRequest(name="一期", lead_id=made_up), metadata=company.md
        ),
        "lead_id",
    )
    for field, value in (("account_id", theirs), ("opportunity_id", made_up)):
        await _refused(
            contracts.CreateContract(
                kpb.CreateContractRequest(title="合同", amount="100.00", **{field: value}),
                metadata=company.md,
            ),
            field,
        )
    account = await _account(customers_channel, company, "昆明春城茶业有限公司")
    opp = (
        await pipelines.CreateOpportunity(
            ppb.CreateOpportunityRequest(name="一期", account_id=account, team_member_ids=[rep.id]),
            metadata=company.md,
        )
    ).opportunity
    assert opp.account_id == account
    await _refused(
        pipelines.UpdateOpportunity(
            ppb.UpdateOpportunityRequest(
                id=opp.id,
                opportunity=ppb.Opportunity(account_id=theirs),
                update_mask={"paths": ["account_id"]},
            ),
            metadata=company.md,
        ),
        "account_id",
    )


async def test_the_receivables_of_an_unknown_account_are_not_found(identity, contracts, customers_channel):
    company, _ = await team(identity, 0, name="南宁绿城糖业有限公司")
    other, _ = await team(identity, 0, name="柳州龙城糖业有限公司")
    theirs = await _account(customers_channel, other, "柳州龙城糖业有限公司")
    for account_id in (str(uuid.uuid4()), theirs, "not-an-id"):
        err = await rpc_error(
            contracts.GetReceivables(kpb.GetReceivablesRequest(id=account_id), metadata=company.md)
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
    mine = await _account(customers_channel, company, "南宁绿城糖业有限公司")
    owed = await contracts.GetReceivables(kpb.GetReceivablesRequest(id=mine), metadata=company.md)
    assert owed.account_id == mine and not owed.totals
