"""End to end: a web client and a partner using the public REST API, gateway → gRPC → identity → PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid

import pyotp
from crm_kit.auth import TokenIssuer
from crm_kit.context import Principal

from tests.gateway.conftest import (
    PASSWORD,
    assert_problem,
    gateway_settings,
    running_gateway,
    sign_up,
    unique_email,
)


async def admin_role_ids(api, company) -> list[str]:
    roles = await api.get("/api/v1/roles", headers=company.headers)
    return [r["id"] for r in roles.json()["items"] if r["built_in"]]


async def test_a_company_signs_up_signs_in_and_sees_itself(api):
    company = await sign_up(api)
    assert company.tenant["name"] == "华为技术有限公司"
    assert company.tenant["created_at"] is not None  # every field of an answer is what its schema says
    assert company.admin["status"] == "active"
    assert company.admin["invitation_token"] is None  # side information of an invitation only
    assert company.tokens["token_type"].lower() == "bearer" and company.tokens["expires_in"] > 0

    me = await api.get("/api/v1/me", headers=company.headers)
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["user"]["id"] == company.admin["id"]
    assert body["tenant"] == company.tenant
    assert isinstance(body["user"]["version"], int)  # versions are JSON numbers
    assert body["permissions"]
    assert me.headers["x-request-id"]


async def test_refresh_rotates_and_logout_revokes(api):
    company = await sign_up(api)
    refreshed = await api.post(
        "/api/v1/auth/refresh", json={"refresh_token": company.tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    assert new["refresh_token"] != company.tokens["refresh_token"]

    out = await api.post("/api/v1/auth/logout", json={"refresh_token": new["refresh_token"]})
    assert out.status_code == 204 and out.content == b""
    again = await api.post("/api/v1/auth/refresh", json={"refresh_token": new["refresh_token"]})
    assert_problem(again, 401)


async def test_wrong_password_is_a_401_problem(api):
    company = await sign_up(api)
    bad = await api.post("/api/v1/auth/token", json={"email": company.email, "password": "wrong password!"})
    problem = assert_problem(bad, 401)
    assert "WWW-Authenticate" in bad.headers
    assert problem["instance"] == "/api/v1/auth/token"


async def test_invite_accept_and_list_users_page_by_page(api):
    company = await sign_up(api)
    invited = []
    for name in ("李雷", "韩梅梅", "Lucy"):
        r = await api.post(
            "/api/v1/users", json={"email": unique_email(), "name": name}, headers=company.headers
        )
        assert r.status_code == 201, r.text
        assert r.headers["location"] == f"/api/v1/users/{r.json()['id']}"
        assert r.json()["status"] == "invited" and r.json()["invitation_token"]
        invited.append(r.json())

    accepted = await api.post(
        "/api/v1/auth/accept-invitation",
        json={"invitation_token": invited[0]["invitation_token"], "password": PASSWORD},
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "active" and accepted.json()["email_verified"] is True

    seen, cursor = [], None
    for _ in range(10):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await api.get("/api/v1/users", params=params, headers=company.headers)
        assert page.status_code == 200, page.text
        body = page.json()
        assert set(body) == {"items", "next_cursor"}
        assert len(body["items"]) <= 2
        seen += [u["id"] for u in body["items"]]
        # The invitation token was in the invitation's answer only.
        assert all(u["invitation_token"] is None for u in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted([company.admin["id"], *(i["id"] for i in invited)])
    got = await api.get(f"/api/v1/users/{invited[1]['id']}", headers=company.headers)
    assert got.json()["id"] == invited[1]["id"] and got.json()["invitation_token"] is None

    invited_only = await api.get("/api/v1/users", params={"status": "invited"}, headers=company.headers)
    assert {u["id"] for u in invited_only.json()["items"]} == {i["id"] for i in invited[1:]}
    by_name = await api.get("/api/v1/users", params={"q": "Lucy"}, headers=company.headers)
    assert [u["name"] for u in by_name.json()["items"]] == ["Lucy"]


async def test_list_limits_out_of_range_are_422(api):
    company = await sign_up(api)
    for bad in ("0", "201", "abc", "-1"):
        r = await api.get("/api/v1/users", params={"limit": bad}, headers=company.headers)
        problem = assert_problem(r, 422, "validation_failed")
        assert problem["errors"][0]["field"] == "limit"
    for bad_status in ("SLEEPING", "USER_STATUS_ACTIVE", "unspecified"):
        bad_enum = await api.get("/api/v1/users", params={"status": bad_status}, headers=company.headers)
        assert assert_problem(bad_enum, 422)["errors"][0]["field"] == "status"
    bad_cursor = await api.get("/api/v1/users", params={"cursor": "garbage!"}, headers=company.headers)
    assert_problem(bad_cursor, 422)


async def test_etag_and_if_match_protect_against_lost_updates(api):
    company = await sign_up(api)
    uid = company.admin["id"]
    got = await api.get(f"/api/v1/users/{uid}", headers=company.headers)
    assert got.status_code == 200
    etag = got.headers["etag"]
    assert etag == f'"{got.json()["version"]}"'

    not_modified = await api.get(f"/api/v1/users/{uid}", headers={**company.headers, "If-None-Match": etag})
    assert not_modified.status_code == 304

    changed = await api.patch(
        f"/api/v1/users/{uid}", json={"title": "总经理"}, headers={**company.headers, "If-Match": etag}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["title"] == "总经理"
    assert changed.headers["etag"] != etag

    stale = await api.patch(
        f"/api/v1/users/{uid}", json={"title": "清洁工"}, headers={**company.headers, "If-Match": etag}
    )
    assert_problem(stale, 412, "version_mismatch")
    current = await api.get(f"/api/v1/users/{uid}", headers=company.headers)
    assert current.json()["title"] == "总经理"

    unconditional = await api.patch(
        f"/api/v1/users/{uid}", json={"phone": "+86 10 1234"}, headers=company.headers
    )
    assert unconditional.status_code == 200

    for malformed in ("3", 'W/"3"', '"abc"', '"1", "2"'):
        r = await api.patch(
            f"/api/v1/users/{uid}", json={"title": "x"}, headers={**company.headers, "If-Match": malformed}
        )
        assert_problem(r, 400, "invalid_if_match")


async def test_patch_refuses_unknown_and_server_owned_fields(api):
    company = await sign_up(api)
    uid = company.admin["id"]
    unknown = await api.patch(f"/api/v1/users/{uid}", json={"nickname": "小明"}, headers=company.headers)
    assert [e["field"] for e in assert_problem(unknown, 422)["errors"]] == ["nickname"]
    owned = await api.patch(
        f"/api/v1/users/{uid}",
        json={
            "version": 99,
            "status": "active",
            "totp_enabled": True,
            "email_verified": True,
            "invitation_token": "t",
        },
        headers=company.headers,
    )
    assert {e["field"] for e in assert_problem(owned, 422)["errors"]} == {
        "version",
        "status",
        "totp_enabled",
        "email_verified",
        "invitation_token",
    }
    fixed = await api.patch(f"/api/v1/users/{uid}", json={"email": unique_email()}, headers=company.headers)
    assert [e["field"] for e in assert_problem(fixed, 422)["errors"]] == ["email"]
    assert (await api.get(f"/api/v1/users/{uid}", headers=company.headers)).json()["version"] == 1
    empty = await api.patch(f"/api/v1/users/{uid}", json={}, headers=company.headers)
    assert "no field" in assert_problem(empty, 422, "validation_failed")["detail"]
    wrong_type = await api.patch(f"/api/v1/users/{uid}", json={"title": 5}, headers=company.headers)
    assert assert_problem(wrong_type, 422)["errors"][0]["field"] == "title"


async def test_another_tenants_objects_are_404(api):
    a = await sign_up(api)
    b = await sign_up(api, "阿里巴巴")
    r = await api.get(f"/api/v1/users/{b.admin['id']}", headers=a.headers)
    assert_problem(r, 404)
    r = await api.patch(f"/api/v1/users/{b.admin['id']}", json={"title": "x"}, headers=a.headers)
    assert_problem(r, 404)
    dept = await api.post("/api/v1/departments", json={"name": "销售部"}, headers=b.headers)
    assert dept.status_code == 201
    r = await api.delete(f"/api/v1/departments/{dept.json()['id']}", headers=a.headers)
    assert_problem(r, 404)
    r = await api.get(f"/api/v1/users/{'x' * 300}", headers=a.headers)
    assert r.status_code == 422  # longer than any id: refused before it reaches the service
    listed = await api.get("/api/v1/users", headers=a.headers)
    assert [u["id"] for u in listed.json()["items"]] == [a.admin["id"]]


async def test_departments_and_roles_lifecycle(api):
    company = await sign_up(api)
    h = company.headers
    parent = await api.post("/api/v1/departments", json={"name": "销售部"}, headers=h)
    assert parent.status_code == 201, parent.text
    pid = parent.json()["id"]
    assert parent.headers["location"] == f"/api/v1/departments/{pid}"
    assert parent.headers["etag"] == f'"{parent.json()["version"]}"'
    child = await api.post("/api/v1/departments", json={"name": "华东区", "parent_id": pid}, headers=h)
    assert child.status_code == 201
    children = await api.get("/api/v1/departments", params={"parent_id": pid}, headers=h)
    assert [d["name"] for d in children.json()["items"]] == ["华东区"]
    renamed = await api.patch(f"/api/v1/departments/{pid}", json={"name": "销售一部"}, headers=h)
    assert renamed.json()["name"] == "销售一部"

    role = await api.post(
        "/api/v1/roles",
        json={
            "name": "销售",
            "permissions": [
                {
                    "object": "account",
                    "actions": ["read", "update"],
                    "data_scope": "department",
                    "field_rules": [{"field": "annual_revenue", "access": "hidden"}],
                }
            ],
        },
        headers=h,
    )
    assert role.status_code == 201, role.text
    rid = role.json()["id"]
    assert role.json()["permissions"][0]["data_scope"] == "department"
    for scope in ("galaxy", "DATA_SCOPE_DEPARTMENT"):
        bad_scope = await api.post(
            "/api/v1/roles",
            json={"name": "x", "permissions": [{"object": "a", "actions": ["read"], "data_scope": scope}]},
            headers=h,
        )
        assert [e["field"] for e in assert_problem(bad_scope, 422)["errors"]] == ["permissions[0].data_scope"]
    # What a permission needs is required where it is written.
    incomplete = await api.post(
        "/api/v1/roles",
        json={"name": "x", "permissions": [{"object": "a", "field_rules": [{"field": "b"}]}]},
        headers=h,
    )
    assert {e["field"] for e in assert_problem(incomplete, 422)["errors"]} == {
        "permissions[0].actions",
        "permissions[0].field_rules[0].access",
    }
    roles = await api.get("/api/v1/roles", headers=h)
    assert rid in [r["id"] for r in roles.json()["items"]]
    got = await api.get(f"/api/v1/roles/{rid}", headers=h)
    assert got.json()["permissions"][0]["field_rules"][0]["access"] == "hidden"
    child_id = child.json()["id"]
    renamed = await api.patch(f"/api/v1/departments/{child_id}", json={"name": "华南区"}, headers=h)
    assert renamed.headers["etag"] == '"2"'
    assert_problem(
        await api.delete(f"/api/v1/departments/{child_id}", headers={**h, "If-Match": '"1"'}),
        412,
        "version_mismatch",
    )
    deleted = await api.delete(f"/api/v1/departments/{child_id}", headers={**h, "If-Match": '"2"'})
    assert deleted.status_code == 204
    assert_problem(await api.get(f"/api/v1/departments/{child_id}", headers=h), 404)


async def test_an_unused_role_is_deleted(api):
    company = await sign_up(api)
    role = await api.post("/api/v1/roles", json={"name": "临时"}, headers=company.headers)
    rid = role.json()["id"]
    assert (await api.delete(f"/api/v1/roles/{rid}", headers=company.headers)).status_code == 204
    assert_problem(await api.get(f"/api/v1/roles/{rid}", headers=company.headers), 404)


async def test_user_activation_round_trip(api):
    company = await sign_up(api)
    invited = await api.post(
        "/api/v1/users", json={"email": unique_email(), "name": "李雷"}, headers=company.headers
    )
    uid = invited.json()["id"]
    await api.post(
        "/api/v1/auth/accept-invitation",
        json={"invitation_token": invited.json()["invitation_token"], "password": PASSWORD},
    )
    off = await api.post(f"/api/v1/users/{uid}/deactivate", headers=company.headers)
    assert off.status_code == 200 and off.json()["status"] == "deactivated"
    on = await api.post(f"/api/v1/users/{uid}/activate", headers=company.headers)
    assert on.status_code == 200 and on.json()["status"] == "active"


async def test_two_factor_sign_in(api):
    company = await sign_up(api)
    started = await api.post("/api/v1/me/totp", headers=company.headers)
    assert started.status_code == 200, started.text
    secret = started.json()["secret"]
    assert started.json()["provisioning_uri"].startswith("otpauth://")
    confirmed = await api.post(
        "/api/v1/me/totp/confirm", json={"code": pyotp.TOTP(secret).now()}, headers=company.headers
    )
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["totp_enabled"] is True

    without = await api.post("/api/v1/auth/token", json={"email": company.email, "password": PASSWORD})
    assert without.status_code in (401, 422), without.text
    # A code is good once; the next step's code is accepted too (clock drift), so the test need not wait.
    next_code = pyotp.TOTP(secret).at(time.time() + 30)
    with_code = await api.post(
        "/api/v1/auth/token", json={"email": company.email, "password": PASSWORD, "totp_code": next_code}
    )
    assert with_code.status_code == 200, with_code.text


async def test_jwks_is_public_and_verifies_the_tokens(api):
    r = await api.get("/.well-known/jwks.json")
    assert r.status_code == 200
    assert r.headers["cache-control"].startswith("public")
    keys = r.json()["keys"]
    assert keys and all(k["kty"] == "OKP" and k["alg"] == "EdDSA" for k in keys)


async def test_bad_tokens_are_401_with_a_challenge(api, identity_service):
    company = await sign_up(api)
    token = company.tokens["access_token"]
    header, payload, signature = token.split(".")

    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    other_tenant = b64({**claims, "tid": str(uuid.uuid4())})
    alg_none = b64({"alg": "none", "typ": "JWT"}) + "." + payload + "."
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")

    keys = identity_service.settings.signing_keys()
    issuer = TokenIssuer(
        keys, issuer=identity_service.settings.jwt_issuer, audience=identity_service.settings.jwt_audience
    )
    principal = Principal(tenant_id=company.tenant["id"], actor_id=company.admin["id"])
    expired = issuer.issue(principal, ttl_seconds=-60).token
    wrong_audience = (
        TokenIssuer(keys, issuer=identity_service.settings.jwt_issuer, audience="other")
        .issue(principal)
        .token
    )

    cases = {
        "tampered claims": f"{header}.{other_tenant}.{signature}",
        "tampered signature": f"{header}.{payload}.{flipped}",
        "alg none": alg_none,
        "expired": expired,
        "wrong audience": wrong_audience,
        "garbage": "not-a-jwt",
    }
    for name, bad in cases.items():
        r = await api.get("/api/v1/me", headers={"Authorization": f"Bearer {bad}"})
        problem = assert_problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer"), name
        if name == "expired":
            assert problem["code"] == "token_expired"

    missing = await api.get("/api/v1/me")
    assert_problem(missing, 401, "missing_credential")
    assert missing.headers["www-authenticate"] == 'Bearer realm="crm"'
    basic = await api.get("/api/v1/me", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_problem(basic, 401, "invalid_authorization_header")
    both = await api.get("/api/v1/me", headers={**company.headers, "X-API-Key": "k"})
    assert_problem(both, 401, "ambiguous_credentials")


async def test_a_partner_uses_an_api_key_until_it_is_revoked(api):
    company = await sign_up(api)
    created = await api.post(
        "/api/v1/api-keys",
        json={
            "name": "ERP 对接",
            "rate_limit_per_minute": 1000,
            "role_ids": await admin_role_ids(api, company),
        },
        headers=company.headers,
    )
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    key_id = created.json()["id"]
    assert secret.startswith(created.json()["prefix"] + "_")
    assert created.headers["location"] == f"/api/v1/api-keys/{key_id}"

    partner = {"X-API-Key": secret}
    users = await api.get("/api/v1/users", headers=partner)
    assert users.status_code == 200, users.text
    assert company.admin["id"] in [u["id"] for u in users.json()["items"]]
    assert int(users.headers["ratelimit-limit"]) == 1000

    # The secret was in the create answer only.
    listed = await api.get("/api/v1/api-keys", headers=company.headers)
    assert key_id in [k["id"] for k in listed.json()["items"]]
    assert all(k["secret"] is None for k in listed.json()["items"])
    assert secret not in json.dumps(listed.json())
    got = await api.get(f"/api/v1/api-keys/{key_id}", headers=company.headers)
    assert got.json()["id"] == key_id and got.json()["secret"] is None

    revoked = await api.delete(f"/api/v1/api-keys/{key_id}", headers=company.headers)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["id"] == key_id and revoked.json()["revoked_at"] is not None
    assert revoked.json()["secret"] is None
    # The gateway trusts a verified key for api_key_cache_seconds (0.5 s in these tests, 30 s by default).
    await asyncio.sleep(0.7)
    assert_problem(await api.get("/api/v1/users", headers=partner), 401)
    assert_problem(await api.get("/api/v1/users", headers={"X-API-Key": "crm_nonsense"}), 401)


async def test_a_revoked_api_key_stops_working_at_once_not_when_the_gateway_cache_expires(
    api, test_infra, identity_service
):
    # A second gateway replica that would trust a verified key for ten minutes: only identity's ApiKeyRevoked
    # event, which every replica follows, can make it refuse the key sooner.
    settings = gateway_settings(test_infra, identity_service.address, api_key_cache_seconds=600)
    async with running_gateway(settings) as replica:
        company = await sign_up(api)
        created = await api.post(
            "/api/v1/api-keys",
            json={"name": "财务系统", "role_ids": await admin_role_ids(api, company)},
            headers=company.headers,
        )
        key_id, partner = created.json()["id"], {"X-API-Key": created.json()["secret"]}
        assert (await replica.get("/api/v1/me", headers=partner)).status_code == 200  # now cached there

        assert (await api.delete(f"/api/v1/api-keys/{key_id}", headers=company.headers)).status_code == 200
        deadline = time.monotonic() + 10
        while (answer := await replica.get("/api/v1/me", headers=partner)).status_code == 200:
            assert time.monotonic() < deadline, "the replica still accepts a key revoked 10 s ago"
            await asyncio.sleep(0.05)
        assert_problem(answer, 401)


async def test_an_api_key_is_held_to_its_own_rate_limit(api):
    company = await sign_up(api)
    created = await api.post(
        "/api/v1/api-keys", json={"name": "slow partner", "rate_limit_per_minute": 2}, headers=company.headers
    )
    partner = {"X-API-Key": created.json()["secret"]}
    first = await api.get("/api/v1/me", headers=partner)
    assert first.status_code == 200, first.text
    assert first.headers["ratelimit-limit"] == "2" and first.headers["ratelimit-remaining"] == "1"
    assert (await api.get("/api/v1/me", headers=partner)).status_code == 200
    limited = await api.get("/api/v1/me", headers=partner)
    assert_problem(limited, 429, "rate_limited")
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["ratelimit-remaining"] == "0"
    # The admin of the same tenant is not held to the key's limit.
    assert (await api.get("/api/v1/me", headers=company.headers)).status_code == 200


async def test_idempotent_create_runs_once_and_replays(api):
    company = await sign_up(api)
    h = {**company.headers, "Idempotency-Key": str(uuid.uuid4())}
    first = await api.post("/api/v1/departments", json={"name": "市场部"}, headers=h)
    assert first.status_code == 201, first.text
    again = await api.post("/api/v1/departments", json={"name": "市场部"}, headers=h)
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["idempotent-replayed"] == "true"
    listed = await api.get("/api/v1/departments", headers=company.headers)
    assert [d["name"] for d in listed.json()["items"]].count("市场部") == 1

    other_body = await api.post("/api/v1/departments", json={"name": "财务部"}, headers=h)
    assert_problem(other_body, 422, "idempotency_key_reused")


async def test_concurrent_duplicates_create_one_object(api):
    company = await sign_up(api)
    h = {**company.headers, "Idempotency-Key": str(uuid.uuid4())}
    answers = await asyncio.gather(
        *(
            api.post("/api/v1/users", json={"email": "same@example.com", "name": "同一个人"}, headers=h)
            for _ in range(5)
        )
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(201) >= 1 and set(statuses) <= {201, 409}, statuses
    created_ids = {a.json()["id"] for a in answers if a.status_code == 201}
    assert len(created_ids) == 1
    for a in answers:
        if a.status_code == 409:
            assert a.json()["code"] == "idempotency_in_progress" and a.headers["retry-after"]
    users = await api.get("/api/v1/users", headers=company.headers)
    assert [u["email"] for u in users.json()["items"]].count("same@example.com") == 1


async def test_idempotency_keys_are_private_to_the_credential(api):
    a = await sign_up(api)
    b = await sign_up(api, "腾讯")
    key = str(uuid.uuid4())
    first = await api.post(
        "/api/v1/departments", json={"name": "研发部"}, headers={**a.headers, "Idempotency-Key": key}
    )
    second = await api.post(
        "/api/v1/departments", json={"name": "研发部"}, headers={**b.headers, "Idempotency-Key": key}
    )
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    assert "idempotent-replayed" not in second.headers


async def test_a_failed_idempotent_request_replays_its_problem(api):
    company = await sign_up(api)
    h = {**company.headers, "Idempotency-Key": str(uuid.uuid4())}
    body = {"email": company.email, "name": "重复的人"}  # already a user of this tenant
    first = await api.post("/api/v1/users", json=body, headers=h)
    assert_problem(first, 409)
    again = await api.post("/api/v1/users", json=body, headers=h)
    assert_problem(again, 409)
    assert again.json()["code"] == first.json()["code"]
    assert again.headers["idempotent-replayed"] == "true"


async def test_audit_trail_is_filterable(api):
    company = await sign_up(api)
    dept = await api.post("/api/v1/departments", json={"name": "客服部"}, headers=company.headers)
    did = dept.json()["id"]
    found = []
    for _ in range(50):  # the trail is fed by events: allow the consumer a moment
        r = await api.get("/api/v1/audit-events", params={"object_id": did}, headers=company.headers)
        assert r.status_code == 200, r.text
        found = r.json()["items"]
        if found:
            break
        await asyncio.sleep(0.1)
    assert found and found[0]["object_type"] == "department"
    future = await api.get(
        "/api/v1/audit-events", params={"occurred_after": "2999-01-01T00:00:00Z"}, headers=company.headers
    )
    assert future.json()["items"] == []
    naive = await api.get(
        "/api/v1/audit-events", params={"occurred_after": "2020-01-01T00:00:00"}, headers=company.headers
    )
    assert assert_problem(naive, 422)["errors"][0]["field"] == "occurred_after"


async def test_signup_validation_errors_name_the_fields(api):
    r = await api.post(
        "/api/v1/auth/signup",
        json={"tenant_name": "x", "email": "not-an-email", "password": "p", "name": "n"},
    )
    problem = assert_problem(r, 422)
    assert "email" in {e["field"] for e in problem["errors"]}
    unknown = await api.post(
        "/api/v1/auth/signup",
        json={
            "tenant_name": "x",
            "email": unique_email(),
            "password": PASSWORD,
            "name": "n",
            "tenant_id": "t",
        },
    )
    assert [e["field"] for e in assert_problem(unknown, 422)["errors"]] == ["tenant_id"]
    # What sign-up needs is required (the document says so), missing or empty alike.
    missing = await api.post("/api/v1/auth/signup", json={"email": unique_email(), "tenant_name": ""})
    assert {e["field"] for e in assert_problem(missing, 422, "validation_failed")["errors"]} == {
        "tenant_name",
        "password",
        "name",
    }
    no_password = await api.post("/api/v1/auth/token", json={"email": unique_email()})
    assert [e["field"] for e in assert_problem(no_password, 422)["errors"]] == ["password"]


async def test_ready_when_identity_answers_even_with_another_service_down(api):
    r = await api.get("/readyz")
    assert r.status_code == 200, r.text
    services = r.json()["services"]
    assert services["identity"] == "SERVING"
    # No customers service runs in this test: it is reported, and does not take the whole API out.
    assert services["customers"].startswith("unreachable")
    assert (await api.get("/healthz")).json() == {"status": "ok"}


async def test_nul_characters_are_bad_input_not_server_errors(api):
    """PostgreSQL cannot store NUL; the gateway refuses it wherever it comes from."""
    company = await sign_up(api)
    for url in ("/api/v1/users/%00", "/api/v1/users?q=a%00b"):
        assert_problem(await api.get(url, headers=company.headers), 400, "nul_character")
    r = await api.post("/api/v1/departments", json={"name": "a\u0000b"}, headers=company.headers)
    assert_problem(r, 422, "nul_character")
    r = await api.post("/api/v1/auth/token", json={"email": "a\u0000@example.com", "password": "x"})
    assert_problem(r, 422, "nul_character")
    literal = await api.post("/api/v1/departments", json={"name": "C:\\u0000"}, headers=company.headers)
    assert literal.status_code == 201, literal.text  # a backslash followed by u0000 is just text


async def test_a_lost_verification_mail_is_sent_again(api, smtp_sink):
    company = await sign_up(api)
    first = (await smtp_sink.mail_to(company.email)).get_content()
    mine = await api.post("/api/v1/me/resend-verification", headers=company.headers)
    assert mine.status_code == 200, mine.text
    assert mine.json() == {"email": company.email}
    # By address, with no credential: the same answer for a held and an unknown address.
    addresses = (company.email, unique_email("nobody"))
    answers = [await api.post("/api/v1/auth/resend-verification", json={"email": e}) for e in addresses]
    assert [(a.status_code, a.json()) for a in answers] == [(200, {"email": e}) for e in addresses]
    assert (await smtp_sink.mail_to(company.email)).get_content() != first
    assert_problem(
        await api.post("/api/v1/auth/resend-verification", json={"email": "x" * 300 + "@example.com"}), 422
    )
