"""The tenant's own OpenAPI document (GET /api/v1/openapi.json): the public document, with the `custom_fields`
of accounts and contacts typed by the caller's tenant's custom field definitions, and values the service
accepts are exactly those the schema allows."""

from __future__ import annotations

import json

import grpc
import jsonschema
import pytest
from crm_customers import models
from crm_customers.domain import custom_fields as cf
from crm_kit.validation import Check

from tests.customers.test_gateway_customers import capi, create_account, member  # noqa: F401
from tests.gateway.conftest import assert_problem, sign_up

FIELDS = [
    {
        "key": "slogan",
        "label_zh": "口号",
        "label_en": "Slogan",
        "type": "text",
        "max_length": 20,
    },
    {"key": "story", "label_en": "Story", "type": "long_text"},
    {
        "key": "employees",
        "label_en": "Employees",
        "type": "number",
        "min": "0",
        "max": "1000000",
    },
    {"key": "budget", "label_zh": "预算", "type": "currency", "required": True},
    {"key": "founded", "label_en": "Founded", "type": "date"},
    {"key": "last_audit", "label_en": "Last audit", "type": "datetime"},
    {"key": "listed", "label_en": "Listed", "type": "boolean"},
    {
        "key": "channel",
        "label_zh": "渠道",
        "type": "single_select",
        "options": [{"value": "direct"}, {"value": "partner"}],
    },
    {
        "key": "regions",
        "label_en": "Regions",
        "type": "multi_select",
        "options": [{"value": "north"}, {"value": "south"}],
    },
    {"key": "homepage", "label_en": "Homepage", "type": "url"},
    {"key": "billing_email", "label_en": "Billing e-mail", "type": "email"},
    {"key": "hotline", "label_en": "Hotline", "type": "phone"},
    {"key": "erp_code", "label_en": "ERP code", "type": "text", "pattern": "E-[0-9]+"},
]


async def define(capi, headers, record_type, fields):  # noqa: F811
    for field in fields:
        r = await capi.post(
            "/api/v1/custom-fields",
            json={"record_type": record_type, **field},
            headers=headers,
        )
        assert r.status_code == 201, r.text


def custom(doc, name):
    return doc["components"]["schemas"][name]["properties"]["custom_fields"]


def obj(schema):
    """The object branch of a schema that may also be null."""
    if "anyOf" in schema:
        [schema] = [s for s in schema["anyOf"] if s.get("type") == "object"]
    return schema


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
    await define(capi, h, "account", FIELDS)
    await define(
        capi,
        h,
        "contact",
        [{"key": "wechat_group", "label_zh": "微信群", "type": "text"}],
    )

    r = await capi.get("/api/v1/openapi.json", headers=h)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "private, max-age=30" and "ratelimit-remaining" in r.headers
    doc = r.json()
    assert doc["info"]["x-tenant-id"] == company.tenant["id"]
    out = obj(custom(doc, "Account"))["properties"]
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
    # Lists hold the same Account; the contact is typed by its own fields.
    page = doc["components"]["schemas"]["AccountPage"]["properties"]["items"]["items"]
    assert page == {"$ref": "#/components/schemas/Account"}
    assert list(obj(custom(doc, "Contact"))["properties"]) == ["wechat_group"]
    assert "required" not in obj(custom(doc, "ContactInput"))  # no required contact field: may be left out

    # Create bodies: the required ones (so custom_fields itself), nothing unknown; PATCH bodies: any key,
    # null removes it.
    create = custom(doc, "AccountInput")
    assert create["required"] == ["budget"] and create["additionalProperties"] is False
    assert "custom_fields" in doc["components"]["schemas"]["AccountInput"]["required"]
    patch = obj(custom(doc, "AccountPatch"))
    assert "required" not in patch and {"type": "null"} in patch["properties"]["budget"]["anyOf"]
    assert patch["additionalProperties"] is False

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
            "/api/v1/accounts", json={"name": "某公司", "custom_fields": bad}, headers=h
        )
        assert_problem(refused, 422)
    assert not validator(create).is_valid({k: v for k, v in good.items() if k != "budget"})

    # The public document stays tenant-neutral; another tenant's document has only its own fields.
    public = (await capi.get("/openapi.json")).json()
    assert "properties" not in custom(public, "Account")
    assert public["paths"]["/api/v1/openapi.json"]["get"]["responses"]["401"]
    other = await sign_up(capi)
    theirs = (await capi.get("/api/v1/openapi.json", headers=other.headers)).json()
    assert obj(custom(theirs, "Account"))["properties"] == {}
    await define(capi, other.headers, "account", [FIELDS[6]])
    theirs = (await capi.get("/api/v1/openapi.json", headers=other.headers)).json()
    assert list(obj(custom(theirs, "Account"))["properties"]) == ["listed"]

    # Who may read neither accounts nor contacts cannot list the definitions: the public document.
    outsider = await member(capi, company, [{"object": "opportunity", "actions": ["read"]}])
    blind = (await capi.get("/api/v1/openapi.json", headers=outsider)).json()
    assert "properties" not in custom(blind, "Account") and "x-tenant-id" not in blind["info"]


async def test_the_tenant_document_is_cached_briefly(capi):  # noqa: F811
    company = await sign_up(capi)
    first = (await capi.get("/api/v1/openapi.json", headers=company.headers)).json()
    await define(capi, company.headers, "account", [FIELDS[6]])
    cached = (await capi.get("/api/v1/openapi.json", headers=company.headers)).json()
    assert custom(cached, "Account") == custom(first, "Account")  # within the 30 s
    documents = capi.app.state.tenant_documents
    ttl, documents.ttl = documents.ttl, 0
    try:
        documents._cache.clear()
        fresh = (await capi.get("/api/v1/openapi.json", headers=company.headers)).json()
    finally:
        documents.ttl = ttl
    assert list(obj(custom(fresh, "Account"))["properties"]) == ["listed"]


async def test_the_service_states_the_schemas_and_only_to_who_may_read_records(identity, customers):
    """GetCustomFieldSchemas (no REST route of its own): one per record type, JSON text, behind the same
    permission as the definitions."""
    from crm.customers.v1 import customers_pb2 as pb

    from tests.customers.helpers import auth, invite_and_join, role, rpc_error
    from tests.customers.helpers import sign_up as sign_up_grpc

    company = await sign_up_grpc(identity)
    await customers.CreateCustomField(
        pb.CreateCustomFieldRequest(
            custom_field=pb.CustomField(
                record_type=pb.RECORD_TYPE_CONTACT,
                key="nickname",
                label_en="Nickname",
                type=pb.CUSTOM_FIELD_TYPE_TEXT,
            )
        ),
        metadata=company.md,
    )
    answer = await customers.GetCustomFieldSchemas(pb.GetCustomFieldSchemasRequest(), metadata=company.md)
    assert [s.record_type for s in answer.schemas] == [pb.RECORD_TYPE_ACCOUNT, pb.RECORD_TYPE_CONTACT]
    accounts, contacts = (
        {k: json.loads(getattr(s, k)) for k in ("output", "create", "update")} for s in answer.schemas
    )
    assert accounts["output"]["properties"] == {} and accounts["create"]["additionalProperties"] is False
    nickname = contacts["output"]["properties"]["nickname"]
    assert (
        nickname["type"] == "string"
        and nickname["maxLength"] == cf.TEXT_MAX
        and nickname["title"] == "Nickname"
    )
    assert contacts["update"]["properties"]["nickname"]["anyOf"][1] == {"type": "null"}

    blind = await role(identity, company, "只看商机", [{"object": "opportunity", "actions": ["read"]}])
    _, token = await invite_and_join(identity, company, role_ids=[blind])
    err = await rpc_error(
        customers.GetCustomFieldSchemas(pb.GetCustomFieldSchemasRequest(), metadata=auth(token.access_token))
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def _definition(type_: str, **rules) -> models.CustomField:
    defaults = dict(
        label_zh="", label_en="F", help_zh="", help_en="", pattern="", min="", max="", max_length=0
    )
    return models.CustomField(key="f", type=type_, options=rules.pop("options", []), **{**defaults, **rules})


SAMPLES = [
    "",
    " ",
    "x",
    "x" * 255,
    "x" * 256,
    "E-1",
    "e-1",
    " E-1 ",
    "12",
    "-3.5",
    "1250.00",
    "12.34567",
    "9" * 16,
    "9" * 17,
    "1987-09-15",
    "1987/09/15",
    "2026-01-31T09:30:00Z",
    "2026-01-31T09:30:00",
    "https://www.huawei.com",
    " HTTPS://huawei.com/x ",
    "ftp://x",
    "http://",
    "2026-01-31 09:30:00+08:00",
    "2026-13-01T00:00:00Z",
    "mailto:ar@huawei.com",
    "ar@huawei",
    "138 0013 8000",
    "(0755) 2878-0808",
    "ar@huawei.com",
    "not-mail",
    "+86 755 2878 0808",
    "direct",
    "cold-call",
    0,
    -1,
    120,
    1.5,
    10**20,
    True,
    False,
    None,
    ["north"],
    ["north", "north"],
    ["east"],
    [],
    {"a": 1},
]


@pytest.mark.parametrize(
    "definition",
    [
        _definition("text"),
        _definition("text", max_length=20, pattern="E-[0-9]+"),
        _definition("long_text"),
        _definition("number", min="0", max="1000000"),
        _definition("currency"),
        _definition("date"),
        _definition("datetime"),
        _definition("boolean"),
        _definition("single_select", options=[{"value": "direct"}, {"value": "partner"}]),
        _definition("multi_select", options=[{"value": "north"}, {"value": "south"}]),
        _definition("url"),
        _definition("email"),
        _definition("phone"),
    ],
    ids=lambda d: f"{d.type}{'+rules' if d.max_length or d.min else ''}",
)
def test_what_a_value_schema_allows_the_service_takes(definition):
    """value_schema and the service's check (merge_values → canonical) read the same rules: no value passes
    the schema and is refused. (Whether a phone number exists in its numbering plan only the service can tell:
    for phones the schema refuses what is no phone number at all.)"""
    check_schema = validator(cf.value_schema(definition))
    allowed, refused = 0, []
    for value in SAMPLES:
        if not check_schema.is_valid(value):
            continue
        allowed += 1
        check = Check()
        cf.merge_values(check, {"f": definition}, {}, {"f": value}, creating=False)
        if check.errors and not (definition.type == "phone" and "valid phone" in check.errors[0].message):
            refused.append((value, check.errors[0].message))
    assert not refused, f"{definition.type}: the schema allows what the service refuses: {refused}"
    assert allowed  # the corpus says something about every type


def test_bounds_of_decimal_strings_dates_and_times_are_stated_as_annotations():
    """JSON Schema bounds only numbers: the bounds of currency, date and datetime values (strings) are
    x-minimum / x-maximum, in the values' own form."""
    for type_, low, high in (("currency", "-10", "100000"), ("date", "1990-01-01", "2030-12-31")):
        schema = cf.value_schema(_definition(type_, min=low, max=high))
        assert (schema["x-minimum"], schema["x-maximum"]) == (low, high)
    number = cf.value_schema(_definition("number", min="0.5", max="10"))
    assert (number["minimum"], number["maximum"]) == (0.5, 10)
