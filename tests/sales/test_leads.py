"""Leads: capture with attribution, scoring and assignment rules, follow-ups, data scopes, field rules,
tenancy."""

from __future__ import annotations

import grpc
from crm.identity.v1 import identity_pb2 as ipb
from crm.sales.v1 import leads_pb2 as pb
from crm_kit.errors import from_rpc_error
from google.protobuf import field_mask_pb2

from tests.identity.helpers import rpc_error
from tests.sales.helpers import REP_PERMISSIONS, team


async def test_a_lead_is_scored_by_the_tenants_rules_and_owned_by_its_creator(identity, leads):
    company, (rep,) = await team(identity, 1)
    for name, field, op, value, points in (
        ("制造业加分", "industry", "equals", "制造业", 30),
        ("展会来源", "source", "equals", "event", 20),
        ("大公司", "attributes.employees", "gte", "500", 25),
        ("无邮箱扣分", "email", "equals", "", -10),
    ):
        await leads.CreateScoringRule(
            pb.CreateScoringRuleRequest(name=name, field=field, operator=op, value=value, points=points),
            metadata=company.md,
        )
    lead = (
        await leads.CreateLead(
            pb.CreateLeadRequest(
                name="张伟",
                company="苏州精密机械有限公司",
                industry="制造业",
                source=pb.LEAD_SOURCE_EVENT,
                source_detail="2026 广交会",
                attributes={"employees": "800"},
            ),
            metadata=rep.md,
        )
    ).lead
    assert lead.score == 30 + 20 + 25 - 10
    assert lead.owner_id == rep.id and lead.status == pb.LEAD_STATUS_NEW
    assert lead.source_detail == "2026 广交会"
    updated = (
        await leads.UpdateLead(
            pb.UpdateLeadRequest(
                id=lead.id,
                lead=pb.Lead(email="zhang.wei@example.cn"),
                update_mask=field_mask_pb2.FieldMask(paths=["email"]),
                expected_version=lead.version,
            ),
            metadata=rep.md,
        )
    ).lead
    assert updated.score == 75 and updated.version == lead.version + 1
    stale = await rpc_error(
        leads.UpdateLead(
            pb.UpdateLeadRequest(
                id=lead.id,
                lead=pb.Lead(title="总经理"),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
                expected_version=lead.version,
            ),
            metadata=rep.md,
        )
    )
    assert stale.code() == grpc.StatusCode.ABORTED


async def test_bad_rules_and_bad_leads_name_every_bad_field(identity, leads):
    company, _ = await team(identity, 0)
    err = await rpc_error(
        leads.CreateScoringRule(
            pb.CreateScoringRuleRequest(name="", field="password", operator="like", points=5000),
            metadata=company.md,
        )
    )
    assert {f.field for f in from_rpc_error(err).field_errors} == {"name", "field", "operator", "points"}
    err = await rpc_error(leads.CreateLead(pb.CreateLeadRequest(email="not-an-email"), metadata=company.md))
    assert {f.field for f in from_rpc_error(err).field_errors} == {"name", "email"}


async def test_assignment_rules_route_by_region_in_round_robin_and_by_load(identity, leads):
    company, (east1, east2, south) = await team(identity, 3)
    await leads.CreateAssignmentRule(
        pb.CreateAssignmentRuleRequest(
            name="华东轮询",
            priority=1,
            regions=["华东"],
            strategy="round_robin",
            assignee_ids=[east1.id, east2.id],
        ),
        metadata=company.md,
    )
    await leads.CreateAssignmentRule(
        pb.CreateAssignmentRuleRequest(
            name="其余按负载", priority=9, strategy="load", assignee_ids=[south.id, east1.id]
        ),
        metadata=company.md,
    )
    owners = []
    for i in range(4):
        lead = (
            await leads.CreateLead(
                pb.CreateLeadRequest(name=f"华东客户{i}", region="华东"), metadata=company.md
            )
        ).lead
        owners.append(lead.owner_id)
    assert owners == [east1.id, east2.id, east1.id, east2.id]
    # Load: south holds nothing yet, east1 holds two → south gets the lead.
    other = (
        await leads.CreateLead(pb.CreateLeadRequest(name="华南客户", region="华南"), metadata=company.md)
    ).lead
    assert other.owner_id == south.id


async def test_follow_ups_move_a_new_lead_to_working_and_are_listed_newest_first(identity, leads):
    _, (rep,) = await team(identity, 1)
    lead = (await leads.CreateLead(pb.CreateLeadRequest(name="李娜"), metadata=rep.md)).lead
    for content in ("首次电话", "发送资料"):
        answer = await leads.CreateLeadFollowUp(
            pb.CreateLeadFollowUpRequest(id=lead.id, kind="call", content=content), metadata=rep.md
        )
    assert answer.lead.status == pb.LEAD_STATUS_WORKING and answer.lead.last_follow_up_at.seconds
    listed = (await leads.ListLeadFollowUps(pb.ListLeadFollowUpsRequest(id=lead.id), metadata=rep.md)).items
    assert [f.content for f in listed] == ["发送资料", "首次电话"]
    err = await rpc_error(
        leads.CreateLeadFollowUp(pb.CreateLeadFollowUpRequest(id=lead.id, kind="smoke"), metadata=rep.md)
    )
    assert {f.field for f in from_rpc_error(err).field_errors} == {"kind", "content"}


async def test_a_rep_sees_only_own_leads_and_hidden_fields_stay_hidden(identity, leads):
    hidden_phone = [
        ipb.Permission(
            object="lead",
            actions=["create", "read", "update"],
            data_scope=ipb.DATA_SCOPE_OWN,
            field_rules=[
                ipb.FieldRule(field="phone", access=ipb.FIELD_ACCESS_HIDDEN),
                ipb.FieldRule(field="score", access=ipb.FIELD_ACCESS_READ_ONLY),
            ],
        ),
        *REP_PERMISSIONS[1:],
    ]
    company, (rep, other) = await team(identity, 2, permissions=hidden_phone)
    mine = (
        await leads.CreateLead(pb.CreateLeadRequest(name="王芳", phone="13800138000"), metadata=rep.md)
    ).lead
    assert mine.phone == ""  # hidden from the rep, even in the answer to their own write
    theirs = (await leads.CreateLead(pb.CreateLeadRequest(name="赵磊"), metadata=other.md)).lead
    listed = (await leads.ListLeads(pb.ListLeadsRequest(), metadata=rep.md)).items
    assert [lead.id for lead in listed] == [mine.id]
    err = await rpc_error(leads.GetLead(pb.GetLeadRequest(id=theirs.id), metadata=rep.md))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    admin_view = (await leads.GetLead(pb.GetLeadRequest(id=mine.id), metadata=company.md)).lead
    assert admin_view.phone == "13800138000"
    err = await rpc_error(
        leads.UpdateLead(
            pb.UpdateLeadRequest(
                id=mine.id, lead=pb.Lead(phone="1"), update_mask=field_mask_pb2.FieldMask(paths=["phone"])
            ),
            metadata=rep.md,
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_another_tenants_leads_pools_and_forms_are_not_found(identity, leads):
    alpha, _ = await team(identity, 0)
    beta, _ = await team(identity, 0, name="Acme Ltd")
    pool = (await leads.CreateLeadPool(pb.CreateLeadPoolRequest(name="公海"), metadata=alpha.md)).pool
    lead = (
        await leads.CreateLead(pb.CreateLeadRequest(name="刘洋", pool_id=pool.id), metadata=alpha.md)
    ).lead
    form = (await leads.CreateWebForm(pb.CreateWebFormRequest(name="官网表单"), metadata=alpha.md)).form
    for call in (
        leads.GetLead(pb.GetLeadRequest(id=lead.id), metadata=beta.md),
        leads.ClaimLead(pb.ClaimLeadRequest(id=lead.id), metadata=beta.md),
        leads.ListLeadHistory(pb.ListLeadHistoryRequest(id=lead.id), metadata=beta.md),
        leads.GetLeadPool(pb.GetLeadPoolRequest(id=pool.id), metadata=beta.md),
        leads.GetWebForm(pb.GetWebFormRequest(id=form.id), metadata=beta.md),
        leads.GetLead(pb.GetLeadRequest(id="not-an-id"), metadata=beta.md),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(leads.CreateLead(pb.CreateLeadRequest(name="x", pool_id=pool.id), metadata=beta.md))
    assert [f.field for f in from_rpc_error(err).field_errors] == ["pool_id"]


async def test_a_manager_with_the_department_tree_scope_sees_the_teams_leads_only(identity, leads):
    from tests.identity.helpers import invite_and_join
    from tests.sales.helpers import Rep, rep_role

    company, (outsider,) = await team(identity, 1)
    sales = (
        await identity.CreateDepartment(ipb.CreateDepartmentRequest(name="销售部"), metadata=company.md)
    ).department
    east = (
        await identity.CreateDepartment(
            ipb.CreateDepartmentRequest(name="华东组", parent_id=sales.id), metadata=company.md
        )
    ).department
    manager_role = await rep_role(
        identity,
        company,
        name="销售主管",
        permissions=[
            ipb.Permission(
                object="lead", actions=["read", "create"], data_scope=ipb.DATA_SCOPE_DEPARTMENT_TREE
            )
        ],
    )
    rep_role_ = await rep_role(identity, company, name="华东销售")
    manager = Rep(
        *await invite_and_join(identity, company, role_ids=[manager_role.id], department_id=sales.id)
    )
    rep = Rep(*await invite_and_join(identity, company, role_ids=[rep_role_.id], department_id=east.id))
    team_lead = (await leads.CreateLead(pb.CreateLeadRequest(name="华东客户"), metadata=rep.md)).lead
    assert team_lead.department_id == east.id
    other = (await leads.CreateLead(pb.CreateLeadRequest(name="散客"), metadata=outsider.md)).lead
    seen = {lead.id for lead in (await leads.ListLeads(pb.ListLeadsRequest(), metadata=manager.md)).items}
    assert team_lead.id in seen and other.id not in seen
    err = await rpc_error(leads.GetLead(pb.GetLeadRequest(id=other.id), metadata=manager.md))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_a_new_lead_comes_back_with_the_open_leads_it_may_duplicate(identity, leads):
    company, (rep, other) = await team(identity, 2)
    mine = (
        await leads.CreateLead(
            pb.CreateLeadRequest(name="王芳", phone="138-0013-8000", email="wang.fang@example.cn"),
            metadata=rep.md,
        )
    ).lead
    theirs = await leads.CreateLead(
        pb.CreateLeadRequest(name="王芳（展会）", email="Wang.Fang@Example.cn"), metadata=other.md
    )
    # The second lead matched the first on its e-mail; the other rep may not read it (own scope): id only.
    assert [(d.lead_id, d.matched_on, d.name, d.owner_id) for d in theirs.lead.duplicates] == [
        (mine.id, "email", "", "")
    ]

    # The admin sees everything: names and owners, phone matched in another notation, oldest first.
    answer = await leads.CreateLead(
        pb.CreateLeadRequest(name="王芳", phone="+86 138 0013 8000", email="wang.fang@example.cn"),
        metadata=company.md,
    )
    assert [(d.lead_id, d.matched_on, d.name, d.owner_id) for d in answer.lead.duplicates] == [
        (mine.id, "phone", "王芳", rep.id),
        (theirs.lead.id, "email", "王芳（展会）", other.id),
    ]
    # Another tenant's leads are never candidates, and a lead without phone or e-mail has none.
    stranger, _ = await team(identity, 0, name="别家公司")
    alone = await leads.CreateLead(
        pb.CreateLeadRequest(name="王芳", email="wang.fang@example.cn"), metadata=stranger.md
    )
    assert list(alone.lead.duplicates) == []
    nameless = (await leads.CreateLead(pb.CreateLeadRequest(name="无名"), metadata=company.md)).lead
    assert list(nameless.duplicates) == []

    # Duplicates belong to the answer that found them: a read carries none.
    read = (await leads.GetLead(pb.GetLeadRequest(id=answer.lead.id), metadata=company.md)).lead
    assert list(read.duplicates) == []
    # An update that gives a lead a phone already held by an open lead answers with that lead.
    changed = (
        await leads.UpdateLead(
            pb.UpdateLeadRequest(
                id=nameless.id,
                lead=pb.Lead(phone="13800138000"),
                update_mask=field_mask_pb2.FieldMask(paths=["phone"]),
            ),
            metadata=company.md,
        )
    ).lead
    assert [(d.lead_id, d.matched_on) for d in changed.duplicates] == [
        (mine.id, "phone"),
        (answer.lead.id, "phone"),
    ]
