"""Rules of the customer record end to end: the audit trail's before/after, tier rules, contacts, custom
field removal, interactions, keyset paging and list parsing."""

from __future__ import annotations

import asyncio
import time

import pytest
from crm_customers.domain import query as q
from crm_customers.domain import search
from crm_kit.errors import InvalidArgument, PermissionDenied
from crm_kit.policy import Decision

from tests.customers.test_gateway_customers import capi, create_account, member  # noqa: F401
from tests.gateway.conftest import assert_problem, sign_up


async def test_every_change_lands_in_the_audit_trail_with_before_and_after(capi):  # noqa: F811
    company = await sign_up(capi)
    h = company.headers
    account = await create_account(capi, h, name="比亚迪股份有限公司", tier="key")
    await capi.patch(f"/api/v1/accounts/{account['id']}", json={"tier": "vip", "city": "深圳市"}, headers=h)
    deadline = time.monotonic() + 20
    changes = {}
    while time.monotonic() < deadline:
        r = await capi.get("/api/v1/audit-events", params={"object_id": account["id"]}, headers=h)
        updated = [e for e in r.json()["items"] if e["action"] == "updated"]
        if updated:
            changes = {c["field"]: c for c in updated[0]["changes"]}
            break
        await asyncio.sleep(0.2)
    assert changes, "the update never reached the audit trail"
    assert changes["tier"]["before"] == "key" and changes["tier"]["after"] == "vip"
    assert changes["city"]["before"] == "" and changes["city"]["after"] == "深圳市"
    assert "name" not in changes


async def test_tier_rules_give_tiers_until_a_person_sets_one(capi):  # noqa: F811
    company = await sign_up(capi)
    h = company.headers
    small = await create_account(capi, h, name="小公司", registered_capital="100000.00")
    rules = await capi.put(
        "/api/v1/tier-rules",
        json={
            "rules": [
                {"tier": "vip", "filter": ["registered_capital:gte:100000000"]},
                {"tier": "key", "filter": ["registered_capital:gte:10000000"]},
            ],
            "default_tier": "normal",
            "reapply": True,
        },
        headers=h,
    )
    assert rules.status_code == 200, rules.text
    assert rules.json()["accounts_changed"] == 1
    assert (await capi.get(f"/api/v1/accounts/{small['id']}", headers=h)).json()["tier"] == "normal"
    big = await create_account(capi, h, name="大集团", registered_capital="500000000.00")
    assert big["tier"] == "vip"
    mid = await capi.patch(
        f"/api/v1/accounts/{small['id']}", json={"registered_capital": "20000000"}, headers=h
    )
    assert mid.json()["tier"] == "key"
    manual = await capi.patch(f"/api/v1/accounts/{small['id']}", json={"tier": "strategic"}, headers=h)
    assert manual.json()["tier"] == "strategic"
    still = await capi.patch(
        f"/api/v1/accounts/{small['id']}", json={"registered_capital": "1.00"}, headers=h
    )
    assert still.json()["tier"] == "strategic"
    bad = await capi.put(
        "/api/v1/tier-rules", json={"rules": [{"tier": "x", "filter": ["nosuch:eq:1"]}]}, headers=h
    )
    assert_problem(bad, 422)


async def test_contacts_keep_people_details_and_links(capi):  # noqa: F811
    company = await sign_up(capi)
    h = company.headers
    account = await create_account(capi, h, name="美的集团股份有限公司")
    r = await capi.post(
        "/api/v1/contacts",
        json={
            "name": "方洪波",
            "name_latin": "Fang Hongbo",
            "titles": ["董事长", "总裁"],
            "phones": ["+86 138-0013-8001"],
            "emails": ["Fang@Midea.com"],
            "im_handles": [{"kind": "wechat", "handle": "fanghb"}],
            "birthday": "1967-01-01",
            "buying_role": "decision_maker",
            "consent": {"email": True, "wechat": True},
            "primary_account_id": account["id"],
        },
        headers=h,
    )
    assert r.status_code == 201, r.text
    contact = r.json()
    assert contact["account_ids"] == [account["id"]]
    assert contact["consent"]["email"] and contact["consent"]["updated_at"]
    assert contact["im_handles"] == [{"kind": "wechat", "handle": "fanghb"}]
    of_account = await capi.get("/api/v1/contacts", params={"account_id": account["id"]}, headers=h)
    assert [c["id"] for c in of_account.json()["items"]] == [contact["id"]]
    by_phone = await capi.get("/api/v1/contacts", params={"filter": "phones:eq:13800138001"}, headers=h)
    assert [c["id"] for c in by_phone.json()["items"]] == [contact["id"]]
    deciders = await capi.get(
        "/api/v1/contacts", params={"filter": "buying_role:eq:decision_maker"}, headers=h
    )
    assert [c["id"] for c in deciders.json()["items"]] == [contact["id"]]
    consent = await capi.get("/api/v1/contacts", params={"filter": "consent.sms:eq:true"}, headers=h)
    assert consent.json()["items"] == []
    bad = await capi.post(
        "/api/v1/contacts",
        json={
            "name": "x",
            "birthday": "2999-01-01",
            "im_handles": [{"kind": "pager", "handle": "1"}],
        },
        headers=h,
    )
    assert {e["field"] for e in assert_problem(bad, 422)["errors"]} == {"birthday", "im_handles[0].kind"}
    gone = await capi.delete(f"/api/v1/contacts/{contact['id']}", headers=h)
    assert gone.status_code == 204
    back = await capi.post(f"/api/v1/contacts/{contact['id']}/restore", headers=h)
    assert back.status_code == 200 and back.json()["account_ids"] == [account["id"]]


async def test_a_deleted_custom_field_leaves_every_record(capi):  # noqa: F811
    company = await sign_up(capi)
    h = company.headers
    made = await capi.post(
        "/api/v1/custom-fields",
        json={
            "record_type": "account",
            "key": "region_code",
            "label_en": "Region code",
            "type": "text",
        },
        headers=h,
    )
    account = await create_account(capi, h, name="格力电器", custom_fields={"region_code": "GD-01"})
    assert account["custom_fields"] == {"region_code": "GD-01"}
    gone = await capi.delete(f"/api/v1/custom-fields/{made.json()['id']}", headers=h)
    assert gone.status_code == 204
    after = await capi.get(f"/api/v1/accounts/{account['id']}", headers=h)
    assert after.json().get("custom_fields", {}) == {}
    refused = await capi.patch(
        f"/api/v1/accounts/{account['id']}", json={"custom_fields": {"region_code": "x"}}, headers=h
    )
    assert_problem(refused, 422)


async def test_interactions_are_edited_scoped_and_deleted(capi):  # noqa: F811
    company = await sign_up(capi)
    h = company.headers
    account = await create_account(capi, h, name="海尔集团")
    made = await capi.post(
        "/api/v1/interactions",
        json={
            "kind": "meeting",
            "subject": "季度回顾",
            "account_ids": [account["id"]],
        },
        headers=h,
    )
    assert made.status_code == 201, made.text
    iid = made.json()["id"]
    edited = await capi.patch(
        f"/api/v1/interactions/{iid}", json={"outcome": "续约"}, headers={**h, "If-Match": '"1"'}
    )
    assert edited.status_code == 200 and edited.json()["outcome"] == "续约" and edited.json()["version"] == 2
    empty = await capi.post("/api/v1/interactions", json={"kind": "note"}, headers=h)
    assert_problem(empty, 422)
    rep = await member(capi, company, [{"object": "*", "actions": ["*"], "data_scope": "own"}])
    assert_problem(await capi.get(f"/api/v1/interactions/{iid}", headers=rep), 404)
    on_hidden_account = await capi.post(
        "/api/v1/interactions",
        json={"kind": "call", "account_ids": [account["id"]]},
        headers=rep,
    )
    assert_problem(on_hidden_account, 422)
    assert (await capi.delete(f"/api/v1/interactions/{iid}", headers=h)).status_code == 204
    timeline = await capi.get(f"/api/v1/accounts/{account['id']}/timeline", headers=h)
    assert timeline.json()["items"] == []


async def test_keyset_pages_visit_every_row_once_in_order(capi):  # noqa: F811
    company = await sign_up(capi)
    h = company.headers
    capitals = ["300.00", None, "100.00", "300.00", "200.00", None, "100.00"]
    ids = []
    for i, cap in enumerate(capitals):
        fields = {"registered_capital": cap} if cap else {}
        ids.append((await create_account(capi, h, name=f"公司{i}", **fields))["id"])
    seen, cursor = [], None
    while True:
        params = {"sort": "registered_capital", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await capi.get("/api/v1/accounts", params=params, headers=h)).json()
        seen += [(a["registered_capital"], a["id"]) for a in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(x[1] for x in seen) == sorted(ids) and len(seen) == len(ids)
    values = [s[0] for s in seen]
    assert values == ["100.00", "100.00", "200.00", "300.00", "300.00", None, None]  # NULLs last


# ---------------------------------------------------------------- unit: parsing


ALL = Decision("account", "read", True, scope=4)


def test_filters_are_parsed_with_every_problem_named():
    from crm_customers.domain.accounts import fields_for

    fields = fields_for({})
    assert (
        len(q.parse_filters(fields, ["province:eq:广东省", "registered_capital:gte:1e6", "tags:in:a|b"], ALL))
        == 3
    )
    for bad, why in (
        ("province", "field:op:value"),
        ("nosuch:eq:1", "unknown field"),
        ("province:like:x", "op must be"),
        ("registered_capital:gte:lots", "not a valid"),
        ("lifecycle_stage:eq:happy", "must be one of"),
        ("custom_fields.x:eq:1", "no custom field"),
    ):
        with pytest.raises(InvalidArgument) as err:
            q.parse_filters(fields, [bad], ALL)
        assert why in err.value.message, (bad, err.value.message)


def test_hidden_fields_cannot_be_filtered_or_sorted():
    from crm_customers.domain.accounts import fields_for

    hiding = Decision("account", "read", True, scope=4, hidden=frozenset({"registered_capital"}))
    with pytest.raises(PermissionDenied):
        q.parse_filters(fields_for({}), ["registered_capital:gt:0"], hiding)
    with pytest.raises(PermissionDenied):
        q.parse_sort(fields_for({}), "-registered_capital", hiding)


def test_search_columns_hold_names_pinyin_grams_and_digits():
    assert "huaweijishuyouxiangongsi" in search.name_text("华为技术有限公司")
    grams = search.name_grams("华为技术")
    assert {"华", "华为", "为技", "术"} <= set(grams)
    assert search.extra_text(["+8613800138000"], ["A@B.com"], []) == "8613800138000 | a@b.com"
    assert search.normalize_query(" 138-0013 8000 ") == "13800138000"
    assert search.normalize_query("ＨＵＡＷＥＩ") == "huawei"


async def test_account_timeline_can_include_its_contacts_and_contacts_have_a_graph(capi):  # noqa: F811
    company = await sign_up(capi)
    h = company.headers
    account = await create_account(capi, h, name="宁德时代新能源科技股份有限公司")
    person = await capi.post(
        "/api/v1/contacts", json={"name": "曾毓群", "account_ids": [account["id"]]}, headers=h
    )
    pid = person.json()["id"]
    note = await capi.post(
        "/api/v1/interactions",
        json={"kind": "note", "subject": "私下沟通", "contact_ids": [pid]},
        headers=h,
    )
    assert note.status_code == 201, note.text
    own = await capi.get(f"/api/v1/accounts/{account['id']}/timeline", headers=h)
    assert own.json()["items"] == []
    with_people = await capi.get(
        f"/api/v1/accounts/{account['id']}/timeline", params={"include_contacts": "true"}, headers=h
    )
    assert [i["id"] for i in with_people.json()["items"]] == [note.json()["id"]]
    # Someone who reads every account but only their own contacts: the admin's contact's note stays out.
    reader = await member(
        capi,
        company,
        [
            {"object": "account", "actions": ["read"], "data_scope": "all"},
            {"object": "contact", "actions": ["read"], "data_scope": "own"},
            {"object": "interaction", "actions": ["read"], "data_scope": "all"},
        ],
    )
    theirs = await capi.get(
        f"/api/v1/accounts/{account['id']}/timeline", params={"include_contacts": "true"}, headers=reader
    )
    assert theirs.status_code == 200, theirs.text
    assert theirs.json()["items"] == []
    graph = await capi.get(f"/api/v1/contacts/{pid}/graph", headers=h)
    assert graph.status_code == 200, graph.text
    assert [(e["type"], e["target"]["id"]) for e in graph.json()["edges"]] == [("works_at", account["id"])]
