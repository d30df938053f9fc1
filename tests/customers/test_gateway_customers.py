"""End to end: a web client using the customers REST API, gateway → gRPC → customers → PostgreSQL, with the
real identity service deciding who may see what."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.customers.helpers import credit_code
from tests.gateway.conftest import (
    PASSWORD,
    assert_problem,
    gateway_settings,
    running_gateway,
    sign_up,
    unique_email,
)


@pytest.fixture(scope="session")
async def capi(test_infra, identity_service, customers_service) -> AsyncIterator[httpx.AsyncClient]:
    settings = gateway_settings(
        test_infra, identity_service.address, customers_service_addr=customers_service.address
    )
    async with running_gateway(settings) as client:
        yield client


async def member(capi, company, permissions: list[dict]) -> dict[str, str]:
    """A user of the company with one role of these permissions; returns their auth headers."""
    role = await capi.post(
        "/api/v1/roles",
        json={"name": f"role-{unique_email()}", "permissions": permissions},
        headers=company.headers,
    )
    assert role.status_code == 201, role.text
    email = unique_email("sales")
    invited = await capi.post(
        "/api/v1/users",
        json={"email": email, "name": "李雷", "role_ids": [role.json()["id"]]},
        headers=company.headers,
    )
    assert invited.status_code == 201, invited.text
    accepted = await capi.post(
        "/api/v1/auth/accept-invitation",
        json={"invitation_token": invited.json()["invitation_token"], "password": PASSWORD},
    )
    assert accepted.status_code == 200, accepted.text
    token = await capi.post("/api/v1/auth/token", json={"email": email, "password": PASSWORD})
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


async def create_account(capi, headers, **account) -> dict:
    r = await capi.post("/api/v1/accounts", json=account, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def test_account_crud_with_etag_recycle_bin_and_restore(capi):
    company = await sign_up(capi)
    h = company.headers
    created = await capi.post(
        "/api/v1/accounts",
        json={
            "name": "华为技术有限公司",
            "credit_code": credit_code(7),
            "registered_capital": "4034113182.00",
            "phones": ["+86 755 2878 0808"],
            "lifecycle_stage": "prospect",
        },
        headers=h,
    )
    assert created.status_code == 201, created.text
    account = created.json()
    assert created.headers["location"] == f"/api/v1/accounts/{account['id']}"
    assert created.headers["etag"] == '"1"'
    assert account["registered_capital"] == "4034113182.00"

    stale = await capi.patch(
        f"/api/v1/accounts/{account['id']}", json={"tier": "vip"}, headers={**h, "If-Match": '"0"'}
    )
    assert stale.status_code in (200, 412)
    moved = await capi.patch(
        f"/api/v1/accounts/{account['id']}",
        json={"lifecycle_stage": "customer"},
        headers={**h, "If-Match": created.headers["etag"] if stale.status_code == 412 else '"2"'},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["lifecycle_stage"] == "customer"
    stale_again = await capi.patch(
        f"/api/v1/accounts/{account['id']}", json={"notes": "x"}, headers={**h, "If-Match": '"1"'}
    )
    assert_problem(stale_again, 412)

    history = await capi.get(f"/api/v1/accounts/{account['id']}/lifecycle-history", headers=h)
    stages = [(c["from_stage"], c["to_stage"]) for c in history.json()["items"]]
    assert stages[0] == ("prospect", "customer")
    assert stages[-1] == (None, "prospect")

    gone = await capi.delete(f"/api/v1/accounts/{account['id']}", headers=h)
    assert gone.status_code == 204
    live = await capi.get("/api/v1/accounts", headers=h)
    assert account["id"] not in [a["id"] for a in live.json()["items"]]
    binned = await capi.get("/api/v1/accounts", params={"deleted": "true"}, headers=h)
    assert [a["id"] for a in binned.json()["items"]] == [account["id"]]
    assert binned.json()["items"][0]["deleted_at"]
    back = await capi.post(f"/api/v1/accounts/{account['id']}/restore", headers=h)
    assert back.status_code == 200, back.text
    assert back.json()["deleted_at"] is None
    live = await capi.get("/api/v1/accounts", headers=h)
    assert [a["id"] for a in live.json()["items"]] == [account["id"]]


async def test_bad_input_is_a_422_naming_every_field(capi):
    company = await sign_up(capi)
    # What the document states (a name is required, and not empty) is refused at the edge, naming it...
    for body in ({"name": ""}, {"credit_code": credit_code(1)}):
        r = await capi.post("/api/v1/accounts", json=body, headers=company.headers)
        assert {e["field"] for e in assert_problem(r, 422, "validation_failed")["errors"]} == {"name"}
    # ...and what the service checks is refused by it, naming every field, in the same problem format.
    r = await capi.post(
        "/api/v1/accounts",
        json={
            "name": " ",
            "credit_code": "91440300MA5XXXXXX0",
            "emails": ["not-mail"],
            "satisfaction": 9,
        },
        headers=company.headers,
    )
    fields = {e["field"] for e in assert_problem(r, 422, "validation_failed")["errors"]}
    assert {"name", "credit_code", "emails[0]", "satisfaction"} <= fields
    bad_filter = await capi.get("/api/v1/accounts", params={"filter": "nosuch:eq:1"}, headers=company.headers)
    assert_problem(bad_filter, 422)
    bad_cursor = await capi.get("/api/v1/accounts", params={"cursor": "garbage"}, headers=company.headers)
    assert_problem(bad_cursor, 422)


async def test_another_tenants_records_are_404_everywhere(capi):
    mine, theirs = await sign_up(capi), await sign_up(capi, "腾讯科技")
    account = await create_account(capi, mine.headers, name="华为技术有限公司")
    contact = (
        await capi.post(
            "/api/v1/contacts",
            json={"name": "王小明", "account_ids": [account["id"]]},
            headers=mine.headers,
        )
    ).json()
    interaction = (
        await capi.post(
            "/api/v1/interactions",
            json={
                "kind": "call",
                "subject": "首次沟通",
                "account_ids": [account["id"]],
            },
            headers=mine.headers,
        )
    ).json()
    h = theirs.headers
    for method, path in (
        ("GET", f"/api/v1/accounts/{account['id']}"),
        ("PATCH", f"/api/v1/accounts/{account['id']}"),
        ("DELETE", f"/api/v1/accounts/{account['id']}"),
        ("GET", f"/api/v1/accounts/{account['id']}/timeline"),
        ("GET", f"/api/v1/accounts/{account['id']}/graph"),
        ("GET", f"/api/v1/accounts/{account['id']}/tree"),
        ("GET", f"/api/v1/contacts/{contact['id']}"),
        ("GET", f"/api/v1/contacts/{contact['id']}/timeline"),
        ("GET", f"/api/v1/interactions/{interaction['id']}"),
        ("POST", f"/api/v1/accounts/{account['id']}/restore"),
    ):
        kwargs = {"json": {"notes": "x"}} if method == "PATCH" else {}
        r = await capi.request(method, path, headers=h, **kwargs)
        assert_problem(r, 404)
    linked = await capi.post(
        "/api/v1/contacts", json={"name": "张三", "account_ids": [account["id"]]}, headers=h
    )
    assert_problem(linked, 422)
    related = await capi.post(
        "/api/v1/relationships",
        json={
            "type": "partner_of",
            "source": {"type": "account", "id": account["id"]},
            "target": {"type": "account", "id": account["id"]},
        },
        headers=h,
    )
    assert_problem(related, 404)
    found = await capi.get("/api/v1/search", params={"q": "华为"}, headers=h)
    assert found.json()["items"] == []


async def test_hidden_fields_never_leak_and_read_only_fields_refuse_writes(capi):
    company = await sign_up(capi)
    budget = await capi.post(
        "/api/v1/custom-fields",
        json={
            "record_type": "account",
            "key": "budget",
            "label_zh": "预算",
            "type": "currency",
        },
        headers=company.headers,
    )
    assert budget.status_code == 201, budget.text
    secret = await create_account(
        capi,
        company.headers,
        name="阿里巴巴集团控股有限公司",
        phones=["13800138000"],
        custom_fields={"budget": "880000.00"},
        tier="vip",
    )
    sales = await member(
        capi,
        company,
        [
            {
                "object": "account",
                "actions": ["read", "update", "create"],
                "data_scope": "all",
                "field_rules": [
                    {"field": "phones", "access": "hidden"},
                    {"field": "custom_budget", "access": "hidden"},
                    {"field": "tier", "access": "read_only"},
                ],
            }
        ],
    )
    got = await capi.get(f"/api/v1/accounts/{secret['id']}", headers=sales)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["phones"] == [] and "budget" not in body.get("custom_fields", {})
    assert body["tier"] == "vip"
    assert "13800138000" not in got.text and "880000" not in got.text
    listed = await capi.get("/api/v1/accounts", headers=sales)
    assert "13800138000" not in listed.text and "880000" not in listed.text

    # Searching by the hidden phone finds nothing; by the name it does, without the phone.
    by_phone = await capi.get("/api/v1/search", params={"q": "13800138000"}, headers=sales)
    assert by_phone.json()["items"] == []
    by_phone_list = await capi.get("/api/v1/accounts", params={"q": "138001"}, headers=sales)
    assert by_phone_list.json()["items"] == []
    by_name = await capi.get("/api/v1/search", params={"q": "阿里巴巴"}, headers=sales)
    assert [h["id"] for h in by_name.json()["items"]] == [secret["id"]]
    assert "13800138000" not in by_name.text
    # Filtering on a hidden field would reveal it: refused.
    probe = await capi.get(
        "/api/v1/accounts", params={"filter": "custom_fields.budget:gte:800000"}, headers=sales
    )
    assert_problem(probe, 403)
    # Read-only and hidden fields refuse writes, with a clear 403.
    for change in ({"tier": "normal"}, {"phones": ["13900139000"]}, {"custom_fields": {"budget": "1.00"}}):
        r = await capi.patch(f"/api/v1/accounts/{secret['id']}", json=change, headers=sales)
        assert_problem(r, 403, "field_read_only")
    ok = await capi.patch(f"/api/v1/accounts/{secret['id']}", json={"notes": "预算待确认"}, headers=sales)
    assert ok.status_code == 200, ok.text
    assert "880000" not in ok.text and "13800138000" not in ok.text


async def test_own_scope_sees_only_own_and_co_followed_accounts(capi):
    company = await sign_up(capi)
    other = await create_account(capi, company.headers, name="字节跳动有限公司")
    rep = await member(capi, company, [{"object": "account", "actions": ["*"], "data_scope": "own"}])
    mine = await create_account(capi, rep, name="小米科技有限责任公司")
    listed = await capi.get("/api/v1/accounts", headers=rep)
    assert [a["id"] for a in listed.json()["items"]] == [mine["id"]]
    assert_problem(await capi.get(f"/api/v1/accounts/{other['id']}", headers=rep), 404)
    me = (await capi.get("/api/v1/me", headers=rep)).json()["user"]["id"]
    shared = await capi.patch(
        f"/api/v1/accounts/{other['id']}", json={"team_member_ids": [me]}, headers=company.headers
    )
    assert shared.status_code == 200, shared.text
    listed = await capi.get("/api/v1/accounts", headers=rep)
    assert {a["id"] for a in listed.json()["items"]} == {mine["id"], other["id"]}


async def test_chinese_substrings_short_keywords_pinyin_and_typos_are_found(capi):
    company = await sign_up(capi)
    h = company.headers
    huawei = await create_account(capi, h, name="华为技术有限公司")
    await create_account(capi, h, name="中兴通讯股份有限公司")
    alibaba = await create_account(
        capi, h, name="Alibaba Group Holding Limited", emails=["ir@alibaba-inc.com"]
    )
    for q, expected in (
        ("华为", huawei),
        ("华", huawei),
        ("为技术", huawei),
        ("huawei", huawei),
        ("Alibba", alibaba),
    ):
        r = await capi.get("/api/v1/search", params={"q": q}, headers=h)
        assert r.status_code == 200, r.text
        assert expected["id"] in [hit["id"] for hit in r.json()["items"]], (q, r.json())
    listed = await capi.get("/api/v1/accounts", params={"q": "华为"}, headers=h)
    assert [a["id"] for a in listed.json()["items"]] == [huawei["id"]]
    by_mail = await capi.get("/api/v1/accounts", params={"q": "alibaba-inc"}, headers=h)
    assert [a["id"] for a in by_mail.json()["items"]] == [alibaba["id"]]
    contact = await capi.post(
        "/api/v1/contacts", json={"name": "王小明", "name_latin": "Wang Xiaoming"}, headers=h
    )
    people = await capi.get("/api/v1/search", params={"q": "小明"}, headers=h)
    assert contact.json()["id"] in [hit["id"] for hit in people.json()["items"]]


async def test_custom_fields_validate_filter_sort_and_are_described(capi):
    company = await sign_up(capi)
    h = company.headers
    for field in (
        {"key": "employees", "label_en": "Employees", "type": "number", "min": "0"},
        {
            "key": "channel",
            "label_zh": "渠道",
            "type": "single_select",
            "options": [{"value": "direct", "label_zh": "直销"}, {"value": "partner", "label_zh": "渠道"}],
        },
        {
            "key": "erp_code",
            "label_en": "ERP code",
            "type": "text",
            "unique": True,
            "searchable": True,
        },
    ):
        r = await capi.post(
            "/api/v1/custom-fields",
            json={"record_type": "account", **field},
            headers=h,
        )
        assert r.status_code == 201, r.text
    described = await capi.get("/api/v1/custom-fields", params={"record_type": "account"}, headers=h)
    assert [f["key"] for f in described.json()["items"]] == [
        "employees",
        "channel",
        "erp_code",
    ]  # by position, then creation

    a = await create_account(
        capi, h, name="甲公司", custom_fields={"employees": 120, "channel": "direct", "erp_code": "E-001"}
    )
    b = await create_account(
        capi, h, name="乙公司", custom_fields={"employees": 9000, "channel": "partner", "erp_code": "E-002"}
    )
    c = await create_account(capi, h, name="丙公司", custom_fields={"employees": 45})
    assert a["custom_fields"] == {"employees": 120, "channel": "direct", "erp_code": "E-001"}

    bad = await capi.post(
        "/api/v1/accounts",
        json={"name": "丁", "custom_fields": {"employees": -1, "channel": "cold-call", "nosuch": 1}},
        headers=h,
    )
    fields = {e["field"] for e in assert_problem(bad, 422)["errors"]}
    assert fields == {"custom_fields.employees", "custom_fields.channel", "custom_fields.nosuch"}
    dup = await capi.post(
        "/api/v1/accounts",
        json={"name": "戊", "custom_fields": {"erp_code": "E-001"}},
        headers=h,
    )
    assert_problem(dup, 422)

    big = await capi.get("/api/v1/accounts", params={"filter": "custom_fields.employees:gte:100"}, headers=h)
    assert {x["id"] for x in big.json()["items"]} == {a["id"], b["id"]}
    direct = await capi.get(
        "/api/v1/accounts", params={"filter": "custom_fields.channel:eq:direct"}, headers=h
    )
    assert [x["id"] for x in direct.json()["items"]] == [a["id"]]
    ordered = await capi.get(
        "/api/v1/accounts", params={"sort": "-custom_fields.employees", "limit": 1}, headers=h
    )
    ids = [ordered.json()["items"][0]["id"]]
    while ordered.json()["next_cursor"]:
        ordered = await capi.get(
            "/api/v1/accounts",
            params={"sort": "-custom_fields.employees", "limit": 1, "cursor": ordered.json()["next_cursor"]},
            headers=h,
        )
        ids += [x["id"] for x in ordered.json()["items"]]
    assert ids == [b["id"], a["id"], c["id"]]
    found = await capi.get("/api/v1/search", params={"q": "E-002"}, headers=h)
    assert [x["id"] for x in found.json()["items"]] == [b["id"]]
    count = await capi.get(
        "/api/v1/accounts/count", params={"filter": "custom_fields.employees:exists"}, headers=h
    )
    assert count.json() == {"count": 3, "exact": True}


async def test_hierarchy_graph_path_timeline_and_saved_views(capi):
    company = await sign_up(capi)
    h = company.headers
    group = await create_account(capi, h, name="华润（集团）有限公司")
    sub = await create_account(capi, h, name="华润置地有限公司", parent_id=group["id"])
    branch = await create_account(capi, h, name="华润置地北京分公司", parent_id=sub["id"])
    cycle = await capi.patch(f"/api/v1/accounts/{group['id']}", json={"parent_id": branch["id"]}, headers=h)
    assert_problem(cycle, 422)
    tree = (await capi.get(f"/api/v1/accounts/{branch['id']}/tree", headers=h)).json()
    assert tree["root_id"] == group["id"]
    assert [(n["id"], n["depth"]) for n in tree["nodes"]] == [
        (group["id"], 0),
        (sub["id"], 1),
        (branch["id"], 2),
    ]
    assert tree["nodes"][0]["subsidiary_count"] == 1 and tree["nodes"][0]["descendant_count"] == 2
    got = (await capi.get(f"/api/v1/accounts/{group['id']}", headers=h)).json()
    assert got["subsidiary_count"] == 1 and got["descendant_count"] == 2
    assert_problem(await capi.delete(f"/api/v1/accounts/{sub['id']}", headers=h), 409)

    partner = await create_account(capi, h, name="万科企业股份有限公司")
    boss = (
        await capi.post("/api/v1/contacts", json={"name": "郁亮", "account_ids": [partner["id"]]}, headers=h)
    ).json()
    rel = await capi.post(
        "/api/v1/relationships",
        json={
            "type": "partner_of",
            "source": {"type": "account", "id": branch["id"]},
            "target": {"type": "account", "id": partner["id"]},
        },
        headers=h,
    )
    assert rel.status_code == 201, rel.text
    wrong_kind = await capi.post(
        "/api/v1/relationships",
        json={
            "type": "reports_to",
            "source": {"type": "account", "id": group["id"]},
            "target": {"type": "contact", "id": boss["id"]},
        },
        headers=h,
    )
    assert_problem(wrong_kind, 422)
    graph = (await capi.get(f"/api/v1/accounts/{group['id']}/graph", params={"depth": 4}, headers=h)).json()
    assert {n["id"] for n in graph["nodes"]} == {
        group["id"],
        sub["id"],
        branch["id"],
        partner["id"],
        boss["id"],
    }
    assert {e["type"] for e in graph["edges"]} == {"parent_of", "partner_of", "works_at"}
    near = (await capi.get(f"/api/v1/accounts/{group['id']}/graph", headers=h)).json()
    assert {n["id"] for n in near["nodes"]} == {group["id"], sub["id"]}
    path = (
        await capi.get(
            "/api/v1/graph/path",
            params={
                "from_type": "contact",
                "from_id": boss["id"],
                "to_type": "account",
                "to_id": group["id"],
            },
            headers=h,
        )
    ).json()
    assert [n["id"] for n in path["nodes"]] == [
        boss["id"],
        partner["id"],
        branch["id"],
        sub["id"],
        group["id"],
    ]

    custom_type = await capi.post(
        "/api/v1/relationship-types",
        json={"key": "alumni_of", "name_zh": "校友", "name_en": "alumni of"},
        headers=h,
    )
    assert custom_type.status_code == 201, custom_type.text
    types = (await capi.get("/api/v1/relationship-types", headers=h)).json()["items"]
    assert {"reports_to", "partner_of", "alumni_of"} <= {t["key"] for t in types}

    for subject, when in (("电话回访", "2025-01-02T10:00:00Z"), ("上门拜访", "2025-02-03T10:00:00Z")):
        r = await capi.post(
            "/api/v1/interactions",
            json={
                "kind": "visit",
                "subject": subject,
                "occurred_at": when,
                "outcome": "同意试用",
                "account_ids": [partner["id"]],
                "contact_ids": [boss["id"]],
                "participants": [{"kind": "contact", "id": boss["id"], "name": "郁亮"}],
                "attachments": [{"name": "纪要.pdf", "content_type": "application/pdf", "size_bytes": 2048}],
            },
            headers=h,
        )
        assert r.status_code == 201, r.text
    timeline = (await capi.get(f"/api/v1/accounts/{partner['id']}/timeline", headers=h)).json()
    assert [i["interaction"]["subject"] for i in timeline["items"]] == ["上门拜访", "电话回访"]
    assert timeline["items"][0]["kind"] == "interaction.visit"
    contact_line = (await capi.get(f"/api/v1/contacts/{boss['id']}/timeline", headers=h)).json()
    assert len(contact_line["items"]) == 2

    view = await capi.post(
        "/api/v1/saved-views",
        json={
            "record_type": "account",
            "name": "华润集团",
            "filter": [f"parent_id:in:{group['id']}|{sub['id']}"],
            "sort": "name",
            "columns": ["name", "city"],
        },
        headers=h,
    )
    assert view.status_code == 201, view.text
    through_view = await capi.get("/api/v1/accounts", params={"view_id": view.json()["id"]}, headers=h)
    assert [a["id"] for a in through_view.json()["items"]] == [branch["id"], sub["id"]]
    other = await sign_up(capi, "别家")
    assert_problem(await capi.get(f"/api/v1/saved-views/{view.json()['id']}", headers=other.headers), 404)


async def test_search_pages_like_every_list_and_takes_every_record_type(capi):
    company = await sign_up(capi)
    h = company.headers
    accounts = [
        await create_account(capi, h, name=n) for n in ("星辰科技有限公司", "星辰", "上海星辰贸易有限公司")
    ]
    contacts = []
    for name in ("张星辰", "李星辰"):
        r = await capi.post("/api/v1/contacts", json={"name": name}, headers=h)
        assert r.status_code == 201, r.text
        contacts.append(r.json())
    await create_account(capi, h, name="月亮湾物流")  # no match

    async def walk(**params) -> list[dict]:
        hits, cursor = [], None
        while True:
            page = await capi.get(
                "/api/v1/search",
                params={**params, "limit": 2, **({"cursor": cursor} if cursor else {})},
                headers=h,
            )
            assert page.status_code == 200, page.text
            body = page.json()
            assert set(body) == {"items", "next_cursor"} and len(body["items"]) <= 2
            hits += body["items"]
            cursor = body["next_cursor"]
            if cursor is None:
                return hits

    everything = await walk(q="星辰")
    assert sorted(hit["id"] for hit in everything) == sorted(
        r["id"] for r in accounts + contacts
    )  # each once
    scores = [hit["score"] for hit in everything]
    assert scores == sorted(scores, reverse=True) and everything[0]["name"] == "星辰"  # best first
    one_page = (await capi.get("/api/v1/search", params={"q": "星辰", "limit": 200}, headers=h)).json()
    assert [hit["id"] for hit in one_page["items"]] == [hit["id"] for hit in everything]
    assert one_page["next_cursor"] is None

    # `types` takes each record type's short word (the values the document lists), alone or together.
    only_accounts = await walk(q="星辰", types="account")
    assert {hit["id"] for hit in only_accounts} == {a["id"] for a in accounts}
    assert {hit["type"] for hit in only_accounts} == {"account"}
    only_contacts = await walk(q="星辰", types="contact")
    assert {hit["id"] for hit in only_contacts} == {c["id"] for c in contacts}
    both = await walk(q="星辰", types=["account", "contact"])
    assert [hit["id"] for hit in both] == [hit["id"] for hit in everything]

    # Bad input is a 422, never a 500: a type spelled otherwise, no keyword, another search's cursor.
    for params in (
        {"q": "星辰", "types": "RECORD_TYPE_ACCOUNT"},
        {"q": "星辰", "types": "lead"},
        {},
        {"q": ""},
    ):
        assert_problem(await capi.get("/api/v1/search", params=params, headers=h), 422, "validation_failed")
    first = (await capi.get("/api/v1/search", params={"q": "星辰", "limit": 1}, headers=h)).json()
    foreign = await capi.get(
        "/api/v1/search", params={"q": "月亮", "cursor": first["next_cursor"]}, headers=h
    )
    assert_problem(foreign, 422, "validation_failed")
    listed = await capi.get("/api/v1/accounts", params={"cursor": first["next_cursor"]}, headers=h)
    assert_problem(listed, 422, "validation_failed")


async def test_enum_filters_take_the_short_words_of_bodies_and_answers(capi):
    company = await sign_up(capi)
    h = company.headers
    big = await create_account(capi, h, name="大客户", lifecycle_stage="customer", size="large")
    risky = await create_account(capi, h, name="流失风险客户", lifecycle_stage="at_risk", size="medium")
    new = await create_account(capi, h, name="潜在客户", lifecycle_stage="prospect")
    assert (big["lifecycle_stage"], big["size"], new["size"]) == ("customer", "large", None)

    async def ids(path: str, *filters: str, **params) -> list[str]:
        r = await capi.get(path, params={"filter": list(filters), **params}, headers=h)
        assert r.status_code == 200, r.text
        return [x["id"] for x in r.json()["items"]]

    assert await ids("/api/v1/accounts", "lifecycle_stage:eq:customer") == [big["id"]]
    assert await ids("/api/v1/accounts", "lifecycle_stage:eq:at_risk") == [risky["id"]]
    assert set(await ids("/api/v1/accounts", "size:in:large|medium")) == {big["id"], risky["id"]}
    assert set(await ids("/api/v1/accounts", "lifecycle_stage:ne:prospect")) == {big["id"], risky["id"]}
    assert await ids("/api/v1/accounts", "size:empty") == [new["id"]]
    by_stage = await ids("/api/v1/accounts", sort="lifecycle_stage")
    assert by_stage == [risky["id"], big["id"], new["id"]]  # at_risk, customer, prospect
    count = await capi.get(
        "/api/v1/accounts/count", params={"filter": "lifecycle_stage:eq:customer"}, headers=h
    )
    assert count.json() == {"count": 1, "exact": True}

    boss = await capi.post(
        "/api/v1/contacts", json={"name": "王总", "buying_role": "decision_maker"}, headers=h
    )
    assert boss.status_code == 201 and boss.json()["buying_role"] == "decision_maker", boss.text
    await capi.post("/api/v1/contacts", json={"name": "小李", "buying_role": "user"}, headers=h)
    assert await ids("/api/v1/contacts", "buying_role:eq:decision_maker") == [boss.json()["id"]]

    # A value that is no word of the enum: a 422 naming the filter and the words it takes.
    wrong = await capi.get("/api/v1/accounts", params={"filter": "lifecycle_stage:eq:vip"}, headers=h)
    [error] = assert_problem(wrong, 422, "validation_failed")["errors"]
    assert error["field"] == "filter" and "prospect, customer, loyal, at_risk, churned" in error["message"]
