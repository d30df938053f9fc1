"""Lead conversion through the real customers service: account + contact + opportunity, and conversion into
an existing account when the tenant's duplicate rules match."""

from __future__ import annotations

import asyncio

import grpc
from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc, data_quality_pb2, data_quality_pb2_grpc
from crm.customers.v1 import duplicates_pb2 as dup
from crm.sales.v1 import leads_pb2 as pb
from crm.sales.v1 import pipelines_pb2 as ppb
from crm_kit.errors import from_rpc_error
from sqlalchemy import text

from tests.identity.helpers import rpc_error
from tests.sales.helpers import default_pipeline, team


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
    identity, leads, pipelines, customers_channel
):
    company, _ = await team(identity, 0)
    default = await default_pipeline(pipelines, company)
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
    # No pipeline named: the company's default one.
    opp = (
        await pipelines.GetOpportunity(ppb.GetOpportunityRequest(id=converted.opportunity_id), metadata=company.md)
    ).opportunity
    assert (opp.pipeline_id, opp.account_id) == (default.id, existing.id)
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


async def _records(customers_channel, md) -> tuple[list[str], list[str]]:
    """The ids of every account and contact the tenant has at the customers service."""
    customers = customers_pb2_grpc.CustomersServiceStub(customers_channel)
    accounts = (await customers.ListAccounts(cpb.ListAccountsRequest(), metadata=md)).items
    contacts = (await customers.ListContacts(cpb.ListContactsRequest(), metadata=md)).items
    return [a.id for a in accounts], [c.id for c in contacts]


async def test_concurrent_conversions_of_one_lead_make_one_account_and_one_contact(
    identity, leads, customers_channel
):
    company, (rep,) = await team(identity, 1)
    lead = (
        await leads.CreateLead(
            pb.CreateLeadRequest(name="林峰", company="泉州林氏茶业", email="lin.feng@tea.example"),
            metadata=rep.md,
        )
    ).lead
    results = await asyncio.gather(
        *(leads.ConvertLead(pb.ConvertLeadRequest(id=lead.id), metadata=rep.md) for _ in range(6)),
        return_exceptions=True,
    )
    converted = [r for r in results if isinstance(r, pb.ConvertLeadResponse)]
    refused = [r for r in results if not isinstance(r, pb.ConvertLeadResponse)]
    assert len(converted) == 1, results
    for err in refused:
        assert isinstance(err, grpc.aio.AioRpcError), err
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
        assert from_rpc_error(err).reason in ("lead_busy", "lead_converted"), err
    accounts, contacts = await _records(customers_channel, company.md)
    assert accounts == [converted[0].account_id]
    assert contacts == [converted[0].contact_id]


async def test_a_retry_after_a_failure_past_the_remote_creates_reuses_them(
    identity, leads, customers_channel, sales_service
):
    """The conversion fails after the customers service created the account and the contact (a real database
    error when the lead is marked converted, once); the retry completes it with those same records."""
    company, (rep,) = await team(identity, 1)
    lead = (
        await leads.CreateLead(
            pb.CreateLeadRequest(name="郑洁", company="福州闽江物流", phone="13800138000"), metadata=rep.md
        )
    ).lead
    trip = f"trip_{lead.id.replace('-', '')}"
    async with sales_service.runtime.db.engine.begin() as conn:
        # A sequence, because it counts even in a transaction that rolls back: the first marking fails.
        await conn.execute(text(f"CREATE SEQUENCE {trip}_seq"))
        await conn.execute(
            text(
                f"""CREATE FUNCTION {trip}() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  IF NEW.status = 'converted' AND nextval('{trip}_seq') = 1 THEN
                    RAISE EXCEPTION 'the database failed once';
                  END IF;
                  RETURN NEW;
                END $$"""
            )
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER {trip} BEFORE UPDATE ON leads FOR EACH ROW "
                f"WHEN (NEW.id = '{lead.id}') EXECUTE FUNCTION {trip}()"
            )
        )
    try:
        err = await rpc_error(leads.ConvertLead(pb.ConvertLeadRequest(id=lead.id), metadata=rep.md))
        assert err.code() == grpc.StatusCode.INTERNAL
        accounts, contacts = await _records(customers_channel, company.md)
        assert len(accounts) == 1 and len(contacts) == 1  # made remotely before the failure
        assert (
            await leads.GetLead(pb.GetLeadRequest(id=lead.id), metadata=rep.md)
        ).lead.status == pb.LEAD_STATUS_NEW
        converted = await leads.ConvertLead(pb.ConvertLeadRequest(id=lead.id), metadata=rep.md)
        assert (converted.account_id, converted.contact_id) == (accounts[0], contacts[0])
        assert await _records(customers_channel, company.md) == (accounts, contacts)
        assert converted.lead.status == pb.LEAD_STATUS_CONVERTED
    finally:
        async with sales_service.runtime.db.engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER {trip} ON leads"))
            await conn.execute(text(f"DROP FUNCTION {trip}()"))
            await conn.execute(text(f"DROP SEQUENCE {trip}_seq"))
