"""Hidden fields do not leak through which records match: a keyword search (lists, counts, the global search,
exports) never matches on a name, phone or e-mail the caller may not see, and filters or sorts on a hidden
field — or on a part of one — are refused. Through the gateway, as a client."""

from __future__ import annotations

import csv
import io

from tests.customers.test_gateway_customers import capi, create_account, member  # noqa: F401
from tests.gateway.conftest import assert_problem, sign_up


def hiding(obj: str, *fields: str, actions=("read", "export")) -> list[dict]:
    return [
        {
            "object": obj,
            "actions": list(actions),
            "data_scope": "all",
            "field_rules": [{"field": f, "access": "hidden"} for f in fields],
        }
    ]


async def ids(capi, path, headers, **params) -> list[str]:  # noqa: F811
    r = await capi.get(path, params=params, headers=headers)
    assert r.status_code == 200, r.text
    return [item["id"] for item in r.json()["items"]]


async def found(capi, headers, q) -> list[str]:  # noqa: F811
    r = await capi.get("/api/v1/search", params={"q": q}, headers=headers)
    assert r.status_code == 200, r.text
    return [hit["id"] for hit in r.json()["items"]]


async def exported(capi, headers, record_type, q) -> list[list[str]]:  # noqa: F811
    r = await capi.get(
        "/api/v1/exports", params={"record_type": record_type, "format": "csv", "q": q}, headers=headers
    )
    assert r.status_code == 200, r.text
    return list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))[1:]


async def test_a_hidden_account_name_is_never_matched_by_a_keyword(capi):  # noqa: F811
    company = await sign_up(capi)
    h = company.headers
    ali = await create_account(
        capi, h, name="阿里巴巴集团控股有限公司", alt_name="Tmall Group", phones=["13800138000"]
    )
    await create_account(capi, h, name="腾讯控股有限公司")
    for q in ("阿里巴巴", "集团", "阿", "tmall", "13800138000"):
        assert await ids(capi, "/api/v1/accounts", h, q=q) == [ali["id"]], q
    assert ali["id"] in await found(capi, h, "阿里巴巴")

    no_name = await member(capi, company, hiding("account", "name"))
    for q in ("阿里巴巴", "集团", "阿", "控股有限"):
        assert await ids(capi, "/api/v1/accounts", no_name, q=q) == [], q
        assert await found(capi, no_name, q) == [], q
        assert await exported(capi, no_name, "account", q) == [], q
        count = await capi.get("/api/v1/accounts/count", params={"q": q}, headers=no_name)
        assert count.json()["count"] == 0, q
    # What they may see still finds it: the other name, the phone.
    for q in ("tmall", "138001"):
        assert await ids(capi, "/api/v1/accounts", no_name, q=q) == [ali["id"]], q
    [hit] = (await capi.get("/api/v1/search", params={"q": "Tmall"}, headers=no_name)).json()["items"]
    assert hit["id"] == ali["id"] and hit["name"] is None
    for params in ({"filter": "name:prefix:阿里"}, {"filter": "name:eq:x"}, {"sort": "name"}):
        assert_problem(
            await capi.get("/api/v1/accounts", params=params, headers=no_name), 403, "field_hidden"
        )

    no_alt = await member(capi, company, hiding("account", "alt_name"))
    assert await ids(capi, "/api/v1/accounts", no_alt, q="tmall") == []
    assert await found(capi, no_alt, "Tmall") == []
    assert await ids(capi, "/api/v1/accounts", no_alt, q="阿里巴巴") == [ali["id"]]
    assert await found(capi, no_alt, "阿里巴巴") == [ali["id"]]

    no_phone = await member(capi, company, hiding("account", "phones"))
    assert await ids(capi, "/api/v1/accounts", no_phone, q="138001") == []
    assert await exported(capi, no_phone, "account", "13800138000") == []
    assert_problem(
        await capi.get("/api/v1/accounts", params={"filter": "phones:eq:13800138000"}, headers=no_phone), 403
    )


async def test_hidden_contact_names_consent_and_accounts_do_not_leak_through_lists(capi):  # noqa: F811
    company = await sign_up(capi)
    h = company.headers
    account = await create_account(capi, h, name="小米科技有限责任公司")
    wang = await capi.post(
        "/api/v1/contacts",
        json={
            "name": "王小明",
            "name_latin": "Wang Xiaoming",
            "emails": ["xm@mi.com"],
            "account_ids": [account["id"]],
            "consent": {"email": True},
        },
        headers=h,
    )
    assert wang.status_code == 201, wang.text
    wid = wang.json()["id"]
    for q in ("wang", "小明", "xm@mi"):
        assert await ids(capi, "/api/v1/contacts", h, q=q) == [wid], q

    no_latin = await member(capi, company, hiding("contact", "name_latin", "emails"))
    # "wang" is in the Latin name (hidden) and in the pinyin of 王小明: only the name itself counts now.
    for q in ("wang", "xiaoming", "xm@mi"):
        assert await ids(capi, "/api/v1/contacts", no_latin, q=q) == [], q
        assert await found(capi, no_latin, q) == [], q
        assert await exported(capi, no_latin, "contact", q) == [], q
    assert await ids(capi, "/api/v1/contacts", no_latin, q="小明") == [wid]

    private = await member(capi, company, hiding("contact", "consent", "account_ids"))
    for params in (
        {"filter": "consent.email:eq:true"},
        {"filter": "consent.sms:eq:false"},
        {"account_id": account["id"]},
        {"filter": f"account_ids:eq:{account['id']}"},
    ):
        assert_problem(
            await capi.get("/api/v1/contacts", params=params, headers=private), 403, "field_hidden"
        )
        assert_problem(
            await capi.get("/api/v1/contacts/count", params=params, headers=private), 403, "field_hidden"
        )
    assert await ids(capi, "/api/v1/contacts", h, filter="consent.email:eq:true") == [wid]
    assert await ids(capi, "/api/v1/contacts", h, account_id=account["id"]) == [wid]
