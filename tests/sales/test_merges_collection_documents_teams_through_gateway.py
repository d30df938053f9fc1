"""End to end through the public REST API, as a client does: a merge in customers reaching sales, re-scheduling
and refunds, the letterhead and the contract PDF, the forecast of a team."""

from __future__ import annotations

import base64
import io

import pytest
from crm.identity.v1 import identity_pb2 as ipb
from crm_kit.testing import eventually
from pypdf import PdfReader

from tests.gateway.conftest import assert_problem, gateway_settings, running_gateway
from tests.identity.helpers import invite_and_join
from tests.sales.answers import check_answers
from tests.sales.helpers import REP_PERMISSIONS, Rep, rep_role, team
from tests.sales.test_contract_pdf import TERMS, logo_png


@pytest.fixture(scope="module")
async def api(test_infra, identity_service, sales_service, customers_for_sales):
    settings = gateway_settings(
        test_infra,
        identity_service.address,
        sales_service_addr=sales_service.address,
        customers_service_addr=customers_for_sales.address,
    )
    async with running_gateway(settings) as client:
        check_answers(client)
        yield client


def bearer(token) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.access_token}"}


async def created(api, path: str, body: dict, headers: dict) -> dict:
    answer = await api.post(path, json=body, headers=headers)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def approved_contract(api, headers: dict, **fields) -> dict:
    contract = await created(api, "/api/v1/contracts", {"currency": "CNY", **fields}, headers)
    submitted = await api.post(f"/api/v1/contracts/{contract['id']}/submit", json={}, headers=headers)
    assert submitted.json()["contract"]["status"] == "approved", submitted.text
    return submitted.json()["contract"]


async def test_a_merge_in_customers_re_points_what_sales_shows_and_undo_puts_it_back(api, identity):
    company, (rep,) = await team(identity, 1)
    admin = bearer(company.token)
    keep = await created(api, "/api/v1/accounts", {"name": "杭州青山制造有限公司"}, admin)
    # The rep's own account: a rep links an opportunity only to an account they may read.
    dup = await created(api, "/api/v1/accounts", {"name": "青山制造(杭州)", "owner_id": rep.user.id}, admin)
    await created(api, "/api/v1/pipelines", {"name": "直销"}, admin)
    opp = await created(
        api, "/api/v1/opportunities", {"name": "产线改造", "account_id": dup["id"]}, bearer(rep.token)
    )
    contract = await approved_contract(api, admin, title="改造合同", account_id=dup["id"], amount="500000.00")

    # The survivor's version the caller saw goes in If-Match, as for any change: a stale one is a 412.
    body = {"record_type": "account", "survivor_id": keep["id"], "merged_ids": [dup["id"]]}
    stale_merge = await api.post("/api/v1/merges", json=body, headers={**admin, "If-Match": '"7"'})
    assert_problem(stale_merge, 412)
    seen = (await api.get(f"/api/v1/accounts/{keep['id']}", headers=admin)).headers["etag"]
    merge = await created(api, "/api/v1/merges", body, {**admin, "If-Match": seen})

    async def account_of_opportunity() -> str:
        answer = await api.get(f"/api/v1/opportunities/{opp['id']}", headers=bearer(rep.token))
        return answer.json()["account_id"]

    await eventually(
        lambda: _is(account_of_opportunity(), keep["id"]), what="the opportunity follows the merge"
    )
    moved = await api.get(f"/api/v1/opportunities/{opp['id']}", headers=bearer(rep.token))
    assert moved.headers["etag"] == '"2"'
    listed = await api.get("/api/v1/contracts", params={"account_id": keep["id"]}, headers=admin)
    assert [c["id"] for c in listed.json()["items"]] == [contract["id"]]
    stale = await api.patch(
        f"/api/v1/opportunities/{opp['id']}",
        json={"next_step": "报价"},
        headers={**bearer(rep.token), "If-Match": '"1"'},
    )
    assert_problem(stale, 412)

    undone = await api.post(f"/api/v1/merges/{merge['id']}/undo", json={}, headers=admin)
    assert undone.status_code == 200, undone.text
    await eventually(
        lambda: _is(account_of_opportunity(), dup["id"]), what="the opportunity follows the undo"
    )
    listed = await api.get("/api/v1/contracts", params={"account_id": dup["id"]}, headers=admin)
    assert [c["id"] for c in listed.json()["items"]] == [contract["id"]]


async def test_a_plan_is_rescheduled_and_a_payment_refunded_through_the_api(api, identity):
    company, _ = await team(identity, 0)
    admin = bearer(company.token)
    account = (await created(api, "/api/v1/accounts", {"name": "宁波海天维保有限公司"}, admin))["id"]
    contract = await approved_contract(api, admin, title="维保合同", account_id=account, amount="900.00")
    plan = await created(
        api,
        "/api/v1/payment-plans",
        {
            "contract_id": contract["id"],
            "instalments": [
                {"due_date": "2020-03-31", "amount": "300.00"},
                {"due_date": "2099-03-31", "amount": "600.00"},
            ],
        },
        admin,
    )
    first, second = plan["instalments"]
    paid = await created(api, "/api/v1/payments", {"instalment_id": first["id"], "amount": "300.00"}, admin)
    assert (paid["instalment_id"], paid["amount"], paid["refunded_amount"]) == (first["id"], "300.00", "0.00")

    async def instalment(instalment_id: str) -> dict:
        answer = await api.get(f"/api/v1/payment-plans/{plan['id']}", headers=admin)
        return next(i for i in answer.json()["instalments"] if i["id"] == instalment_id)

    assert (await instalment(first["id"]))["status"] == "paid"

    url = f"/api/v1/payment-plans/{plan['id']}/instalments"
    body = {
        "instalments": [
            {"id": first["id"], "due_date": "2020-03-31", "amount": "300.00"},
            {"id": second["id"], "due_date": "2099-03-31", "amount": "300.01"},
            {"due_date": "2099-09-30", "amount": "299.99"},
        ]
    }
    rescheduled = await api.put(url, json=body, headers={**admin, "If-Match": '"1"'})
    assert rescheduled.status_code == 200, rescheduled.text
    assert rescheduled.headers["etag"] == '"2"'
    assert [i["amount"] for i in rescheduled.json()["instalments"]] == ["300.00", "300.01", "299.99"]
    assert_problem(await api.put(url, json=body, headers={**admin, "If-Match": '"1"'}), 412)
    short = {"instalments": [{"id": first["id"], "due_date": "2020-03-31", "amount": "299.99"}]}
    problem = assert_problem(await api.put(url, json=short, headers=admin), 422)
    assert {e["field"] for e in problem["errors"]} == {"instalments[0].amount"}

    refund = await api.post(
        f"/api/v1/payments/{paid['id']}/refunds",
        json={"amount": "120.50", "reason": "服务未按期交付，部分退款"},
        headers=admin,
    )
    assert refund.status_code == 201, refund.text
    assert (refund.json()["payment_id"], refund.json()["amount"]) == (paid["id"], "120.50")
    assert refund.json()["instalment_id"] == first["id"] and refund.json()["method"] == "bank_transfer"
    payments = await api.get("/api/v1/payments", params={"plan_id": plan["id"]}, headers=admin)
    assert [p["refunded_amount"] for p in payments.json()["items"]] == ["120.50"]
    assert (await instalment(first["id"]))["status"] == "overdue"
    too_much = await api.post(
        f"/api/v1/payments/{paid['id']}/refunds",
        json={"amount": "179.51", "reason": "x"},
        headers=admin,
    )
    assert_problem(too_much, 422)
    refunds = await api.get("/api/v1/refunds", params={"account_id": account}, headers=admin)
    assert [r["amount"] for r in refunds.json()["items"]] == ["120.50"]
    owed = await api.get(f"/api/v1/accounts/{account}/receivables", headers=admin)
    assert owed.json()["totals"] == [
        {
            "currency": "CNY",
            "planned": "900.00",
            "paid": "179.50",
            "outstanding": "720.50",
            "overdue": "120.50",
            "refunded": "120.50",
        }
    ]
    assert_problem(
        await api.post(
            "/api/v1/payments/not-an-id/refunds", json={"amount": "1", "reason": "x"}, headers=admin
        ),
        404,
    )


async def test_an_admin_sets_the_letterhead_and_a_user_downloads_the_contract_pdf(api, identity):
    company, (rep,) = await team(identity, 1)
    admin = bearer(company.token)
    logo = logo_png()
    changed = await api.patch(
        "/api/v1/sales-settings",
        json={
            "company_name": "深圳星河电子有限公司",
            "company_name_en": "Shenzhen Xinghe Electronics Co., Ltd.",
            "address": "深圳市南山区科技园南区8栋",
            "phone": "0755-26668888",
            "tax_number": "91440300MA5F1234XY",
            "logo": base64.b64encode(logo).decode(),
        },
        headers=admin,
    )
    assert changed.status_code == 200, changed.text
    assert changed.headers["etag"] == '"1"' and changed.json()["logo_content_type"] == "image/png"
    assert base64.b64decode(changed.json()["logo"]) == logo
    assert_problem(
        await api.patch("/api/v1/sales-settings", json={"phone": "1"}, headers=bearer(rep.token)), 403
    )
    assert_problem(
        await api.patch("/api/v1/sales-settings", json={"logo_content_type": "image/gif"}, headers=admin), 422
    )
    bad_logo = await api.patch(
        "/api/v1/sales-settings", json={"logo": base64.b64encode(b"GIF89a...").decode()}, headers=admin
    )
    assert assert_problem(bad_logo, 422)["errors"][0]["field"] == "logo"

    contract = await approved_contract(
        api,
        admin,
        title="电子元器件年度供货合同",
        customer_name="广州白云贸易有限公司",
        amount="88000.00",
        terms=TERMS,
    )
    pdf = await api.get(f"/api/v1/contracts/{contract['id']}/pdf", headers=admin)
    assert pdf.status_code == 200, pdf.text
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["content-disposition"] == f'attachment; filename="{contract["number"]}.pdf"'
    page = PdfReader(io.BytesIO(pdf.content)).pages[0]
    text = page.extract_text()
    for expected in (
        "深圳星河电子有限公司",
        "深圳市南山区科技园南区8栋",
        "91440300MA5F1234XY",
        "电子元器件年度供货合同",
        "广州白云贸易有限公司",
        "二、乙方负责软件的安装、调试与培训。",
        "88,000.00",
    ):
        assert expected in text, expected
    assert len(page.images) == 1
    english = await api.get(f"/api/v1/contracts/{contract['id']}/pdf", params={"locale": "en"}, headers=admin)
    assert (
        "Shenzhen Xinghe Electronics Co., Ltd."
        in PdfReader(io.BytesIO(english.content)).pages[0].extract_text()
    )
    assert_problem(
        await api.get(f"/api/v1/contracts/{contract['id']}/pdf", params={"locale": "de"}, headers=admin), 422
    )
    # The rep may read only their own contracts: the admin's is not found for them.
    assert_problem(await api.get(f"/api/v1/contracts/{contract['id']}/pdf", headers=bearer(rep.token)), 404)
    assert_problem(await api.get(f"/api/v1/contracts/{contract['id']}/pdf"), 401)


async def test_the_forecast_of_a_team_covers_its_department_and_those_below(api, identity):
    company, _ = await team(identity, 0)
    admin = bearer(company.token)

    async def department(name: str, parent: str = "") -> str:
        return (await created(api, "/api/v1/departments", {"name": name, "parent_id": parent}, admin))["id"]

    east = await department("华东大区")
    shanghai = await department("上海分部", east)
    pudong = await department("浦东组", shanghai)
    south = await department("华南大区")
    role = await rep_role(identity, company, name="大区销售")
    manager_role = await rep_role(
        identity,
        company,
        name="区域经理",
        permissions=[
            ipb.Permission(
                object=p.object, actions=list(p.actions), data_scope=ipb.DATA_SCOPE_DEPARTMENT_TREE
            )
            for p in REP_PERMISSIONS
        ],
    )

    async def member(department_id: str, role_id: str = role.id) -> Rep:
        user, token = await invite_and_join(
            identity, company, role_ids=[role_id], department_id=department_id
        )
        return Rep(user, token)

    reps = {d: await member(d) for d in (east, shanghai, pudong, south)}
    sh_manager = await member(shanghai, manager_role.id)
    await created(api, "/api/v1/pipelines", {"name": "分销"}, admin)
    for (d, amount), due in zip(
        ((east, "1000.00"), (shanghai, "200.00"), (pudong, "30.00"), (south, "4.00")),
        ("01", "02", "03", "04"),
        strict=True,
    ):
        who = bearer(reps[d].token)
        await created(
            api,
            "/api/v1/opportunities",
            {"name": f"商机-{amount}", "amount": amount, "close_date": "2031-05-20"},
            who,
        )
        contract = await approved_contract(api, who, title="供货", amount=amount)
        await created(
            api,
            "/api/v1/payment-plans",
            {
                "contract_id": contract["id"],
                "instalments": [{"due_date": f"2031-05-{due}", "amount": amount}],
            },
            who,
        )
    target = await api.patch(
        "/api/v1/forecast-targets",
        json={"period": "2031-05", "department_id": shanghai, "currency": "CNY", "revenue_target": "1000"},
        headers=admin,
    )
    assert target.status_code == 200, target.text

    async def figures(headers: dict, department_id: str = "") -> tuple[object, ...] | None:
        params = {"period": "2031-05", **({"department_id": department_id} if department_id else {})}
        answer = await api.get("/api/v1/forecasts", params=params, headers=headers)
        assert answer.status_code == 200, answer.text
        items = answer.json()["figures"]
        if not items:
            return None
        (f,) = items
        return f["open_count"], f["pipeline_amount"], f["collection_due"], f["revenue_target"]

    assert await figures(admin) == (4, "1234.00", "1234.00", "0.00")
    assert await figures(admin, east) == (3, "1230.00", "1230.00", "0.00")
    assert await figures(admin, shanghai) == (2, "230.00", "230.00", "1000.00")
    assert await figures(admin, pudong) == (1, "30.00", "30.00", "0.00")
    assert await figures(admin, south) == (1, "4.00", "4.00", "0.00")
    # A manager sees their own team and below, whatever team they ask for.
    manager = bearer(sh_manager.token)
    assert await figures(manager, shanghai) == (2, "230.00", "230.00", "1000.00")
    assert await figures(manager, east) == (2, "230.00", "230.00", "0.00")
    assert await figures(manager, south) is None
    # A department made later counts for the teams above it (identity's event refreshes sales' policy).
    lujiazui = await department("陆家嘴小组", pudong)
    newcomer = bearer((await member(lujiazui)).token)
    await created(
        api,
        "/api/v1/opportunities",
        {"name": "新商机", "amount": "0.05", "close_date": "2031-05-31"},
        newcomer,
    )
    assert await figures(admin, lujiazui) == (1, "0.05", "0.00", "0.00")
    await eventually(lambda: _is(figures(admin, east), (4, "1230.05", "1230.00", "0.00")), what="east grows")
    # A department that is not the company's is refused, not silently empty.
    beta, _ = await team(identity, 0, name="Beta Ltd")
    beta_department = await created(api, "/api/v1/departments", {"name": "华北"}, bearer(beta.token))
    for unknown in (beta_department["id"], "not-an-id"):
        answer = await api.get(
            "/api/v1/forecasts", params={"period": "2031-05", "department_id": unknown}, headers=admin
        )
        assert assert_problem(answer, 422)["errors"][0]["field"] == "department_id"


async def _is(value, expected) -> bool:
    return (await value) == expected
