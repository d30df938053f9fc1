"""Lead import end to end through the public REST API, as a web client does it: multipart upload, suggested
mapping, dry run, start, progress, the errors as JSON and as a downloaded report; the same routes and shapes
as customers' /imports."""

from __future__ import annotations

import asyncio
import csv
import io

from openpyxl import load_workbook

from tests.gateway.conftest import assert_problem
from tests.sales.helpers import bearer, team


def csv_file(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


async def finished(api, headers, job_id) -> dict:
    for _ in range(400):
        job = (await api.get(f"/api/v1/lead-imports/{job_id}", headers=headers)).json()
        if job["status"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(job)


async def test_a_file_of_leads_is_uploaded_dry_run_imported_and_its_error_report_downloaded(api, identity):
    company, (rep,) = await team(identity, 1)
    h = bearer(company.token)
    rule = await api.post(
        "/api/v1/lead-scoring-rules",
        json={"name": "制造业", "field": "industry", "operator": "equals", "value": "制造业", "points": 30},
        headers=h,
    )
    assert rule.status_code == 201, rule.text
    content = csv_file(
        [
            ["客户姓名", "公司", "手机号码", "电子邮箱", "所属行业", "跟进人邮箱", "备注"],
            [
                "周杰",
                "苏州精密机械有限公司",
                "13800138000",
                "zhoujie@example.cn",
                "制造业",
                rep.user.email,
                "要样品",
            ],
            ["", "无名公司", "", '=HYPERLINK("http://evil.example")', "", "", ""],
            ["林芳", "", "13800138000", "", "", "", "同一个手机"],
        ]
    )
    up = await api.post(
        "/api/v1/lead-imports", files={"file": ("展会线索.csv", content, "text/csv")}, headers=h
    )
    assert up.status_code == 201, up.text
    job = up.json()
    assert up.headers["location"] == f"/api/v1/lead-imports/{job['id']}"
    assert job["status"] == "uploaded" and job["file_name"] == "展会线索.csv"
    assert [m["field"] for m in job["mapping"]] == [
        "name",
        "company",
        "phone",
        "email",
        "industry",
        "owner_email",
        "description",
    ]
    # The same job shape as customers' imports.
    assert {"rows_total", "rows_done", "rows_failed", "percent", "columns", "mapping", "error"} <= job.keys()

    dry = await api.post(f"/api/v1/lead-imports/{job['id']}/dry-run", json={}, headers=h)
    assert dry.status_code == 200, dry.text
    assert dry.json()["import_job"]["rows_failed"] == 1 and dry.json()["import_job"]["rows_skipped"] == 1
    assert [e["row"] for e in dry.json()["errors"]] == [3, 3, 4]
    assert dry.json()["preview"][0]["name"] == "周杰"
    assert (await api.get("/api/v1/leads", headers=h)).json()["items"] == []

    started = await api.post(
        f"/api/v1/lead-imports/{job['id']}/start",
        json={"source": "event", "source_detail": "2026 工博会"},
        headers=h,
    )
    assert started.status_code == 202, started.text
    done = await finished(api, h, job["id"])
    assert done["status"] == "succeeded" and done["percent"] == 100
    assert (done["rows_total"], done["rows_created"], done["rows_skipped"], done["rows_failed"]) == (
        3,
        1,
        1,
        1,
    )

    errors = (await api.get(f"/api/v1/lead-imports/{job['id']}/errors", headers=h)).json()["items"]
    not_an_email = "is not a valid email address: An email address must have an @-sign."
    assert [(e["row"], e["column"], e["value"], e["reason"]) for e in errors] == [
        (3, "客户姓名", None, "is required"),
        (3, "电子邮箱", '=HYPERLINK("http://evil.example")', not_an_email),
        (4, "手机号码", "13800138000", "skipped: duplicate of an earlier row of this file (phone)"),
    ]
    report = await api.get(f"/api/v1/lead-imports/{job['id']}/errors/report", headers=h)
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/csv")
    assert (
        "filename*=UTF-8''%E5%B1%95%E4%BC%9A%E7%BA%BF%E7%B4%A2-errors.csv"
        in report.headers["content-disposition"]
    )
    assert list(csv.reader(io.StringIO(report.content.decode("utf-8-sig")))) == [
        ["row", "column", "value", "reason"],
        ["3", "客户姓名", "", "is required"],
        # A value a spreadsheet would run as a formula comes back quoted (CSV injection).
        ["3", "电子邮箱", '\'=HYPERLINK("http://evil.example")', not_an_email],
        ["4", "手机号码", "13800138000", "skipped: duplicate of an earlier row of this file (phone)"],
    ]
    xlsx = await api.get(
        f"/api/v1/lead-imports/{job['id']}/errors/report",
        params={"format": "xlsx", "locale": "zh-CN"},
        headers=h,
    )
    sheet = load_workbook(io.BytesIO(xlsx.content), read_only=True).worksheets[0]
    sheet_rows = [list(r) for r in sheet.iter_rows(values_only=True)]
    assert sheet_rows[0] == ["行", "列", "值", "原因"] and sheet_rows[3][:3] == [4, "手机号码", "13800138000"]
    assert sheet_rows[2][2] == '\'=HYPERLINK("http://evil.example")'

    (lead,) = (await api.get("/api/v1/leads", headers=h)).json()["items"]
    assert (lead["name"], lead["owner_id"], lead["score"]) == ("周杰", rep.id, 30)
    assert (lead["source"], lead["source_detail"]) == ("event", "2026 工博会")
    assert [j["id"] for j in (await api.get("/api/v1/lead-imports", headers=h)).json()["items"]] == [
        job["id"]
    ]
    again = await api.post(f"/api/v1/lead-imports/{job['id']}/start", json={}, headers=h)
    assert_problem(again, 409, "import_started")


async def test_lead_imports_are_private_to_their_company_and_need_the_import_right(api, identity):
    company, (rep,) = await team(identity, 1)
    other, _ = await team(identity, 0, name="腾讯")
    h = bearer(company.token)
    up = await api.post(
        "/api/v1/lead-imports", files={"file": ("a.csv", csv_file([["姓名"], ["周杰"]]))}, headers=h
    )
    job_id = up.json()["id"]
    for path in (f"/api/v1/lead-imports/{job_id}", f"/api/v1/lead-imports/{job_id}/errors/report"):
        assert_problem(await api.get(path, headers=bearer(other.token)), 404)
    assert_problem(
        await api.post(f"/api/v1/lead-imports/{job_id}/start", json={}, headers=bearer(other.token)), 404
    )
    # A sales rep creates leads but may not import them.
    denied = await api.post(
        "/api/v1/lead-imports",
        files={"file": ("a.csv", csv_file([["姓名"], ["周杰"]]))},
        headers=bearer(rep.token),
    )
    assert_problem(denied, 403)
    assert_problem(await api.get(f"/api/v1/lead-imports/{job_id}", headers=bearer(rep.token)), 403)
    # Uploads are checked at the edge like customers' are.
    assert_problem(await api.post("/api/v1/lead-imports", json={}, headers=h), 415)
    assert_problem(await api.post("/api/v1/lead-imports", files={"x": ("a.csv", b"a")}, headers=h), 422)
    assert_problem(await api.post("/api/v1/lead-imports", files={"file": ("a.csv", b"a")}), 401)
    assert_problem(
        await api.post(
            f"/api/v1/lead-imports/{job_id}/dry-run",
            json={"mapping": [{"column": "姓名", "field": "no_such_field"}]},
            headers=h,
        ),
        422,
    )


async def test_lead_import_routes_are_documented_like_customers_imports(api):
    doc = api.app.openapi()
    paths = doc["paths"]
    for suffix, method in (
        ("", "get"),
        ("", "post"),
        ("/{id}", "get"),
        ("/{id}/dry-run", "post"),
        ("/{id}/start", "post"),
        ("/{id}/cancel", "post"),
        ("/{id}/errors", "get"),
        ("/{id}/errors/report", "get"),
    ):
        assert method in paths[f"/api/v1/imports{suffix}"], suffix
        assert method in paths[f"/api/v1/lead-imports{suffix}"], suffix
    upload = paths["/api/v1/lead-imports"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file"]
    dry = paths["/api/v1/lead-imports/{id}/dry-run"]["post"]["requestBody"]["content"]["application/json"]
    body = doc["components"]["schemas"][dry["schema"]["$ref"].rsplit("/", 1)[1]]
    assert {"mapping", "owner_id", "pool_id", "on_duplicate", "source", "source_detail"} <= body[
        "properties"
    ].keys()

    # The common job of lead imports has the same fields as customers' (each under its own schema name).
    def answer(path: str) -> dict:
        ref = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        return doc["components"]["schemas"][ref.rsplit("/", 1)[1]]

    ours = answer("/api/v1/lead-imports/{id}")["properties"].keys()
    theirs = answer("/api/v1/imports/{id}")["properties"].keys()
    assert theirs - ours == {"target"} and ours - theirs == {"options"}
