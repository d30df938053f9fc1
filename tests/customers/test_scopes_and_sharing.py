"""Department scopes, team-shared saved views, relationships' lifecycle and capped counts, end to end."""

from __future__ import annotations

from tests.customers.test_gateway_customers import capi, create_account, member  # noqa: F401
from tests.gateway.conftest import PASSWORD, assert_problem, sign_up, unique_email


async def department(capi, company, name: str, parent_id: str = "") -> str:  # noqa: F811
    body = {"name": name, **({"parent_id": parent_id} if parent_id else {})}
    r = await capi.post("/api/v1/departments", json=body, headers=company.headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def user_in(capi, company, department_id: str, scope: str) -> tuple[str, dict[str, str]]:  # noqa: F811
    role = await capi.post(
        "/api/v1/roles",
        json={
            "name": f"r-{unique_email()}",
            "permissions": [{"object": "*", "actions": ["*"], "data_scope": scope}],
        },
        headers=company.headers,
    )
    email = unique_email()
    invited = await capi.post(
        "/api/v1/users",
        json={
            "email": email,
            "name": "韩梅梅",
            "role_ids": [role.json()["id"]],
            "department_id": department_id,
        },
        headers=company.headers,
    )
    await capi.post(
        "/api/v1/auth/accept-invitation",
        json={"invitation_token": invited.json()["invitation_token"], "password": PASSWORD},
    )
    token = await capi.post("/api/v1/auth/token", json={"email": email, "password": PASSWORD})
    return invited.json()["id"], {"Authorization": f"Bearer {token.json()['access_token']}"}


async def test_department_tree_scope_sees_records_owned_below_and_shares_views(capi):  # noqa: F811
    company = await sign_up(capi)
    south = await department(capi, company, "华南区")
    shenzhen = await department(capi, company, "深圳组", south)
    north = await department(capi, company, "华北区")
    _, manager = await user_in(capi, company, south, "department_tree")
    rep_id, rep = await user_in(capi, company, shenzhen, "own")
    _, peer = await user_in(capi, company, shenzhen, "department")
    _, other = await user_in(capi, company, north, "department")

    mine = await create_account(capi, rep, name="深圳客户甲")
    assert mine["owner_id"] == rep_id and mine["department_id"] == shenzhen
    northern = await create_account(capi, other, name="北京客户乙")
    # An admin assigns an account to the rep: the department follows the owner.
    assigned = await create_account(capi, company.headers, name="深圳客户丙", owner_id=rep_id)
    assert assigned["department_id"] == shenzhen

    seen = {a["id"] for a in (await capi.get("/api/v1/accounts", headers=manager)).json()["items"]}
    assert seen == {mine["id"], assigned["id"]}
    seen_by_peer = {a["id"] for a in (await capi.get("/api/v1/accounts", headers=peer)).json()["items"]}
    assert seen_by_peer == {mine["id"], assigned["id"]}
    assert_problem(await capi.get(f"/api/v1/accounts/{northern['id']}", headers=manager), 404)
    assert (await capi.get("/api/v1/search", params={"q": "北京客户"}, headers=manager)).json()["items"] == []

    # A view shared in the department is seen by a colleague there, not by another department.
    view = await capi.post(
        "/api/v1/saved-views",
        json={
            "record_type": "account",
            "name": "深圳",
            "filter": ["name:contains:深圳"],
            "shared": True,
        },
        headers=rep,
    )
    assert view.status_code == 201, view.text
    vid = view.json()["id"]
    assert vid in [v["id"] for v in (await capi.get("/api/v1/saved-views", headers=peer)).json()["items"]]
    assert_problem(await capi.get(f"/api/v1/saved-views/{vid}", headers=other), 404)
    used = await capi.get("/api/v1/accounts", params={"view_id": vid}, headers=peer)
    assert {a["id"] for a in used.json()["items"]} == {mine["id"], assigned["id"]}
    assert_problem(await capi.patch(f"/api/v1/saved-views/{vid}", json={"name": "x"}, headers=peer), 403)
    private = await capi.post(
        "/api/v1/saved-views",
        json={"record_type": "account", "name": "我的"},
        headers=rep,
    )
    assert_problem(await capi.get(f"/api/v1/saved-views/{private.json()['id']}", headers=peer), 404)


async def test_relationships_are_listed_per_record_and_deleted(capi):  # noqa: F811
    company = await sign_up(capi)
    h = company.headers
    a = await create_account(capi, h, name="联想集团")
    b = await create_account(capi, h, name="英特尔")
    made = await capi.post(
        "/api/v1/relationships",
        json={
            "type": "supplier_of",
            "source": {"type": "account", "id": b["id"]},
            "target": {"type": "account", "id": a["id"]},
            "note": "CPU",
        },
        headers=h,
    )
    assert made.status_code == 201, made.text
    again = await capi.post(
        "/api/v1/relationships",
        json={
            "type": "supplier_of",
            "source": {"type": "account", "id": b["id"]},
            "target": {"type": "account", "id": a["id"]},
        },
        headers=h,
    )
    assert_problem(again, 409)
    listed = await capi.get(
        "/api/v1/relationships",
        params={"record_type": "account", "record_id": a["id"]},
        headers=h,
    )
    assert [r["id"] for r in listed.json()["items"]] == [made.json()["id"]]
    unknown = await capi.post(
        "/api/v1/relationships",
        json={
            "type": "nosuch",
            "source": {"type": "account", "id": a["id"]},
            "target": {"type": "account", "id": b["id"]},
        },
        headers=h,
    )
    assert_problem(unknown, 422)
    assert (await capi.delete(f"/api/v1/relationships/{made.json()['id']}", headers=h)).status_code == 204
    listed = await capi.get("/api/v1/relationships", params={"record_id": a["id"]}, headers=h)
    assert listed.json()["items"] == []
    builtin = await capi.patch(
        "/api/v1/relationship-types/builtin:partner_of", json={"name_en": "x"}, headers=h
    )
    assert_problem(builtin, 409)


async def test_counts_are_exact_when_small(capi):  # noqa: F811
    company = await sign_up(capi)
    h = company.headers
    for i in range(3):
        await create_account(capi, h, name=f"计数{i}", province="广东省" if i else "浙江省")
    r = await capi.get("/api/v1/accounts/count", params={"filter": "province:eq:广东省"}, headers=h)
    assert r.json() == {"count": 2, "exact": True}
