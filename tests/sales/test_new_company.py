"""A new company works on day one: with no set-up at all, a converted lead becomes an opportunity in the
default pipeline sales made for it, and the defaults (pipeline, duplicate rules) are in the company's language;
all of it editable, each piece an audited event, set up once however often the event comes."""

from __future__ import annotations

from crm.common.v1 import event_pb2
from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import data_quality_pb2 as dq
from crm.customers.v1 import data_quality_pb2_grpc
from crm.customers.v1 import duplicates_pb2 as dup
from crm.identity.v1 import events_pb2 as identity_events
from crm.identity.v1 import identity_pb2 as ipb
from crm.sales.v1 import leads_pb2 as pb
from crm.sales.v1 import pipelines_pb2 as ppb
from crm_kit.events.subjects import namespaced, subject_for
from crm_kit.ids import new_id
from crm_kit.testing import eventually, recorded_events

from tests.identity.helpers import sign_up
from tests.sales.helpers import default_pipeline

ZH_STAGES = [
    ("初步接洽", 10),
    ("需求分析", 25),
    ("方案报价", 50),
    ("商务谈判", 75),
    ("赢单", 100),
    ("输单", 0),
]
EN_STAGES = [
    ("Qualification", 10),
    ("Needs analysis", 25),
    ("Proposal", 50),
    ("Negotiation", 75),
    ("Won", 100),
    ("Lost", 0),
]


async def _rules(customers_channel, company) -> list[dq.DuplicateRule]:
    data = data_quality_pb2_grpc.CustomersDataServiceStub(customers_channel)

    async def three():
        items = (await data.ListDuplicateRules(dq.ListDuplicateRulesRequest(), metadata=company.md)).items
        return items if len(items) >= 3 else None

    return list(await eventually(three, what="the new company's duplicate rules"))


async def test_a_brand_new_company_converts_a_lead_into_an_opportunity_with_no_set_up(
    identity, leads, pipelines, sales_service
):
    company = await sign_up(identity, "苏州新创电子有限公司")
    default = await default_pipeline(pipelines, company)
    lead = (
        await leads.CreateLead(
            pb.CreateLeadRequest(name="陈静", company="无锡华光机械有限公司", phone="13912345678"),
            metadata=company.md,
        )
    ).lead
    converted = await leads.ConvertLead(pb.ConvertLeadRequest(id=lead.id), metadata=company.md)
    assert converted.opportunity_id
    opp = (
        await pipelines.GetOpportunity(
            ppb.GetOpportunityRequest(id=converted.opportunity_id), metadata=company.md
        )
    ).opportunity
    first_open = next(s for s in default.stages if s.kind == ppb.STAGE_KIND_OPEN)
    assert (opp.pipeline_id, opp.stage_id, opp.probability) == (default.id, first_open.id, 10)
    assert (opp.account_id, opp.contact_id, opp.lead_id) == (
        converted.account_id,
        converted.contact_id,
        lead.id,
    )
    # The pipeline is an audited change like any other, made by sales for the new company.
    [created] = await recorded_events(sales_service.runtime.db, default.id)
    assert (created.type, created.action, created.tenant_id) == (
        "crm.sales.v1.PipelineChanged",
        "created",
        company.tenant.id,
    )


async def test_a_chinese_company_gets_its_defaults_in_chinese(identity, pipelines, customers_channel):
    company = await sign_up(identity, "深圳前海数科有限公司", locale="zh-CN")
    default = await default_pipeline(pipelines, company)
    assert default.name == "标准销售流程"
    assert [(s.name, s.probability) for s in default.stages] == ZH_STAGES
    assert [s.kind for s in default.stages][-2:] == [ppb.STAGE_KIND_WON, ppb.STAGE_KIND_LOST]
    rules = await _rules(customers_channel, company)
    assert {(r.name, r.record_type, r.match) for r in rules} == {
        ("公司名称相似", cpb.RECORD_TYPE_ACCOUNT, dup.DUPLICATE_MATCH_COMPANY_NAME),
        ("手机号相同", cpb.RECORD_TYPE_CONTACT, dup.DUPLICATE_MATCH_PHONE),
        ("邮箱相同", cpb.RECORD_TYPE_CONTACT, dup.DUPLICATE_MATCH_EMAIL),
    }
    assert all(r.active and r.on_create == dup.DUPLICATE_ACTION_WARN for r in rules)


async def test_an_english_company_gets_them_in_english(identity, pipelines, customers_channel):
    company = await sign_up(identity, "Northwind Trading Ltd", locale="en")
    default = await default_pipeline(pipelines, company)
    assert default.name == "Standard sales pipeline"
    assert [(s.name, s.probability) for s in default.stages] == EN_STAGES
    rules = await _rules(customers_channel, company)
    assert {r.name for r in rules} == {"Similar company name", "Same mobile phone", "Same e-mail"}


async def test_the_defaults_are_editable_and_another_pipeline_can_become_the_default(
    identity, leads, pipelines, customers_channel
):
    company = await sign_up(identity, "宁波港城物流有限公司")
    first = await default_pipeline(pipelines, company)
    renamed = (
        await pipelines.UpdatePipeline(
            ppb.UpdatePipelineRequest(
                id=first.id,
                pipeline=ppb.PipelinePatch(name="直销流程"),
                update_mask={"paths": ["name"]},
                expected_version=first.version,
            ),
            metadata=company.md,
        )
    ).pipeline
    assert renamed.name == "直销流程" and renamed.is_default
    channel = (
        await pipelines.CreatePipeline(ppb.CreatePipelineRequest(name="渠道"), metadata=company.md)
    ).pipeline
    assert not channel.is_default
    made = (
        await pipelines.UpdatePipeline(
            ppb.UpdatePipelineRequest(
                id=channel.id,
                pipeline=ppb.PipelinePatch(is_default=True),
                update_mask={"paths": ["is_default"]},
            ),
            metadata=company.md,
        )
    ).pipeline
    assert made.is_default
    former = (await pipelines.GetPipeline(ppb.GetPipelineRequest(id=first.id), metadata=company.md)).pipeline
    assert not former.is_default and former.version == renamed.version + 1
    lead = (
        await leads.CreateLead(pb.CreateLeadRequest(name="赵磊", company="温州瓯江鞋业"), metadata=company.md)
    ).lead
    converted = await leads.ConvertLead(pb.ConvertLeadRequest(id=lead.id), metadata=company.md)
    opp = (
        await pipelines.GetOpportunity(
            ppb.GetOpportunityRequest(id=converted.opportunity_id), metadata=company.md
        )
    ).opportunity
    assert opp.pipeline_id == channel.id
    # Duplicate rules are ordinary rules too.
    data = data_quality_pb2_grpc.CustomersDataServiceStub(customers_channel)
    rule = (await _rules(customers_channel, company))[0]
    off = (
        await data.UpdateDuplicateRule(
            dq.UpdateDuplicateRuleRequest(
                id=rule.id, duplicate_rule=dq.DuplicateRule(active=False), update_mask={"paths": ["active"]}
            ),
            metadata=company.md,
        )
    ).duplicate_rule
    assert not off.active


async def test_a_tenant_created_event_that_comes_again_sets_up_nothing_twice(
    identity, pipelines, customers_channel, test_infra
):
    """The inbox drops a redelivery of the same event; an event announcing the same company again (a
    replayed stream, another id) finds the defaults there and adds none."""
    import nats

    company = await sign_up(identity, "合肥科大智联有限公司")
    await default_pipeline(pipelines, company)
    await _rules(customers_channel, company)
    payload = identity_events.TenantCreated(
        tenant=ipb.Tenant(id=company.tenant.id, name=company.tenant.name, locale="zh-CN")
    )
    envelope = event_pb2.EventEnvelope(
        id=new_id(), type="crm.identity.v1.TenantCreated", tenant_id=company.tenant.id
    )
    envelope.payload.Pack(payload)
    nc = await nats.connect(test_infra.nats_url)
    try:
        js = nc.jetstream()
        subject = namespaced(subject_for("crm.identity.v1.TenantCreated"), test_infra.events_namespace)
        await js.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": envelope.id})
    finally:
        await nc.close()
    # A later company's defaults arriving means the replay above was handled (each consumer goes in order).
    later = await sign_up(identity, "南昌赣江实业有限公司")
    await default_pipeline(pipelines, later)
    await _rules(customers_channel, later)
    items = (await pipelines.ListPipelines(ppb.ListPipelinesRequest(), metadata=company.md)).items
    assert len(items) == 1
    data = data_quality_pb2_grpc.CustomersDataServiceStub(customers_channel)
    rules = (await data.ListDuplicateRules(dq.ListDuplicateRulesRequest(), metadata=company.md)).items
    assert len(rules) == 3
