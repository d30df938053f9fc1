"""Lead conversion through the real customers service: account + contact + opportunity, and conversion into
an existing account when the tenant's duplicate rules match."""

from __future__ import annotations

import grpc
from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc, data_quality_pb2, data_quality_pb2_grpc
from crm.customers.v1 import duplicates_pb2 as dup
from crm.sales.v1 import leads_pb2 as pb
from crm.sales.v1 import pipelines_pb2 as ppb
from crm_kit.errors import from_rpc_error

from tests.identity.helpers import rpc_error
from tests.sales.helpers import team


async def test_a_lead_converts_into_account_contact_and_opportunity(
    identity, leads, pipelines, customers_channel
):
    company, (rep,) = await team(identity, 1)
    customers = customers_pb2_grpc.CustomersServiceStub(customers_channel)
    pipeline = (
        await pipelines.CreatePipeline(ppb.CreatePipelineRequest(name="直销"), metadata=company.md)
    ).pipeline
    lead = (
        await leads.CreateLead(
            pb.CreateLeadRequest(
                name="孙丽", company="成都天府软件有限公司", email="sun.li@tianfu.example", title="采购经理"
            ),
            metadata=rep.md,
        )
    ).lead
    converted = await leads.ConvertLead(
        pb.ConvertLeadRequest(id=lead.id, pipeline_id=pipeline.id, amount="250000.00", currency="CNY"),
        metadata=rep.md,
    )
    assert not converted.merged_into_existing_account
    assert converted.lead.status == pb.LEAD_STATUS_CONVERTED
    assert converted.lead.converted_account_id == converted.account_id
    account = (
        await customers.GetAccount(cpb.GetAccountRequest(id=converted.account_id), metadata=rep.md)
    ).account
    contact = (
        await customers.GetContact(cpb.GetContactRequest(id=converted.contact_id), metadata=rep.md)
    ).contact
    assert account.name == "成都天府软件有限公司" and contact.name == "孙丽"
    assert list(contact.account_ids) == [account.id]
    opp = (
        await pipelines.GetOpportunity(
            ppb.GetOpportunityRequest(id=converted.opportunity_id), metadata=rep.md
        )
    ).opportunity
    assert (opp.account_id, opp.contact_id, opp.lead_id, opp.amount) == (
        account.id,
        contact.id,
        lead.id,
        "250000.00",
    )
    again = await rpc_error(leads.ConvertLead(pb.ConvertLeadRequest(id=lead.id), metadata=rep.md))
    assert from_rpc_error(again).reason == "lead_converted"
    history = (await leads.ListLeadHistory(pb.ListLeadHistoryRequest(id=lead.id), metadata=rep.md)).items
    assert history[-1].action == "converted"


async def test_a_lead_whose_company_matches_an_existing_account_converts_into_it(
    identity, leads, customers_channel
):
    company, _ = await team(identity, 0)
    customers = customers_pb2_grpc.CustomersServiceStub(customers_channel)
    data = data_quality_pb2_grpc.CustomersDataServiceStub(customers_channel)
    await data.CreateDuplicateRule(
        data_quality_pb2.CreateDuplicateRuleRequest(
            duplicate_rule=data_quality_pb2.DuplicateRule(
                name="公司名称",
                record_type=cpb.RECORD_TYPE_ACCOUNT,
                match=dup.DUPLICATE_MATCH_COMPANY_NAME,
                on_create=dup.DUPLICATE_ACTION_WARN,
                active=True,
            )
        ),
        metadata=company.md,
    )
    existing = (
        await customers.CreateAccount(
            cpb.CreateAccountRequest(account=cpb.Account(name="华为技术有限公司")), metadata=company.md
        )
    ).account
    lead = (
        await leads.CreateLead(
            pb.CreateLeadRequest(name="王强", company="华为技术有限公司"), metadata=company.md
        )
    ).lead
    converted = await leads.ConvertLead(pb.ConvertLeadRequest(id=lead.id), metadata=company.md)
    assert converted.merged_into_existing_account and converted.account_id == existing.id
    assert converted.opportunity_id == ""
    contacts = (
        await customers.ListContacts(cpb.ListContactsRequest(account_id=existing.id), metadata=company.md)
    ).items
    assert [c.name for c in contacts] == ["王强"]
    err = await rpc_error(
        leads.ConvertLead(pb.ConvertLeadRequest(id=lead.id, account_id=existing.id), metadata=company.md)
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_rep_without_account_rights_gets_the_customers_services_403_not_a_500(identity, leads):
    from crm.identity.v1 import identity_pb2 as ipb

    only_leads = [
        ipb.Permission(object="lead", actions=["create", "read", "update"], data_scope=ipb.DATA_SCOPE_OWN)
    ]
    _, (rep,) = await team(identity, 1, permissions=only_leads)
    lead = (
        await leads.CreateLead(pb.CreateLeadRequest(name="周敏", company="厦门海蓝贸易"), metadata=rep.md)
    ).lead
    err = await rpc_error(leads.ConvertLead(pb.ConvertLeadRequest(id=lead.id), metadata=rep.md))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    still = (await leads.GetLead(pb.GetLeadRequest(id=lead.id), metadata=rep.md)).lead
    assert still.status == pb.LEAD_STATUS_NEW
