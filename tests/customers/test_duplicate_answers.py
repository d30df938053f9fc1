"""What duplicate rules say on a create or update through the API: "warn" answers the saved record with its
`duplicates` (a read-only field of the record, filled only in these answers), "block" answers 409 `duplicate_found` listing the same candidates; a candidate outside the
caller's data scope, or a field the caller may not see, never shows its name or values."""

from __future__ import annotations

import grpc
from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import duplicates_pb2
from crm_kit.errors import from_rpc_error
from google.protobuf import field_mask_pb2

from tests.customers.helpers import (
    auth,
    invite_and_join,
    new_account,
    role,
    rpc_error,
    sign_up,
    without_default_rules,
)
from tests.customers.test_dedup import add_rule, data  # noqa: F401
from tests.customers.test_gateway_customers import capi, create_account, member  # noqa: F401
from tests.gateway.conftest import assert_problem
from tests.gateway.conftest import sign_up as sign_up_http

CONTACT = pb.RECORD_TYPE_CONTACT
BLOCK, WARN = duplicates_pb2.DUPLICATE_ACTION_BLOCK, duplicates_pb2.DUPLICATE_ACTION_WARN
PHONE = duplicates_pb2.DUPLICATE_MATCH_PHONE


async def test_warn_answers_the_saved_account_and_contact_with_their_candidates(identity, customers, data):  # noqa: F811
    company = await sign_up(identity)
    rule = await add_rule(data, company, PHONE)
    contact_rule = await add_rule(data, company, duplicates_pb2.DUPLICATE_MATCH_EMAIL, CONTACT)
    first = await new_account(customers, company, "小米科技有限责任公司", phones=["13800138000"])

    created = await customers.CreateAccount(
        pb.CreateAccountRequest(account=pb.Account(name="北京小米", phones=["+86 138-0013-8000"])),
        metadata=company.md,
    )
    assert created.account.id  # saved
    [candidate] = created.account.duplicates
    assert (candidate.id, candidate.name, candidate.record_type) == (
        first.id,
        "小米科技有限责任公司",
        "account",
    )
    assert list(candidate.rule_ids) == [rule.id] and list(candidate.matches) == [PHONE]
    assert candidate.score == 1.0 and list(candidate.matched_values) == ["+8613800138000"]

    # An update that makes a duplicate answers the candidates too; one that touches no matched field, none.
    other = await new_account(customers, company, "雷军工作室")
    updated = await customers.UpdateAccount(
        pb.UpdateAccountRequest(
            id=other.id,
            account=pb.Account(phones=["13800138000"]),
            update_mask=field_mask_pb2.FieldMask(paths=["phones"]),
        ),
        metadata=company.md,
    )
    assert {c.id for c in updated.account.duplicates} == {first.id, created.account.id}
    quiet = await customers.UpdateAccount(
        pb.UpdateAccountRequest(
            id=other.id, account=pb.Account(notes="x"), update_mask=field_mask_pb2.FieldMask(paths=["notes"])
        ),
        metadata=company.md,
    )
    assert not quiet.account.duplicates

    person = await customers.CreateContact(
        pb.CreateContactRequest(contact=pb.Contact(name="王小明", emails=["xm@mi.com"])), metadata=company.md
    )
    assert not person.contact.duplicates
    twin = await customers.CreateContact(
        pb.CreateContactRequest(contact=pb.Contact(name="小明", emails=["XM@mi.com"])), metadata=company.md
    )
    assert [(c.id, c.name, list(c.rule_ids)) for c in twin.contact.duplicates] == [
        (person.contact.id, "王小明", [contact_rule.id])
    ]
    changed = await customers.UpdateContact(
        pb.UpdateContactRequest(
            id=person.contact.id,
            contact=pb.Contact(emails=["xm@mi.com", "wang@mi.com"]),
            update_mask=field_mask_pb2.FieldMask(paths=["emails"]),
        ),
        metadata=company.md,
    )
    assert [c.id for c in changed.contact.duplicates] == [twin.contact.id]
    # Only the answer that produced them carries them: the record read back has none.
    again = await customers.GetAccount(pb.GetAccountRequest(id=created.account.id), metadata=company.md)
    assert not again.account.duplicates


async def test_candidates_outside_the_scope_or_with_a_hidden_name_show_no_name(identity, customers, data):  # noqa: F811
    company = await sign_up(identity)
    await add_rule(data, company, PHONE)
    secret = await new_account(customers, company, "华为技术有限公司", phones=["13800138000"])
    own = await role(
        identity,
        company,
        "只看自己的",
        [{"object": "account", "actions": ["read", "create", "update"], "data_scope": "DATA_SCOPE_OWN"}],
    )
    _, token = await invite_and_join(identity, company, role_ids=[own])
    rep = auth(token.access_token)
    mine = await new_account(customers, company, "华为终端", md=rep, phones=["13900139000"])
    created = await customers.CreateAccount(
        pb.CreateAccountRequest(account=pb.Account(name="华为深圳", phones=["13800138000", "13900139000"])),
        metadata=rep,
    )
    shown = {c.id: c for c in created.account.duplicates}
    assert set(shown) == {secret.id, mine.id}
    # Outside the scope: that it exists (id, score, rule, match), not what it is.
    assert shown[secret.id].name == "" and not shown[secret.id].matched_values
    assert list(shown[secret.id].matches) == [PHONE] and shown[secret.id].score == 1.0
    assert shown[mine.id].name == "华为终端" and list(shown[mine.id].matched_values) == ["+8613900139000"]

    # A caller who may not see names or phones changes another field of a record whose phone matches: the
    # candidate comes without its name, and without the phone it matched on.
    hides = await role(
        identity,
        company,
        "看不到名称和电话",
        [
            {
                "object": "account",
                "actions": ["read", "update"],
                "data_scope": "DATA_SCOPE_ALL",
                "field_rules": [
                    {"field": "name", "access": "FIELD_ACCESS_HIDDEN"},
                    {"field": "phones", "access": "FIELD_ACCESS_HIDDEN"},
                ],
            }
        ],
    )
    _, token = await invite_and_join(identity, company, role_ids=[hides])
    twin = await new_account(customers, company, "华为技术（深圳）有限公司", phones=["13800138000"])
    blind = await customers.UpdateAccount(
        pb.UpdateAccountRequest(
            id=twin.id,
            account=pb.Account(alt_name="HUAWEI"),
            update_mask=field_mask_pb2.FieldMask(paths=["alt_name"]),
        ),
        metadata=auth(token.access_token),
    )
    assert secret.id in {c.id for c in blind.account.duplicates}
    assert all(c.name == "" and not c.matched_values for c in blind.account.duplicates)
    assert "华为" not in str(blind.account.duplicates)
    # A caller who may create but not read accounts learns ids only.
    writer = await role(identity, company, "只能新建", [{"object": "account", "actions": ["create"]}])
    _, token = await invite_and_join(identity, company, role_ids=[writer])
    created = await customers.CreateAccount(
        pb.CreateAccountRequest(account=pb.Account(name="某公司", phones=["13800138000"])),
        metadata=auth(token.access_token),
    )
    assert {c.id for c in created.account.duplicates} >= {secret.id, twin.id}
    assert all(c.name == "" and not c.matched_values for c in created.account.duplicates)


async def test_block_lists_the_candidates_in_the_error(identity, customers, data):  # noqa: F811
    company = await sign_up(identity)
    await add_rule(data, company, PHONE, on_create=BLOCK)
    first = await new_account(customers, company, "小米科技有限责任公司", phones=["13800138000"])
    err = await rpc_error(
        customers.CreateAccount(
            pb.CreateAccountRequest(account=pb.Account(name="北京小米", phones=["13800138000"])),
            metadata=company.md,
        )
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    details = from_rpc_error(err)
    assert details.reason == "duplicate_found"
    [candidate] = details.extensions["duplicates"]
    assert candidate["id"] == first.id and candidate["name"] == "小米科技有限责任公司"
    assert candidate["matches"] == ["phone"] and candidate["score"] == 1.0
    assert candidate["record_type"] == "account" and candidate["matched_values"] == ["+8613800138000"]


async def test_through_the_gateway_warn_shows_duplicates_and_block_is_a_409_listing_them(capi, data):  # noqa: F811
    company = await sign_up_http(capi)
    h = company.headers
    await without_default_rules(data, company.tenant["id"], auth(company.tokens["access_token"]))
    r = await capi.post(
        "/api/v1/duplicate-rules",
        json={
            "name": "同号码",
            "record_type": "account",
            "match": "phone",
            "on_create": "warn",
            "on_update": "block",
        },
        headers=h,
    )
    assert r.status_code == 201, r.text
    first = await create_account(capi, h, name="小米科技有限责任公司", phones=["13800138000"])
    assert first["duplicates"] == []
    second = await capi.post(
        "/api/v1/accounts", json={"name": "北京小米", "phones": ["138 0013 8000"]}, headers=h
    )
    assert second.status_code == 201, second.text
    body = second.json()
    assert body["name"] == "北京小米" and second.headers["etag"] == '"1"'
    [candidate] = body["duplicates"]
    assert candidate["id"] == first["id"] and candidate["name"] == "小米科技有限责任公司"
    assert candidate["matches"] == ["phone"] and candidate["score"] == 1.0
    assert candidate["record_type"] == "account" and len(candidate["rule_ids"]) == 1
    # The record read back, or listed, has none: they belong to the answer that found them.
    assert (await capi.get(f"/api/v1/accounts/{body['id']}", headers=h)).json()["duplicates"] == []
    listed = (await capi.get("/api/v1/accounts", headers=h)).json()["items"]
    assert all(a["duplicates"] == [] for a in listed)
    # A client cannot send them.
    sent = await capi.post("/api/v1/accounts", json={"name": "某公司", "duplicates": []}, headers=h)
    assert "duplicates" in {e["field"] for e in assert_problem(sent, 422)["errors"]}

    # on_update blocks: 409 problem+json with the same candidates; nothing changed.
    third = await create_account(capi, h, name="雷军工作室")
    blocked = await capi.patch(f"/api/v1/accounts/{third['id']}", json={"phones": ["13800138000"]}, headers=h)
    problem = assert_problem(blocked, 409, "duplicate_found")
    assert {c["id"] for c in problem["duplicates"]} == {first["id"], body["id"]}
    assert {c["name"] for c in problem["duplicates"]} == {"小米科技有限责任公司", "北京小米"}
    # The same shape as in an answer.
    assert all(set(c) == set(candidate) and c["matches"] == ["phone"] for c in problem["duplicates"])
    assert (await capi.get(f"/api/v1/accounts/{third['id']}", headers=h)).json()["phones"] == []

    # A rep who sees only their own accounts learns the others by id only.
    rep = await member(capi, company, [{"object": "account", "actions": ["*"], "data_scope": "own"}])
    mine = await capi.post(
        "/api/v1/accounts", json={"name": "小米之家", "phones": ["13800138000"]}, headers=rep
    )
    assert mine.status_code == 201, mine.text
    dupes = mine.json()["duplicates"]
    assert {c["id"] for c in dupes} == {first["id"], body["id"]}
    assert all(c["name"] is None and c["matched_values"] == [] for c in dupes)
    assert "小米科技" not in mine.text and "北京小米" not in mine.text
    blocked = await capi.patch(
        f"/api/v1/accounts/{mine.json()['id']}", json={"phones": ["13800138000", "13900000000"]}, headers=rep
    )
    problem = assert_problem(blocked, 409, "duplicate_found")
    assert {c["id"] for c in problem["duplicates"]} == {first["id"], body["id"]}
    assert "小米科技" not in blocked.text and "北京小米" not in blocked.text


async def test_the_openapi_document_describes_duplicates_on_writes(capi):  # noqa: F811
    doc = (await capi.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    for path, method, record in (
        ("/api/v1/accounts", "post", "Account"),
        ("/api/v1/accounts/{id}", "patch", "Account"),
        ("/api/v1/contacts", "post", "Contact"),
        ("/api/v1/contacts/{id}", "patch", "Contact"),
    ):
        ok = doc["paths"][path][method]["responses"]["201" if method == "post" else "200"]
        ref = ok["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert ref == record  # the answer is the record itself
        duplicates = schemas[ref]["properties"]["duplicates"]
        assert duplicates["items"]["$ref"].endswith("/DuplicateCandidate") and duplicates["readOnly"] is True
        assert "duplicates" in schemas[ref]["required"] and "warn" in duplicates["description"]
        # Server-owned: not in the bodies.
        body = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert "duplicates" not in schemas[body.rsplit("/", 1)[1]]["properties"]
