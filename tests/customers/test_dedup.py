"""Duplicate rules through the gRPC API: Chinese variants caught, block / warn / allow on create and update,
person + company in any script, scans with scores, tenancy."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import data_quality_pb2 as dq
from crm.customers.v1 import data_quality_pb2_grpc, duplicates_pb2
from google.protobuf import field_mask_pb2
from sqlalchemy import text

from tests.customers.helpers import (
    auth,
    credit_code,
    invite_and_join,
    new_account,
    role,
    rpc_error,
    sign_up,
    without_default_rules,
)

ACCOUNT, CONTACT = pb.RECORD_TYPE_ACCOUNT, pb.RECORD_TYPE_CONTACT
BLOCK, WARN, ALLOW = (
    duplicates_pb2.DUPLICATE_ACTION_BLOCK,
    duplicates_pb2.DUPLICATE_ACTION_WARN,
    duplicates_pb2.DUPLICATE_ACTION_ALLOW,
)


@pytest.fixture(scope="session")
async def data(customers_service):
    async with grpc.aio.insecure_channel(customers_service.address) as channel:
        yield data_quality_pb2_grpc.CustomersDataServiceStub(channel)


async def add_rule(data, company, match, record_type=ACCOUNT, *, on_create=WARN, on_update=WARN, **kw):
    """A rule of the test's own, acting alone: the company's default rules are removed first."""
    await without_default_rules(data, company.tenant.id, company.md)
    rule = dq.DuplicateRule(
        name=f"rule {match}",
        record_type=record_type,
        match=match,
        on_create=on_create,
        on_update=on_update,
        **kw,
    )
    response = await data.CreateDuplicateRule(
        dq.CreateDuplicateRuleRequest(duplicate_rule=rule), metadata=company.md
    )
    return response.duplicate_rule


async def check(data, company, record_type=ACCOUNT, **fields):
    message = pb.Account(**fields) if record_type == ACCOUNT else pb.Contact(**fields)
    request = dq.CheckDuplicatesRequest(record_type=record_type)
    getattr(request, "account" if record_type == ACCOUNT else "contact").CopyFrom(message)
    return await data.CheckDuplicates(request, metadata=company.md)


async def test_chinese_and_english_variants_of_a_company_are_caught(identity, customers, data):
    company = await sign_up(identity)
    await add_rule(data, company, duplicates_pb2.DUPLICATE_MATCH_COMPANY_NAME)
    huawei = await new_account(customers, company, "华为技术有限公司")
    await new_account(customers, company, "腾讯科技（深圳）有限公司")

    for variant in (
        "华为技术（深圳）有限公司",
        "深圳华为技术有限公司",
        "HUAWEI Technologies Co., Ltd.",
        "广东省深圳市华为技术有限公司",
    ):
        found = await check(data, company, name=variant)
        assert [c.id for c in found.candidates] == [huawei.id], variant
        assert found.candidates[0].score >= 0.9
        assert found.candidates[0].matches == [duplicates_pb2.DUPLICATE_MATCH_COMPANY_NAME]
        assert found.action == WARN

    assert not (await check(data, company, name="阿里巴巴（中国）有限公司")).candidates
    # A branch is not its head office.
    assert not (await check(data, company, name="华为技术有限公司北京分公司")).candidates


async def test_a_blocking_phone_rule_refuses_the_same_number_written_differently(identity, customers, data):
    company = await sign_up(identity)
    await add_rule(data, company, duplicates_pb2.DUPLICATE_MATCH_PHONE, on_create=BLOCK)
    first = await new_account(customers, company, "小米科技有限责任公司", phones=["13800138000"])

    err = await rpc_error(
        customers.CreateAccount(
            pb.CreateAccountRequest(account=pb.Account(name="北京小米", phones=["+86 138-0013-8000"])),
            metadata=company.md,
        )
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.id in err.details() and "小米科技有限责任公司" not in err.details()  # ids, never names
    listed = await customers.ListAccounts(pb.ListAccountsRequest(), metadata=company.md)
    assert [a.id for a in listed.items] == [first.id]  # nothing half-written


async def test_warn_and_allow_rules_let_the_create_through(identity, customers, data):
    company = await sign_up(identity)
    await add_rule(data, company, duplicates_pb2.DUPLICATE_MATCH_EMAIL, on_create=WARN)
    await add_rule(data, company, duplicates_pb2.DUPLICATE_MATCH_CREDIT_CODE, on_create=ALLOW)
    await new_account(
        customers, company, "美的集团股份有限公司", emails=["info@midea.com"], credit_code=credit_code(7)
    )
    second = await new_account(
        customers, company, "美的（集团）有限公司", emails=["INFO@Midea.com "], credit_code=credit_code(7)
    )
    assert second.id
    found = await check(data, company, emails=["info@midea.com"], credit_code=credit_code(7))
    assert found.action == WARN  # the strictest of the matched rules
    assert len(found.candidates) == 2


async def test_an_update_that_makes_a_duplicate_is_blocked_by_on_update(identity, customers, data):
    company = await sign_up(identity)
    await add_rule(
        data, company, duplicates_pb2.DUPLICATE_MATCH_CREDIT_CODE, on_create=ALLOW, on_update=BLOCK
    )
    await new_account(customers, company, "字节跳动有限公司", credit_code=credit_code(21))
    other = await new_account(customers, company, "抖音有限公司")
    err = await rpc_error(
        customers.UpdateAccount(
            pb.UpdateAccountRequest(
                id=other.id,
                account=pb.Account(credit_code=credit_code(21)),
                update_mask=field_mask_pb2.FieldMask(paths=["credit_code"]),
            ),
            metadata=company.md,
        )
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    got = await customers.GetAccount(pb.GetAccountRequest(id=other.id), metadata=company.md)
    assert got.account.credit_code == "" and got.account.version == other.version
    # Saving the record itself again is never its own duplicate.
    same = await customers.UpdateAccount(
        pb.UpdateAccountRequest(
            id=other.id,
            account=pb.Account(name="抖音科技有限公司"),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        ),
        metadata=company.md,
    )
    assert same.account.name == "抖音科技有限公司"


async def test_a_person_is_caught_by_name_in_pinyin_within_the_same_company(identity, customers, data):
    company = await sign_up(identity)
    await add_rule(data, company, duplicates_pb2.DUPLICATE_MATCH_PERSON_NAME_AND_COMPANY, record_type=CONTACT)
    huawei = await new_account(customers, company, "华为技术有限公司")
    tencent = await new_account(customers, company, "腾讯科技有限公司")
    wang = (
        await customers.CreateContact(
            pb.CreateContactRequest(contact=pb.Contact(name="王小明", account_ids=[huawei.id])),
            metadata=company.md,
        )
    ).contact

    for name in ("Wang Xiaoming", "Xiaoming Wang", "王 小明"):
        found = await check(data, company, CONTACT, name=name, account_ids=[huawei.id])
        assert [c.id for c in found.candidates] == [wang.id], name
    assert not (
        await check(data, company, CONTACT, name="Wang Xiaoming", account_ids=[tencent.id])
    ).candidates
    assert not (await check(data, company, CONTACT, name="李雷", account_ids=[huawei.id])).candidates


async def test_a_scan_lists_groups_of_existing_duplicates_with_scores(identity, customers, data):
    company = await sign_up(identity)
    await add_rule(data, company, duplicates_pb2.DUPLICATE_MATCH_COMPANY_NAME, on_create=ALLOW)
    await add_rule(data, company, duplicates_pb2.DUPLICATE_MATCH_EMAIL, on_create=ALLOW)
    a = await new_account(customers, company, "华为技术有限公司")
    b = await new_account(customers, company, "深圳市华为技术有限公司")
    c = await new_account(customers, company, "HUAWEI Technologies Co., Ltd.")
    d = await new_account(customers, company, "阿里巴巴（中国）有限公司", emails=["bd@alibaba.com"])
    e = await new_account(customers, company, "蚂蚁集团", emails=["BD@alibaba.com"])
    await new_account(customers, company, "腾讯科技有限公司")

    scan = (
        await data.StartDuplicateScan(dq.StartDuplicateScanRequest(record_type=ACCOUNT), metadata=company.md)
    ).duplicate_scan
    for _ in range(100):
        scan = (
            await data.GetDuplicateScan(dq.GetDuplicateScanRequest(id=scan.id), metadata=company.md)
        ).duplicate_scan
        if scan.status not in (dq.JOB_STATUS_QUEUED, dq.JOB_STATUS_RUNNING):
            break
        await asyncio.sleep(0.1)
    assert scan.status == dq.JOB_STATUS_SUCCEEDED, scan
    assert scan.records_scanned == 6 and scan.groups_found == 2

    groups = (
        await data.ListDuplicateGroups(
            dq.ListDuplicateGroupsRequest(record_type=ACCOUNT), metadata=company.md
        )
    ).items
    by_members = {frozenset(m.id for m in g.members): g for g in groups}
    assert set(by_members) == {frozenset({a.id, b.id, c.id}), frozenset({d.id, e.id})}
    huawei = by_members[frozenset({a.id, b.id, c.id})]
    assert huawei.score == 1.0
    assert all(m.matches == [duplicates_pb2.DUPLICATE_MATCH_COMPANY_NAME] for m in huawei.members)
    assert by_members[frozenset({d.id, e.id})].members[0].matched_values == ["bd@alibaba.com"]

    # Without a record type: the latest scan of each, contacts' groups beside accounts', best score first.
    await add_rule(data, company, duplicates_pb2.DUPLICATE_MATCH_PHONE, CONTACT, on_create=ALLOW)
    people = [
        (
            await customers.CreateContact(
                pb.CreateContactRequest(contact=pb.Contact(name=name, phones=["13800138000"])),
                metadata=company.md,
            )
        ).contact.id
        for name in ("王小明", "小明")
    ]
    await scanned(data, company, CONTACT)
    everything = []
    page = dq.ListDuplicateGroupsRequest()
    page.page.limit = 1
    while True:  # pages over both scans
        answer = await data.ListDuplicateGroups(page, metadata=company.md)
        everything += answer.items
        if not answer.next_cursor:
            break
        page.page.cursor = answer.next_cursor
    assert {frozenset(m.id for m in g.members) for g in everything} == set(by_members) | {frozenset(people)}
    assert [g.score for g in everything] == sorted((g.score for g in everything), reverse=True)
    assert {g.record_type for g in everything} == {ACCOUNT, CONTACT}
    only_contacts = await data.ListDuplicateGroups(
        dq.ListDuplicateGroupsRequest(record_type=CONTACT), metadata=company.md
    )
    assert [frozenset(m.id for m in g.members) for g in only_contacts.items] == [frozenset(people)]


async def scanned(data, company, record_type):
    """Run a duplicate scan to its end."""
    scan = (
        await data.StartDuplicateScan(
            dq.StartDuplicateScanRequest(record_type=record_type), metadata=company.md
        )
    ).duplicate_scan
    for _ in range(100):
        scan = (
            await data.GetDuplicateScan(dq.GetDuplicateScanRequest(id=scan.id), metadata=company.md)
        ).duplicate_scan
        if scan.status not in (dq.JOB_STATUS_QUEUED, dq.JOB_STATUS_RUNNING):
            break
        await asyncio.sleep(0.1)
    assert scan.status == dq.JOB_STATUS_SUCCEEDED, scan
    return scan


async def test_rules_are_validated_audited_and_belong_to_their_tenant(identity, data, customers_service):
    mine, theirs = await sign_up(identity), await sign_up(identity, "腾讯")
    err = await rpc_error(
        data.CreateDuplicateRule(
            dq.CreateDuplicateRuleRequest(
                duplicate_rule=dq.DuplicateRule(
                    name="",
                    record_type=CONTACT,
                    match=duplicates_pb2.DUPLICATE_MATCH_CREDIT_CODE,
                    threshold=2,
                )
            ),
            metadata=mine.md,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    for field in ("name", "match", "threshold"):
        assert field in err.details()

    rule = await add_rule(data, mine, duplicates_pb2.DUPLICATE_MATCH_PHONE)
    assert rule.threshold == 0.85 and rule.active and rule.on_import == dq.IMPORT_DUPLICATE_ACTION_SKIP
    for call in (
        data.GetDuplicateRule(dq.GetDuplicateRuleRequest(id=rule.id), metadata=theirs.md),
        data.DeleteDuplicateRule(dq.DeleteDuplicateRuleRequest(id=rule.id), metadata=theirs.md),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    theirs_rules = (await data.ListDuplicateRules(dq.ListDuplicateRulesRequest(), metadata=theirs.md)).items
    assert rule.id not in {r.id for r in theirs_rules}

    updated = await data.UpdateDuplicateRule(
        dq.UpdateDuplicateRuleRequest(
            id=rule.id,
            expected_version=rule.version,
            duplicate_rule=dq.DuplicateRule(on_create=BLOCK, active=False),
            update_mask=field_mask_pb2.FieldMask(paths=["on_create", "active"]),
        ),
        metadata=mine.md,
    )
    assert updated.duplicate_rule.on_create == BLOCK and not updated.duplicate_rule.active
    stale = await rpc_error(
        data.DeleteDuplicateRule(
            dq.DeleteDuplicateRuleRequest(id=rule.id, expected_version=1), metadata=mine.md
        )
    )
    assert stale.code() == grpc.StatusCode.ABORTED
    await data.DeleteDuplicateRule(
        dq.DeleteDuplicateRuleRequest(id=rule.id, expected_version=updated.duplicate_rule.version),
        metadata=mine.md,
    )
    async with customers_service.runtime.db.read() as session:
        subjects = (
            (
                await session.execute(
                    text("SELECT subject FROM outbox_events WHERE aggregate_id = :id ORDER BY seq"),
                    {"id": rule.id},
                )
            )
            .scalars()
            .all()
        )
    assert [s.rsplit(".", 1)[1] for s in subjects] == [
        "DuplicateRuleCreated",
        "DuplicateRuleUpdated",
        "DuplicateRuleDeleted",
    ]


async def test_a_candidate_outside_the_callers_scope_is_named_by_id_only(identity, customers, data):
    company = await sign_up(identity)
    await add_rule(data, company, duplicates_pb2.DUPLICATE_MATCH_PHONE)
    secret = await new_account(customers, company, "华为技术有限公司", phones=["13800138000"])
    own = await role(
        identity,
        company,
        "只看自己的",
        [{"object": "account", "actions": ["read", "create"], "data_scope": "DATA_SCOPE_OWN"}],
    )
    _, token = await invite_and_join(identity, company, role_ids=[own])
    request = dq.CheckDuplicatesRequest(record_type=ACCOUNT, account=pb.Account(phones=["138 0013 8000"]))
    found = await data.CheckDuplicates(request, metadata=auth(token.access_token))
    assert [c.id for c in found.candidates] == [secret.id]
    assert found.candidates[0].name == "" and not found.candidates[0].matched_values
    mine = await data.CheckDuplicates(request, metadata=company.md)
    assert mine.candidates[0].name == "华为技术有限公司"
