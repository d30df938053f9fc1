"""End to end through the gateway: uploads and downloads of files (imports, error reports, exports) with the
caller's permissions, and duplicates and merges as a web client sees them."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator

import httpx
import pytest
from openpyxl import load_workbook

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
async def dapi(test_infra, identity_service, customers_service) -> AsyncIterator[httpx.AsyncClient]:
    settings = gateway_settings(
        test_infra, identity_service.address, customers_service_addr=customers_service.address
    )
    async with running_gateway(settings) as client:
        yield client


async def member(api, company, permissions: list[dict]) -> dict[str, str]:
    role = await api.post(
        "/api/v1/roles",
        json={"name": f"role-{unique_email()}", "permissions": permissions},
        headers=company.headers,
    )
    assert role.status_code == 201, role.text
    email = unique_email("sales")
    invited = await api.post(
        "/api/v1/users",
        json={"email": email, "name": "李雷", "role_ids": [role.json()["id"]]},
        headers=company.headers,
    )
    assert invited.status_code == 201, invited.text
    await api.post(
        "/api/v1/auth/accept-invitation",
        json={"invitation_token": invited.json()["invitation_token"], "password": PASSWORD},
    )
    token = await api.post("/api/v1/auth/token", json={"email": email, "password": PASSWORD})
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


async def create_account(api, headers, **account) -> dict:
    r = await api.post("/api/v1/accounts", json=account, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def csv_file(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


async def finished(api, headers, job_id) -> dict:
    for _ in range(200):
        job = (await api.get(f"/api/v1/imports/{job_id}", headers=headers)).json()
        if job["status"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(job)


async def test_a_file_is_uploaded_dry_run_imported_and_its_error_report_downloaded(dapi):
    company = await sign_up(dapi)
    h = company.headers
    content = csv_file(
        [
            ["客户名称", "统一社会信用代码", "联系电话", "行业"],
            ["华为技术有限公司", credit_code(1), "0755-28780808", "通信"],
            ["腾讯科技（深圳）有限公司", "91440300708461136X", "13800138000", "互联网"],
            ["阿里巴巴（中国）有限公司", "", "电话号码", "电商"],
        ]
    )
    up = await dapi.post(
        "/api/v1/imports",
        files={"file": ("客户.csv", content, "text/csv")},
        data={"target": "accounts"},
        headers=h,
    )
    assert up.status_code == 201, up.text
    job = up.json()
    assert up.headers["location"] == f"/api/v1/imports/{job['id']}"
    assert job["status"] == "uploaded" and job["file_name"] == "客户.csv"
    assert [m["field"] for m in job["mapping"]] == ["name", "credit_code", "phones", "industry"]

    dry = await dapi.post(f"/api/v1/imports/{job['id']}/dry-run", json={}, headers=h)
    assert dry.status_code == 200, dry.text
    assert dry.json()["import_job"]["rows_failed"] == 2 and len(dry.json()["errors"]) == 2

    started = await dapi.post(f"/api/v1/imports/{job['id']}/start", json={}, headers=h)
    assert started.status_code == 202, started.text
    done = await finished(dapi, h, job["id"])
    assert done["status"] == "succeeded" and done["percent"] == 100
    assert (done["rows_total"], done["rows_created"], done["rows_failed"]) == (3, 1, 2)

    errors = (await dapi.get(f"/api/v1/imports/{job['id']}/errors", headers=h)).json()["items"]
    assert [(e["row"], e["column"], e["value"]) for e in errors] == [
        (3, "统一社会信用代码", "91440300708461136X"),
        (4, "联系电话", "电话号码"),
    ]
    report = await dapi.get(f"/api/v1/imports/{job['id']}/errors/report", headers=h)
    assert report.status_code == 200, report.text
    assert report.headers["content-type"].startswith("text/csv")
    assert "filename*=UTF-8''%E5%AE%A2%E6%88%B7-errors.csv" in report.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(report.content.decode("utf-8-sig"))))
    assert rows == [
        ["row", "column", "value", "reason"],
        ["3", "统一社会信用代码", "91440300708461136X", errors[0]["reason"]],
        ["4", "联系电话", "电话号码", "is not a phone number"],
    ]
    xlsx = await dapi.get(f"/api/v1/imports/{job['id']}/errors/report?format=xlsx", headers=h)
    sheet = load_workbook(io.BytesIO(xlsx.content), read_only=True).worksheets[0]
    assert [list(r) for r in sheet.iter_rows(values_only=True)][2] == [
        4,
        "联系电话",
        "电话号码",
        "is not a phone number",
    ]

    # Uploads are checked at the edge too.
    assert_problem(await dapi.post("/api/v1/imports", json={"target": "accounts"}, headers=h), 415)
    assert_problem(
        await dapi.post(
            "/api/v1/imports", files={"x": ("a.csv", b"a")}, data={"target": "accounts"}, headers=h
        ),
        422,
    )
    assert_problem(
        await dapi.post("/api/v1/imports", files={"file": ("a.csv", b"a")}, data={"target": "x"}, headers=h),
        422,
    )
    assert_problem(await dapi.post("/api/v1/imports", files={"file": ("a.csv", b"a")}), 401)
    assert_problem(
        await dapi.get(f"/api/v1/imports/{job['id']}/errors/report", headers=(await sign_up(dapi)).headers),
        404,
    )


async def test_exports_stream_the_filtered_list_without_hidden_fields(dapi):
    company = await sign_up(dapi)
    h = company.headers
    field = await dapi.post(
        "/api/v1/custom-fields",
        json={
            "record_type": "account",
            "key": "budget",
            "label_zh": "预算",
            "label_en": "Budget",
            "type": "currency",
        },
        headers=h,
    )
    assert field.status_code == 201, field.text
    await create_account(
        dapi,
        h,
        name="华为技术有限公司",
        phones=["13800138000"],
        province="广东省",
        custom_fields={"budget": "880000.00"},
    )
    await create_account(dapi, h, name="腾讯科技有限公司", phones=["13900139000"], province="广东省")
    await create_account(dapi, h, name="阿里巴巴（中国）有限公司", phones=["13700137000"], province="浙江省")

    full = await dapi.get(
        "/api/v1/exports",
        params={"record_type": "account", "filter": "province:eq:广东省", "sort": "name", "locale": "zh-CN"},
        headers=h,
    )
    assert full.status_code == 200, full.text
    rows = list(csv.DictReader(io.StringIO(full.content.decode("utf-8-sig"))))
    assert [r["名称"] for r in rows] == ["华为技术有限公司", "腾讯科技有限公司"]
    assert rows[0]["电话"] == "13800138000" and rows[0]["预算"] == "880000.00"

    sales = await member(
        dapi,
        company,
        [
            {
                "object": "account",
                "actions": ["read", "export"],
                "data_scope": "all",
                "field_rules": [
                    {"field": "phones", "access": "hidden"},
                    {"field": "custom_budget", "access": "hidden"},
                ],
            },
        ],
    )
    for fmt in ("csv", "xlsx"):
        r = await dapi.get("/api/v1/exports", params={"record_type": "account", "format": fmt}, headers=sales)
        assert r.status_code == 200, r.text
        if fmt == "csv":
            table = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
        else:
            table = [
                list(x)
                for x in load_workbook(io.BytesIO(r.content), read_only=True)
                .worksheets[0]
                .iter_rows(values_only=True)
            ]
        assert len(table) == 4 and "name" in table[0]
        assert "phones" not in table[0] and "Budget" not in table[0]
        flat = repr(table)
        for secret in ("13800138000", "13900139000", "880000"):
            assert secret not in flat, (fmt, secret)
    asked = await dapi.get(
        "/api/v1/exports", params={"record_type": "account", "fields": ["name", "phones"]}, headers=sales
    )
    assert_problem(asked, 403, "field_hidden")
    reader = await member(dapi, company, [{"object": "account", "actions": ["read"], "data_scope": "all"}])
    assert_problem(await dapi.get("/api/v1/exports", params={"record_type": "account"}, headers=reader), 403)


async def test_duplicates_and_merges_through_the_api(dapi):
    company = await sign_up(dapi)
    h = company.headers
    rule = await dapi.post(
        "/api/v1/duplicate-rules",
        json={
            "name": "同名公司",
            "record_type": "account",
            "match": "company_name",
            "on_create": "block",
        },
        headers=h,
    )
    assert rule.status_code == 201, rule.text
    huawei = await create_account(dapi, h, name="华为技术有限公司")
    blocked = await dapi.post("/api/v1/accounts", json={"name": "HUAWEI Technologies Co., Ltd."}, headers=h)
    problem = assert_problem(blocked, 409, "duplicate_found")
    assert huawei["id"] in problem["detail"]

    await dapi.patch(
        f"/api/v1/duplicate-rules/{rule.json()['id']}",
        json={"on_create": "allow"},
        headers=h,
    )
    twin = await create_account(dapi, h, name="深圳市华为技术有限公司", legal_representative="赵明路")
    check = await dapi.post(
        "/api/v1/duplicates/check",
        json={"record_type": "account", "account": {"name": "华为技术（深圳）有限公司"}},
        headers=h,
    )
    assert {c["id"] for c in check.json()["candidates"]} == {huawei["id"], twin["id"]}

    scan = await dapi.post("/api/v1/duplicate-scans", json={"record_type": "account"}, headers=h)
    assert scan.status_code == 202, scan.text
    for _ in range(100):
        groups = (await dapi.get("/api/v1/duplicates", params={"record_type": "account"}, headers=h)).json()
        if groups["items"]:
            break
        await asyncio.sleep(0.05)
    assert {m["id"] for m in groups["items"][0]["members"]} == {huawei["id"], twin["id"]}
    # record_type is optional, as documented: without it, the latest scan of every record type.
    every = await dapi.get("/api/v1/duplicates", headers=h)
    assert every.status_code == 200 and every.json()["items"] == groups["items"], every.text
    assert (await dapi.get("/api/v1/duplicates", params={"record_type": "contact"}, headers=h)).json()[
        "items"
    ] == []

    merged = await dapi.post(
        "/api/v1/merges",
        json={
            "record_type": "account",
            "survivor_id": huawei["id"],
            "merged_ids": [twin["id"]],
            "field_sources": {"legal_representative": twin["id"]},
        },
        headers=h,
    )
    assert merged.status_code == 201, merged.text
    merge = merged.json()
    assert merged.headers["location"] == f"/api/v1/merges/{merge['id']}"
    assert (await dapi.get(f"/api/v1/accounts/{huawei['id']}", headers=h)).json()[
        "legal_representative"
    ] == "赵明路"
    undone = await dapi.post(f"/api/v1/merges/{merge['id']}/undo", json={}, headers=h)
    assert undone.status_code == 200 and undone.json()["status"] == "undone"
    assert (await dapi.get(f"/api/v1/accounts/{twin['id']}", headers=h)).json().get("deleted_at") is None
    assert_problem(await dapi.post(f"/api/v1/merges/{merge['id']}/undo", json={}, headers=h), 409)


async def test_an_upload_over_the_limit_is_refused_before_it_reaches_the_service(
    test_infra, identity_service
):
    settings = gateway_settings(test_infra, identity_service.address, max_upload_bytes=1000)
    async with running_gateway(settings) as api:
        company = await sign_up(api)
        big = await api.post(
            "/api/v1/imports",
            files={"file": ("big.csv", b"x" * 5000, "text/csv")},
            data={"target": "accounts"},
            headers=company.headers,
        )
        assert_problem(big, 413, "body_too_large")

        async def chunked():
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'
            for _ in range(10):
                yield b"y" * 500

        streamed = await api.post(
            "/api/v1/imports",
            content=chunked(),
            headers={**company.headers, "content-type": "multipart/form-data; boundary=b"},
        )
        assert_problem(streamed, 413, "body_too_large")


async def test_a_retried_upload_with_its_idempotency_key_gets_the_first_job_back(dapi):
    company = await sign_up(dapi)
    h = company.headers
    content = csv_file([["客户名称", "行业"], ["美的集团股份有限公司", "家电"]])

    async def upload(key: str, data: bytes, target: str = "accounts") -> httpx.Response:
        return await dapi.post(
            "/api/v1/imports",
            files={"file": ("客户.csv", data, "text/csv")},
            data={"target": target},
            headers={**h, "Idempotency-Key": key},
        )

    first = await upload("upload-1", content)
    assert first.status_code == 201, first.text
    again = await upload("upload-1", content)
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    # The same key with another file or another target is a different request: refused, nothing made.
    assert_problem(
        await upload("upload-1", content + "格力电器,家电\r\n".encode()), 422, "idempotency_key_reused"
    )
    assert_problem(await upload("upload-1", content, target="contacts"), 422, "idempotency_key_reused")
    # A refusal is remembered too: the retry of a bad upload is the same 422, not a second attempt.
    bad = await upload("upload-2", content, target="nonsense")
    assert_problem(bad, 422)
    assert_problem(await upload("upload-2", content, target="nonsense"), 422)

    jobs = (await dapi.get("/api/v1/imports", headers=h)).json()["items"]
    assert [j["id"] for j in jobs] == [first.json()["id"]]
