"""End to end through the public REST API: gateway → gRPC → sales (and identity) → PostgreSQL."""

from __future__ import annotations

import datetime as dt

from tests.gateway.conftest import assert_problem
from tests.sales.helpers import bearer, new_account, team


async def test_a_rep_claims_follows_up_and_returns_a_pool_lead_through_the_api(api, identity, clock):
    company, (rep,) = await team(identity, 1)
    admin = bearer(company.token)
    pool = await api.post(
        "/api/v1/lead-pools",
        json={
            "name": "华南公海",
            "member_ids": [rep.id],
            "claim_cap": 5,
            "follow_up_days": 3,
            "cooldown_hours": 24,
        },
        headers=admin,
    )
    assert pool.status_code == 201, pool.text
    assert pool.headers["location"] == f"/api/v1/lead-pools/{pool.json()['id']}"
    lead = await api.post(
        "/api/v1/leads",
        json={
            "name": "周杰",
            "company": "深圳星河电子",
            "pool_id": pool.json()["id"],
            "source": "event",
        },
        headers=admin,
    )
    assert lead.status_code == 201, lead.text
    lead_id = lead.json()["id"]
    assert lead.json()["source"] == "event" and lead.json()["owner_id"] is None
    assert lead.json()["duplicates"] == []
    twin = await api.post(
        "/api/v1/leads",
        json={"name": "周杰", "company": "深圳星河电子", "phone": "+86 139 0000 1111"},
        headers=admin,
    )
    again = await api.post("/api/v1/leads", json={"name": "周杰伦", "phone": "13900001111"}, headers=admin)
    assert again.status_code == 201, again.text
    assert again.json()["duplicates"] == [
        {"lead_id": twin.json()["id"], "matched_on": "phone", "name": "周杰", "owner_id": company.admin.id}
    ]
    body = again.json()
    assert (body["status"], body["score"], body["version"], body["pool_id"]) == ("new", 0, 1, None)
    assert again.headers["etag"] == '"1"' and again.headers["location"] == f"/api/v1/leads/{body['id']}"
    # Duplicates belong to the answer that found them: a read has none, an update finds them again.
    read = await api.get(f"/api/v1/leads/{lead_id}", headers=admin)
    assert read.json()["duplicates"] == []
    changed = await api.patch(f"/api/v1/leads/{lead_id}", json={"phone": "139-0000-1111"}, headers=admin)
    assert changed.status_code == 200, changed.text
    assert [(d["lead_id"], d["matched_on"]) for d in changed.json()["duplicates"]] == [
        (twin.json()["id"], "phone"),
        (body["id"], "phone"),
    ]
    # What the server owns is refused in bodies, what the service requires is required, each naming the field.
    for refused in ({"score": 5}, {"owner_id": company.admin.id}, {"duplicates": []}):
        problem = assert_problem(
            await api.patch(f"/api/v1/leads/{lead_id}", json=refused, headers=admin), 422
        )
        assert problem["code"] == "validation_failed" and problem["errors"][0]["field"] == next(iter(refused))
    nameless = assert_problem(await api.post("/api/v1/leads", json={"company": "无名"}, headers=admin), 422)
    assert [e["field"] for e in nameless["errors"]] == ["name"]

    claimed = await api.post(f"/api/v1/leads/{lead_id}/claim", json={}, headers=bearer(rep.token))
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["owner_id"] == rep.id and claimed.headers["etag"] == '"3"'
    followed = await api.post(
        f"/api/v1/leads/{lead_id}/follow-ups",
        json={"kind": "wechat", "content": "加了微信"},
        headers=bearer(rep.token),
    )
    assert followed.status_code == 201, followed.text
    no_reason = await api.post(f"/api/v1/leads/{lead_id}/release", json={}, headers=bearer(rep.token))
    assert assert_problem(no_reason, 422)["errors"][0]["field"] == "reason"
    released = await api.post(
        f"/api/v1/leads/{lead_id}/release", json={"reason": "客户已选择其他供应商"}, headers=bearer(rep.token)
    )
    assert released.status_code == 200 and released.json()["owner_id"] is None
    again = await api.post(f"/api/v1/leads/{lead_id}/claim", json={}, headers=bearer(rep.token))
    assert_problem(again, 409, "claim_cooldown")

    history = await api.get(f"/api/v1/leads/{lead_id}/history", headers=admin)
    assert [m["action"] for m in history.json()["items"]] == ["created", "claimed", "released"]

    # The reclaim job, run "as of" four days later for the tenant: a lead claimed and left alone goes back.
    clock.advance(days=2)
    await api.post(
        f"/api/v1/leads/{lead_id}/assign", json={"owner_id": rep.id, "reason": "重新分配"}, headers=admin
    )
    later = (clock.now() + dt.timedelta(days=4)).isoformat()
    run = await api.post("/api/v1/lead-pools/reclaim", json={"now": later}, headers=admin)
    assert run.status_code == 200 and run.json()["reclaimed"] == 1, run.text


async def test_a_visitor_submits_a_public_form_without_any_credential(api, identity):
    company, _ = await team(identity, 0)
    admin = bearer(company.token)
    form = await api.post(
        "/api/v1/forms", json={"name": "Contact us", "fields": ["name", "email"]}, headers=admin
    )
    assert form.status_code == 201, form.text
    token = form.json()["token"]
    shown = await api.get(f"/api/v1/public/forms/{token}")
    assert shown.status_code == 200 and shown.json()["honeypot_field"] == "website"
    sent = await api.post(
        f"/api/v1/public/forms/{token}/submissions",
        json={
            "values": {"name": "Jane Doe", "email": "jane@example.com"},
            "started_token": shown.json()["started_token"],
        },
    )
    assert sent.status_code == 200, sent.text
    assert sent.json()["accepted"] is True
    listed = await api.get("/api/v1/leads", params={"q": "Jane"}, headers=admin)
    (lead,) = listed.json()["items"]
    # No pool and no rule: the form's creator owns the lead.
    assert lead["source"] == "web_form" and lead["owner_id"] == company.admin.id
    assert_problem(await api.get("/api/v1/public/forms/unknown-token"), 404)
    assert_problem(await api.get("/api/v1/forms"), 401)


async def test_an_opportunity_moves_across_the_board_through_the_api(api, identity):
    company, _ = await team(identity, 0)
    admin = bearer(company.token)
    pipeline = (await api.post("/api/v1/pipelines", json={"name": "Enterprise"}, headers=admin)).json()
    stages = pipeline["stages"]
    opp = await api.post(
        "/api/v1/opportunities",
        json={
            "name": "ERP 升级",
            "pipeline_id": pipeline["id"],
            "amount": "1234567.89",
            "currency": "CNY",
            "products": [
                {"product_id": pipeline["id"], "name": "ERP", "quantity": "2", "unit_price": "617283.945"}
            ],
        },
        headers=admin,
    )
    assert opp.status_code == 201, opp.text
    assert opp.json()["amount"] == "1234567.89" and opp.json()["products"][0]["unit_price"] == "617283.945"
    stage_url = f"/api/v1/opportunities/{opp.json()['id']}/stage"
    stale_move = await api.post(
        stage_url, json={"stage_id": stages[2]["id"]}, headers={**admin, "If-Match": '"9"'}
    )
    assert_problem(stale_move, 412)
    moved = await api.post(stage_url, json={"stage_id": stages[2]["id"]}, headers={**admin, "If-Match": '"1"'})
    assert moved.status_code == 200, moved.text
    board = await api.get(f"/api/v1/pipelines/{pipeline['id']}/board", headers=admin)
    assert board.status_code == 200, board.text
    column = board.json()["columns"][2]
    assert column["count"] == 1 and column["totals"] == [
        {"currency": "CNY", "amount": "1234567.89", "weighted_amount": "617283.95", "count": 1}
    ]
    stale = await api.patch(
        f"/api/v1/opportunities/{opp.json()['id']}",
        json={"next_step": "x"},
        headers={**admin, "If-Match": '"1"'},
    )
    assert_problem(stale, 412)


async def test_an_approved_quote_downloads_as_a_pdf_through_the_api(api, identity, tmp_path):
    company, _ = await team(identity, 0)
    admin = bearer(company.token)
    product = (
        await api.post(
            "/api/v1/products",
            json={
                "code": "LIC-ERP",
                "name": "企业资源计划软件许可",
                "name_en": "ERP licence",
                "unit": "套",
                "tax_rate": "6",
            },
            headers=admin,
        )
    ).json()
    book = await api.post(
        "/api/v1/price-books",
        json={
            "name": "渠道价",
            "currency": "CNY",
            "customer_group": "distributor",
            "entries": [{"product_id": product["id"], "unit_price": "120000.00"}],
        },
        headers=admin,
    )
    assert book.status_code == 201, book.text
    quote = await api.post(
        "/api/v1/quotes",
        json={
            "customer_name": "北京智联网络有限公司",
            "price_book_id": book.json()["id"],
            "lines": [{"product_id": product["id"], "quantity": "2", "discount_percent": "2.5"}],
        },
        headers=admin,
    )
    assert quote.status_code == 201, quote.text
    body = quote.json()
    assert (body["list_total"], body["discount_total"], body["tax_total"], body["total"]) == (
        "240000.00",
        "6000.00",
        "14040.00",
        "248040.00",
    )
    qid = body["id"]
    assert_problem(await api.get(f"/api/v1/quotes/{qid}/pdf", headers=admin), 409, "quote_not_approved")
    submitted = await api.post(f"/api/v1/quotes/{qid}/submit", json={}, headers=admin)
    assert submitted.json()["quote"]["status"] == "approved" and submitted.json()["approval"] is None, (
        submitted.text
    )
    pdf = await api.get(f"/api/v1/quotes/{qid}/pdf", headers=admin)
    assert pdf.status_code == 200
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["content-disposition"] == f'attachment; filename="{body["number"]}-v1.pdf"'
    assert pdf.content.startswith(b"%PDF-") and "etag" not in pdf.headers
    import io

    from pypdf import PdfReader

    text = PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()
    assert "北京智联网络有限公司" in text and "企业资源计划软件许可" in text and "248,040.00" in text
    (tmp_path / "quote.pdf").write_bytes(pdf.content)
    assert_problem(await api.get(f"/api/v1/quotes/{qid}/pdf"), 401)


async def test_collection_tasks_and_the_forecast_through_the_api(api, identity, customers_channel):
    company, _ = await team(identity, 0)
    admin = bearer(company.token)
    # The contract's account exists at the customers service (a reference names a record that exists).
    account = await new_account(customers_channel, company.md, "北京智联网络有限公司")
    contract = await api.post(
        "/api/v1/contracts",
        json={"title": "维保合同", "account_id": account, "amount": "1000.00", "currency": "CNY"},
        headers=admin,
    )
    assert contract.status_code == 201, contract.text
    cid = contract.json()["id"]
    submitted = await api.post(f"/api/v1/contracts/{cid}/submit", json={}, headers=admin)
    assert submitted.json()["contract"]["status"] == "approved", submitted.text
    plan = await api.post(
        "/api/v1/payment-plans",
        json={
            "contract_id": cid,
            "instalments": [
                {"due_date": "2020-01-31", "amount": "400.00"},
                {"due_date": "2099-01-31", "amount": "600.00"},
            ],
        },
        headers=admin,
    )
    assert plan.status_code == 201, plan.text
    first = plan.json()["instalments"][0]["id"]
    paid = await api.post(
        "/api/v1/payments", json={"instalment_id": first, "amount": "150.50"}, headers=admin
    )
    # The answer is the payment; the instalment it paid part of shows what is still open.
    assert paid.status_code == 201 and paid.json()["amount"] == "150.50", paid.text
    assert paid.json()["instalment_id"] == first and paid.json()["refunded_amount"] == "0.00"
    again = await api.get(f"/api/v1/payment-plans/{plan.json()['id']}", headers=admin)
    assert again.json()["instalments"][0]["outstanding_amount"] == "249.50"
    assert again.json()["instalments"][0]["status"] == "partially_paid"
    jobs = await api.post("/api/v1/payments/jobs", json={}, headers=admin)
    assert jobs.json()["overdue"] == 1, jobs.text
    owed = await api.get(f"/api/v1/accounts/{account}/receivables", headers=admin)
    assert owed.json()["totals"] == [
        {
            "currency": "CNY",
            "planned": "1000.00",
            "paid": "150.50",
            "outstanding": "849.50",
            "overdue": "249.50",
            "refunded": "0.00",
        }
    ]
    task = await api.post(
        "/api/v1/tasks",
        json={"title": "催收首期款", "related_type": "contract", "related_id": cid},
        headers=admin,
    )
    assert task.status_code == 201 and task.json()["assignee_id"] == company.admin.id, task.text
    listed = await api.get("/api/v1/tasks", params={"related_id": cid}, headers=admin)
    assert [t["title"] for t in listed.json()["items"]] == ["催收首期款"]
    forecast = await api.get("/api/v1/forecasts", params={"period": "2020-01"}, headers=admin)
    assert forecast.status_code == 200, forecast.text
    assert forecast.json()["figures"][0]["collected"] == "150.50"
    assert_problem(await api.get("/api/v1/forecasts", params={"period": "next month"}, headers=admin), 422)
