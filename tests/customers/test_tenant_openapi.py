"""The tenant's own OpenAPI document (GET /api/v1/openapi.json): the public document, with the `custom_fields`
of accounts and contacts typed by the caller's tenant's custom field definitions, and values the service
accepts are exactly those the schema allows."""

from __future__ import annotations

import jsonschema
import pytest

from tests.customers.test_gateway_customers import capi, create_account, member  # noqa: F401
from tests.gateway.conftest import assert_problem, sign_up

FIELDS = [
    {
        "key": "slogan",
        "label_zh": "口号",
        "label_en": "Slogan",
        "type": "CUSTOM_FIELD_TYPE_TEXT",
        "max_length": 20,
    },
    {"key": "story", "label_en": "Story", "type": "CUSTOM_FIELD_TYPE_LONG_TEXT"},
    {
        "key": "employees",
        "label_en": "Employees",
        "type": "CUSTOM_FIELD_TYPE_NUMBER",
        "min": "0",
        "max": "1000000",
    },
    {"key": "budget", "label_zh": "预算", "type": "CUSTOM_FIELD_TYPE_CURRENCY", "required": True},
    {"key": "founded", "label_en": "Founded", "type": "CUSTOM_FIELD_TYPE_DATE"},
    {"key": "last_audit", "label_en": "Last audit", "type": "CUSTOM_FIELD_TYPE_DATETIME"},
    {"key": "listed", "label_en": "Listed", "type": "CUSTOM_FIELD_TYPE_BOOLEAN"},
    {
        "key": "channel",
        "label_zh": "渠道",
        "type": "CUSTOM_FIELD_TYPE_SINGLE_SELECT",
        "options": [{"value": "direct"}, {"value": "partner"}],
    },
    {
        "key": "regions",
        "label_en": "Regions",
        "type": "CUSTOM_FIELD_TYPE_MULTI_SELECT",
        "options": [{"value": "north"}, {"value": "south"}],
    },
    {"key": "homepage", "label_en": "Homepage", "type": "CUSTOM_FIELD_TYPE_URL"},
    {"key": "billing_email", "label_en": "Billing e-mail", "type": "CUSTOM_FIELD_TYPE_EMAIL"},
    {"key": "hotline", "label_en": "Hotline", "type": "CUSTOM_FIELD_TYPE_PHONE"},
    {"key": "erp_code", "label_en": "ERP code", "type": "CUSTOM_FIELD_TYPE_TEXT", "pattern": "E-[0-9]+"},
]


async def define(capi, headers, record_type, fields):  # noqa: F811
    for field in fields:
        r = await capi.post(
            "/api/v1/custom-fields",
            json={"custom_field": {"record_type": record_type, **field}},
            headers=headers,
        )
        assert r.status_code == 201, r.text


def custom(doc, name):
    return doc["components"]["schemas"][name]["properties"]["custom_fields"]


def validator(schema):
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.fixture
def fresh(capi):  # noqa: F811
    """Tenant documents rebuilt on every request (instead of after 30 s) for the length of a test."""
    documents = capi.app.state.tenant_documents
    ttl, documents.ttl = documents.ttl, 0
    yield
    documents.ttl = ttl


async def test_custom_fields_are_typed_per_tenant_in_the_tenant_document(capi, fresh):  # noqa: F811
    assert_problem(await capi.get("/api/v1/openapi.json"), 401)
    company = await sign_up(capi)
    h = company.headers
    await define(capi, h, "RECORD_TYPE_ACCOUNT", FIELDS)
    await define(
        capi,
        h,
        "RECORD_TYPE_CONTACT",
        [{"key": "wechat_group", "label_zh": "微信群", "type": "CUSTOM_FIELD_TYPE_TEXT"}],
    )

    r = await capi.get("/api/v1/openapi.json", headers=h)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "private, max-age=30" and "ratelimit-remaining" in r.headers
    doc = r.json()
    assert doc["info"]["x-tenant-id"] == company.tenant["id"]
    out = custom(doc, "Account")["properties"]
    assert list(out) == [f["key"] for f in FIELDS]
    assert out["slogan"]["type"] == "string" and out["slogan"]["maxLength"] == 20
    assert out["slogan"]["title"] == "Slogan" and out["slogan"]["x-label-zh"] == "口号"
    assert out["employees"] == {**out["employees"], "type": "number", "minimum": 0, "maximum": 1000000}
    assert (out["budget"]["type"], out["budget"]["format"], out["budget"]["title"]) == (
        "string",
        "decimal",
        "预算",
    )
    assert out["founded"]["format"] == "date" and out["last_audit"]["format"] == "date-time"
    assert out["listed"]["type"] == "boolean"
    assert out["channel"]["enum"] == ["direct", "partner"]
    assert out["regions"]["type"] == "array" and out["regions"]["items"]["enum"] == ["north", "south"]
    formats = {k: out[k]["format"] for k in ("homepage", "billing_email", "hotline")}
    assert formats == {"homepage": "uri", "billing_email": "email", "hotline": "phone"}
    assert out["erp_code"]["pattern"] == "^(?:E-[0-9]+)$"
    # The other answers holding an account, and the contact, are typed the same way.
    for name in ("AccountWithDuplicates",):
        assert list(custom(doc, name)["properties"]) == list(out)
    assert list(custom(doc, "Contact")["properties"]) == ["wechat_group"]

    # Create bodies: the required ones, nothing unknown; PATCH bodies: any key, null removes it.
    [create] = [s for s in custom(doc, "AccountInput")["anyOf"] if s.get("type") == "object"]
    assert create["required"] == ["budget"] and create["additionalProperties"] is False
    [patch] = [s for s in custom(doc, "AccountUpdate")["anyOf"] if s.get("type") == "object"]
    assert "required" not in patch and {"type": "null"} in patch["properties"]["budget"]["anyOf"]

    # What the schema allows, the service takes; what it refuses, the service refuses too.
    good = {
        "slogan": "更好",
        "employees": 120,
        "budget": "880000.00",
        "founded": "1987-09-15",
        "last_audit": "2026-01-31T09:30:00Z",
        "listed": True,
        "channel": "direct",
        "regions": ["north"],
        "homepage": "https://www.huawei.com",
        "billing_email": "ar@huawei.com",
        "hotline": "+86 755 2878 0808",
        "erp_code": "E-001",
    }
    validator(create).validate(good)
    created = await create_account(capi, h, name="华为技术有限公司", custom_fields=good)
    validator(custom(doc, "Account")).validate(created["custom_fields"])
    for key, value in (
        ("slogan", "x" * 21),
        ("employees", -1),
        ("budget", "12.34567"),
        ("founded", "1987/09/15"),
        ("channel", "cold-call"),
        ("regions", ["east"]),
        ("erp_code", "X-1"),
        ("nosuch", 1),
    ):
        bad = {**good, key: value}
        assert not validator(create).is_valid(bad), key
        refused = await capi.post(
            "/api/v1/accounts", json={"account": {"name": "某公司", "custom_fields": bad}}, headers=h
        )
        assert_problem(refused, 422)
    assert not validator(create).is_valid({k: v for k, v in good.items() if k != "budget"})

    # The public document stays tenant-neutral; another tenant's document has only its own fields.
    public = (await capi.get("/openapi.json")).json()
    assert "properties" not in custom(public, "Account")
    assert public["paths"]["/api/v1/openapi.json"]["get"]["responses"]["401"]
    other = await sign_up(capi)
    theirs = (await capi.get("/api/v1/openapi.json", headers=other.headers)).json()
    assert custom(theirs, "Account")["properties"] == {}
    await define(capi, other.headers, "RECORD_TYPE_ACCOUNT", [FIELDS[6]])
    theirs = (await capi.get("/api/v1/openapi.json", headers=other.headers)).json()
    assert list(custom(theirs, "Account")["properties"]) == ["listed"]

    # Who may read neither accounts nor contacts cannot list the definitions: the public document.
    outsider = await member(capi, company, [{"object": "opportunity", "actions": ["read"]}])
    blind = (await capi.get("/api/v1/openapi.json", headers=outsider)).json()
    assert "properties" not in custom(blind, "Account") and "x-tenant-id" not in blind["info"]


async def test_the_tenant_document_is_cached_briefly(capi):  # noqa: F811
    company = await sign_up(capi)
    first = (await capi.get("/api/v1/openapi.json", headers=company.headers)).json()
    await define(capi, company.headers, "RECORD_TYPE_ACCOUNT", [FIELDS[6]])
    cached = (await capi.get("/api/v1/openapi.json", headers=company.headers)).json()
    assert custom(cached, "Account") == custom(first, "Account")  # within the 30 s
    documents = capi.app.state.tenant_documents
    ttl, documents.ttl = documents.ttl, 0
    try:
        documents._cache.clear()
        fresh = (await capi.get("/api/v1/openapi.json", headers=company.headers)).json()
    finally:
        documents.ttl = ttl
    assert list(custom(fresh, "Account")["properties"]) == ["listed"]
