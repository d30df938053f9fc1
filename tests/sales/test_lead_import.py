"""Lead import through the gRPC API, on real PostgreSQL and NATS with identity running: mapping from Chinese
headers, dry run, background job with progress, exact error report, duplicates, scoring and assignment, one
event per lead, nothing half-written, resume after a crash, tenancy and permissions."""

from __future__ import annotations

import asyncio
import csv
import io

import grpc
from crm.common.v1 import imports_pb2 as ipb
from crm.identity.v1 import identity_pb2
from crm.sales.v1 import lead_imports_pb2 as pb
from crm.sales.v1 import leads_pb2 as lpb
from google.protobuf import field_mask_pb2
from openpyxl import load_workbook
from sqlalchemy import text

from tests.identity.helpers import rpc_error
from tests.sales.helpers import REP_PERMISSIONS, team

HEADER = [
    "姓名",
    "公司名称",
    "职位",
    "手机",
    "邮箱",
    "来源",
    "活动名称",
    "省份",
    "城市",
    "行业",
    "备注",
    "负责人邮箱",
]
HEADER += ["线索池", "员工人数"]


def csv_bytes(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


def row(**cells: str) -> list[str]:
    """A data row under HEADER, by the header's own words."""
    return [cells.get(h, "") for h in HEADER]


async def upload(lead_imports, who, content: bytes, name: str = "线索.csv", chunk: int = 1000):
    async def parts():
        yield pb.UploadLeadImportFileRequest(
            header=pb.UploadLeadImportFileRequest.Header(file=ipb.FileInfo(file_name=name))
        )
        for i in range(0, len(content), chunk):
            yield pb.UploadLeadImportFileRequest(chunk=content[i : i + chunk])

    return (await lead_imports.UploadLeadImportFile(parts(), metadata=who.md)).import_job


async def run_to_end(lead_imports, who, job_id):
    for _ in range(400):
        job = (
            await lead_imports.GetLeadImport(pb.GetLeadImportRequest(id=job_id), metadata=who.md)
        ).import_job
        if job.status not in (ipb.JOB_STATUS_QUEUED, ipb.JOB_STATUS_RUNNING):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"import {job_id} did not finish: {job}")


async def errors_of(lead_imports, who, job_id):
    items = (
        await lead_imports.ListLeadImportErrors(pb.ListLeadImportErrorsRequest(id=job_id), metadata=who.md)
    ).items
    return [(e.row, e.column, e.value, e.reason) for e in items]


async def leads_by_name(leads, who):
    listed = await leads.ListLeads(lpb.ListLeadsRequest(page={"limit": 200}), metadata=who.md)
    return {lead.name: lead for lead in listed.items}


async def report(lead_imports, who, job_id, **kw):
    header, data = None, b""
    async for part in lead_imports.DownloadLeadImportErrors(
        pb.DownloadLeadImportErrorsRequest(id=job_id, **kw), metadata=who.md
    ):
        if part.WhichOneof("part") == "header":
            header = part.header
        else:
            data += part.chunk
    return header, data


def test_a_row_becomes_a_lead_with_the_apis_checks_and_each_problem_names_its_cell():
    from crm_sales.domain.lead_imports import VOCABULARY, LeadConverter

    columns = ["姓名", "Lead Source", "省份", "城市", "负责人邮箱", "规模", "邮箱", "Campaign ID"]
    mapping = VOCABULARY.suggest(columns)
    assert [f for _, f in mapping] == [
        "name",
        "source",
        "province",
        "city",
        "owner_email",
        "",
        "email",
        "campaign_id",
    ]
    mapping[5] = ("规模", "attributes.规模")
    convert = LeadConverter(columns=columns, mapping=mapping, owners={"li.lei@example.cn": "u-1"}).convert
    good = convert(["周杰", "转介绍", "江苏", "苏州", " Li.Lei@Example.cn ", "200", "zj@example.cn", "c-1"])
    assert good.errors == [] and good.owner_id == "u-1"
    assert good.values == {
        "name": "周杰",
        "source": "referral",
        "email": "zj@example.cn",
        "campaign_id": "c-1",
        "region": "江苏",  # the province, when the row names no region
        "phone_key": "",
        "email_key": "zj@example.cn",
    }
    assert good.attributes == {"province": "江苏", "city": "苏州", "规模": "200"}
    bad = convert(["", "百度", "x" * 101, "", "wang@example.cn", "y" * 2001, "no-at", "c" * 37])
    assert [(c, v[:5], why.split(":")[0]) for c, v, why in bad.errors] == [
        ("Lead Source", "百度", "is not a lead source"),
        ("负责人邮箱", "wang@", "no active user of your company has this e-mail"),
        ("姓名", "", "is required"),
        ("省份", "xxxxx", "must be 0 to 100 characters"),  # as the region it would give
        ("邮箱", "no-at", "is not a valid email address"),
        ("Campaign ID", "ccccc", "must be 0 to 36 characters"),
        ("规模", "yyyyy", "keys are 1..100 and values at most 2000 characters"),
    ]


async def test_chinese_headers_are_mapped_a_dry_run_writes_nothing_and_the_job_reports_each_bad_cell(
    identity, leads, lead_imports, outbox
):
    company, (rep,) = await team(identity, 1)
    pool = (
        await leads.CreateLeadPool(
            lpb.CreateLeadPoolRequest(name="华南公海", member_ids=[rep.id]), metadata=company.md
        )
    ).pool
    # A key the scoring rules use makes a column of that name suggested as the lead's attribute.
    await leads.CreateScoringRule(
        lpb.CreateScoringRuleRequest(
            name="大公司", field="attributes.员工人数", operator="gte", value="300", points=15
        ),
        metadata=company.md,
    )
    content = csv_bytes(
        [
            HEADER,
            row(
                姓名="周杰",
                公司名称="深圳星河电子有限公司",
                职位="采购经理",
                手机="138-0013-8000",
                邮箱="zhoujie@xinghe.cn",
                来源="展会",
                活动名称="2026 广交会",
                省份="广东",
                城市="深圳",
                行业="电子制造",
                备注="需要报价",
                负责人邮箱=rep.user.email.upper(),
                员工人数="500",
            ),
            row(姓名="林芳", 手机="13900139000", 来源="百度推广"),
            row(公司名称="无名公司"),
            row(姓名="陈明", 邮箱="not-an-email"),
            row(姓名="黄磊", 线索池="不存在的池"),
            row(姓名="吴强", 负责人邮箱="nobody@example.com"),
            row(姓名="赵敏", 手机="13600136000", 线索池="华南公海"),
            row(姓名="孙丽", 邮箱="sunli@example.cn"),
        ]
    )
    job = await upload(lead_imports, company, content)
    assert job.status == ipb.JOB_STATUS_UPLOADED and list(job.columns) == HEADER
    assert {m.column: m.field for m in job.mapping} == {
        "姓名": "name",
        "公司名称": "company",
        "职位": "title",
        "手机": "phone",
        "邮箱": "email",
        "来源": "source",
        "活动名称": "source_detail",
        "省份": "province",
        "城市": "city",
        "行业": "industry",
        "备注": "description",
        "负责人邮箱": "owner_email",
        "线索池": "pool",
        "员工人数": "attributes.员工人数",
    }

    dry = await lead_imports.DryRunLeadImport(pb.DryRunLeadImportRequest(id=job.id), metadata=company.md)
    counts = dry.import_job
    assert (counts.rows_total, counts.rows_done, counts.rows_created, counts.rows_failed) == (8, 8, 3, 5)
    first = dict(dry.preview[0])
    assert first["name"] == "周杰" and first["source"] == "event" and first["owner_id"] == rep.id
    assert first["region"] == "广东" and dict(first["attributes"]) == {
        "province": "广东",
        "city": "深圳",
        "员工人数": "500",
    }
    assert dict(dry.preview[1])["pool_id"] == pool.id
    assert await leads_by_name(leads, company) == {}  # a dry run writes nothing
    expected_errors = [
        (3, "来源", "百度推广", dry.errors[0].reason),
        (4, "姓名", "", "is required"),
        (5, "邮箱", "not-an-email", dry.errors[2].reason),
        (6, "线索池", "不存在的池", "no lead pool has this name"),
        (7, "负责人邮箱", "nobody@example.com", "no active user of your company has this e-mail"),
    ]
    assert [(e.row, e.column, e.value, e.reason) for e in dry.errors] == expected_errors
    assert dry.errors[0].reason.startswith("is not a lead source: use one of manual, web_form")
    assert dry.errors[2].reason.startswith("is not a valid email address")

    started = await lead_imports.StartLeadImport(pb.StartLeadImportRequest(id=job.id), metadata=company.md)
    assert started.import_job.status in (
        ipb.JOB_STATUS_QUEUED,
        ipb.JOB_STATUS_RUNNING,
        ipb.JOB_STATUS_SUCCEEDED,
    )
    done = await run_to_end(lead_imports, company, job.id)
    assert done.status == ipb.JOB_STATUS_SUCCEEDED, done.error
    assert (done.rows_total, done.rows_done, done.rows_created, done.rows_failed, done.percent) == (
        8,
        8,
        3,
        5,
        100,
    )
    assert dict(done.options) == {"on_duplicate": "skip", "source": "import"}
    assert await errors_of(lead_imports, company, job.id) == expected_errors

    made = await leads_by_name(leads, company)
    assert set(made) == {"周杰", "赵敏", "孙丽"}
    zhou = made["周杰"]
    assert (zhou.company, zhou.title, zhou.phone, zhou.email) == (
        "深圳星河电子有限公司",
        "采购经理",
        "138-0013-8000",
        "zhoujie@xinghe.cn",
    )
    assert zhou.source == lpb.LEAD_SOURCE_EVENT and zhou.source_detail == "2026 广交会"
    assert zhou.region == "广东" and zhou.industry == "电子制造" and zhou.description == "需要报价"
    assert dict(zhou.attributes) == {"province": "广东", "city": "深圳", "员工人数": "500"}
    assert zhou.owner_id == rep.id and zhou.score == 15 and zhou.status == lpb.LEAD_STATUS_NEW
    # Into the pool named by its row, waiting there; without owner or pool, the importer owns the lead.
    assert made["赵敏"].pool_id == pool.id and made["赵敏"].owner_id == ""
    assert made["孙丽"].owner_id == company.admin.id and made["孙丽"].source == lpb.LEAD_SOURCE_IMPORT

    # Every imported lead is audited like one created through the API: its event and its first move.
    for lead in made.values():
        events = await outbox(lead.id)
        assert [e.type.rsplit(".", 1)[-1] for e in events] == ["LeadCreated"], events
        assert events[0].actor.id == company.admin.id
        moves = await leads.ListLeadHistory(lpb.ListLeadHistoryRequest(id=lead.id), metadata=company.md)
        assert [(m.action, m.reason) for m in moves.items] == [("created", f"import {job.id}")]
    finished = await outbox(job.id)
    assert [e.type.rsplit(".", 1)[-1] for e in finished] == ["LeadImportFinished"]

    header, data = await report(lead_imports, company, job.id)
    assert header.file_name == "线索-errors.csv" and header.content_type.startswith("text/csv")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert rows == [["row", "column", "value", "reason"]] + [[str(e[0]), *e[1:]] for e in expected_errors]
    header, data = await report(lead_imports, company, job.id, format=ipb.FILE_FORMAT_XLSX, locale="zh-CN")
    assert header.file_name == "线索-errors.xlsx"
    sheet = load_workbook(io.BytesIO(data), read_only=True).worksheets[0]
    assert [list(r) for r in sheet.iter_rows(values_only=True)][:2] == [
        ["行", "列", "值", "原因"],
        [3, "来源", "百度推广", expected_errors[0][3]],
    ]
    listed = await lead_imports.ListLeadImports(pb.ListLeadImportsRequest(), metadata=company.md)
    assert [j.id for j in listed.items] == [job.id]


async def test_imported_leads_are_scored_and_assigned_by_the_tenants_rules_or_go_to_the_chosen_pool(
    identity, leads, lead_imports
):
    company, (east1, east2) = await team(identity, 2)
    await leads.CreateScoringRule(
        lpb.CreateScoringRuleRequest(
            name="制造业", field="industry", operator="equals", value="制造业", points=30
        ),
        metadata=company.md,
    )
    await leads.CreateScoringRule(
        lpb.CreateScoringRuleRequest(
            name="展会", field="source", operator="equals", value="event", points=20
        ),
        metadata=company.md,
    )
    await leads.CreateAssignmentRule(
        lpb.CreateAssignmentRuleRequest(
            name="华东轮询",
            priority=1,
            regions=["华东"],
            strategy="round_robin",
            assignee_ids=[east1.id, east2.id],
        ),
        metadata=company.md,
    )
    pool = (await leads.CreateLeadPool(lpb.CreateLeadPoolRequest(name="公海"), metadata=company.md)).pool
    content = csv_bytes(
        [["Name", "Company", "Region", "Industry", "Mobile"]]
        + [[f"East {i}", f"华东公司{i}", "华东", "制造业", f"1380000{i:04d}"] for i in range(4)]
        + [["North 0", "华北公司", "华北", "零售", "13900000000"]]
    )
    job = await upload(lead_imports, company, content, name="leads.csv")
    assert [m.field for m in job.mapping] == ["name", "company", "region", "industry", "phone"]
    await lead_imports.StartLeadImport(
        pb.StartLeadImportRequest(id=job.id, source=lpb.LEAD_SOURCE_EVENT, source_detail="2026 进博会"),
        metadata=company.md,
    )
    done = await run_to_end(lead_imports, company, job.id)
    assert (done.status, done.rows_created) == (ipb.JOB_STATUS_SUCCEEDED, 5), done.error
    assert dict(done.options) == {"on_duplicate": "skip", "source": "event", "source_detail": "2026 进博会"}
    made = await leads_by_name(leads, company)
    # Round robin in file order; the row no rule matches goes to the importer, as through the API.
    assert [made[f"East {i}"].owner_id for i in range(4)] == [east1.id, east2.id, east1.id, east2.id]
    assert made["North 0"].owner_id == company.admin.id
    assert [made[f"East {i}"].score for i in range(4)] == [50] * 4 and made["North 0"].score == 20
    assert {(lead.source, lead.source_detail) for lead in made.values()} == {
        (lpb.LEAD_SOURCE_EVENT, "2026 进博会")
    }

    # Into a chosen pool: no rule runs, the leads wait in the pool for someone to claim them.
    again = await upload(
        lead_imports, company, csv_bytes([["姓名", "区域"], ["池中客户", "华东"]]), name="pool.csv"
    )
    await lead_imports.StartLeadImport(
        pb.StartLeadImportRequest(id=again.id, pool_id=pool.id), metadata=company.md
    )
    assert (await run_to_end(lead_imports, company, again.id)).rows_created == 1
    waiting = (await leads_by_name(leads, company))["池中客户"]
    assert (waiting.pool_id, waiting.owner_id) == (pool.id, "")
    after = (
        await leads.CreateLead(lpb.CreateLeadRequest(name="API 客户", region="华东"), metadata=company.md)
    ).lead
    assert after.owner_id == east1.id  # the import took two full turns of the round robin, the pool none


async def test_duplicates_of_open_leads_are_skipped_updated_or_created_as_the_import_says(
    identity, leads, lead_imports, outbox
):
    company, _ = await team(identity, 0)
    existing = (
        await leads.CreateLead(
            lpb.CreateLeadRequest(name="周杰", phone="13800138000", email="Zhou@Xinghe.cn", title="经理"),
            metadata=company.md,
        )
    ).lead
    closed = (
        await leads.CreateLead(lpb.CreateLeadRequest(name="老线索", phone="13700137000"), metadata=company.md)
    ).lead
    await leads.UpdateLead(
        lpb.UpdateLeadRequest(
            id=closed.id,
            lead=lpb.Lead(status=lpb.LEAD_STATUS_UNQUALIFIED),
            update_mask=field_mask_pb2.FieldMask(paths=["status"]),
        ),
        metadata=company.md,
    )
    header = ["姓名", "手机", "邮箱", "职位"]
    skip = await upload(
        lead_imports,
        company,
        csv_bytes(
            [
                header,
                ["周杰", "+86 138-0013-8000", "", ""],
                ["周先生", "", " zhou@xinghe.cn ", ""],
                ["新客户", "137 0013 7000", "", ""],  # the lead with this phone is closed: not a duplicate
                ["新客户二", "13700137000", "", ""],  # but the row above has it
            ]
        ),
    )
    await lead_imports.StartLeadImport(pb.StartLeadImportRequest(id=skip.id), metadata=company.md)
    done = await run_to_end(lead_imports, company, skip.id)
    assert (done.rows_created, done.rows_skipped, done.rows_failed) == (1, 3, 0)
    assert await errors_of(lead_imports, company, skip.id) == [
        (2, "手机", "+86 138-0013-8000", f"skipped: duplicate of lead {existing.id} (phone)"),
        (3, "邮箱", "zhou@xinghe.cn", f"skipped: duplicate of lead {existing.id} (email)"),
        (5, "手机", "13700137000", "skipped: duplicate of an earlier row of this file (phone)"),
    ]

    update = await upload(
        lead_imports,
        company,
        csv_bytes([header, ["周杰", "138 0013 8000", "", "采购总监"], ["王五", "", "", ""]]),
    )
    await lead_imports.StartLeadImport(
        pb.StartLeadImportRequest(id=update.id, on_duplicate=pb.LEAD_DUPLICATE_ACTION_UPDATE),
        metadata=company.md,
    )
    done = await run_to_end(lead_imports, company, update.id)
    assert (done.rows_created, done.rows_updated, done.rows_skipped) == (1, 1, 0)
    got = (await leads.GetLead(lpb.GetLeadRequest(id=existing.id), metadata=company.md)).lead
    # The row's non-empty values; the rest (and the owner) stay.
    assert (got.title, got.phone, got.email, got.owner_id) == (
        "采购总监",
        "138 0013 8000",
        "Zhou@Xinghe.cn",
        existing.owner_id,
    )
    assert got.version == existing.version + 1
    assert [e.type.rsplit(".", 1)[-1] for e in await outbox(existing.id)] == ["LeadCreated", "LeadUpdated"]

    anyway = await upload(lead_imports, company, csv_bytes([header, ["周杰", "13800138000", "", ""]]))
    await lead_imports.StartLeadImport(
        pb.StartLeadImportRequest(id=anyway.id, on_duplicate=pb.LEAD_DUPLICATE_ACTION_CREATE),
        metadata=company.md,
    )
    assert (await run_to_end(lead_imports, company, anyway.id)).rows_created == 1
    same_phone = await leads.ListLeads(lpb.ListLeadsRequest(q="周杰"), metadata=company.md)
    assert len(same_phone.items) == 2


async def test_a_row_the_database_refuses_leaves_no_half_lead(identity, leads, lead_imports, sales_service):
    company, _ = await team(identity, 0)
    db = sales_service.runtime.db
    async with db.unit_of_work() as uow:
        await uow.session.execute(
            text(
                "ALTER TABLE leads ADD CONSTRAINT test_no_forbidden_lead CHECK (name <> '禁止的名字') NOT VALID"
            )
        )
    try:
        job = await upload(
            lead_imports,
            company,
            csv_bytes(
                [["姓名", "手机"], ["张三", "13800138001"], ["禁止的名字", "13800138002"], ["李四", ""]]
            ),
        )
        await lead_imports.StartLeadImport(pb.StartLeadImportRequest(id=job.id), metadata=company.md)
        done = await run_to_end(lead_imports, company, job.id)
    finally:
        async with db.unit_of_work() as uow:
            await uow.session.execute(text("ALTER TABLE leads DROP CONSTRAINT test_no_forbidden_lead"))
    assert (done.rows_created, done.rows_failed) == (2, 1)
    [(number, column, _value, reason)] = await errors_of(lead_imports, company, job.id)
    assert (number, column) == (3, "") and "test_no_forbidden_lead" in reason
    assert set(await leads_by_name(leads, company)) == {"张三", "李四"}
    async with db.read() as session:
        counts = (
            await session.execute(
                text(
                    "SELECT (SELECT count(*) FROM leads WHERE tenant_id = :t), "
                    "(SELECT count(*) FROM lead_moves WHERE tenant_id = :t), "
                    "(SELECT count(*) FROM outbox_events WHERE tenant_id = :t AND subject LIKE '%.LeadCreated')"
                ),
                {"t": company.tenant.id},
            )
        ).one()
        stray = await session.scalar(
            text(
                "SELECT count(*) FROM outbox_events WHERE tenant_id = :t "
                "AND position(convert_to('禁止的名字', 'UTF8') in envelope) > 0"
            ),
            {"t": company.tenant.id},
        )
    assert tuple(counts) == (2, 2, 2) and stray == 0


async def test_a_crashed_import_resumes_after_its_checkpoint_and_fails_cleanly_after_three_claims(
    identity, leads, lead_imports, sales_service
):
    from crm_kit import context
    from crm_kit.imports import pipeline, worker
    from crm_kit.imports.models import ImportJob
    from crm_sales.clock import Clock
    from crm_sales.domain.lead_imports import LeadImporter

    company, _ = await team(identity, 0)
    rows = [["姓名", "手机"]] + [[f"客户{i}", f"1390000{i:04d}"] for i in range(700)]
    job = await upload(lead_imports, company, csv_bytes(rows), chunk=64 * 1024)
    # The dry run keeps the choices on the job; then it is "claimed by a worker" that commits one batch and dies.
    await lead_imports.DryRunLeadImport(pb.DryRunLeadImportRequest(id=job.id), metadata=company.md)
    db = sales_service.runtime.db
    async with db.unit_of_work() as uow:
        await uow.session.execute(
            text(
                "UPDATE import_jobs SET status = 'running', attempts = 1, "
                "lease_until = now() + interval '1 minute' WHERE id = :id"
            ),
            {"id": job.id},
        )
    async with db.read() as session:
        claimed = await session.get(ImportJob, job.id)
    batcher = await LeadImporter(people=None, clock=Clock()).batcher(db, claimed)  # type: ignore[arg-type]
    first = batcher.convert([(n + 2, r) for n, r in enumerate(rows[1 : 1 + batcher.batch_rows])])
    token = context.bind(context.RequestContext(principal=pipeline.principal_of(claimed)))
    try:
        await pipeline.commit_batch(db, batcher, claimed, 1, first, 0, len(first))
    finally:
        context.reset(token)
    mid = (
        await lead_imports.GetLeadImport(pb.GetLeadImportRequest(id=job.id), metadata=company.md)
    ).import_job
    assert (mid.status, mid.rows_done, mid.rows_created) == (ipb.JOB_STATUS_RUNNING, 500, 500)
    async with db.unit_of_work() as uow:  # the worker dies: its lease runs out
        await uow.session.execute(
            text("UPDATE import_jobs SET lease_until = now() - interval '1 second' WHERE id = :id"),
            {"id": job.id},
        )
    # The service's worker takes it over and finishes from the checkpoint.
    done = await run_to_end(lead_imports, company, job.id)
    assert done.status == ipb.JOB_STATUS_SUCCEEDED, done.error
    assert (done.rows_done, done.rows_created) == (700, 700)
    async with db.read() as session:
        names = await session.scalar(
            text("SELECT count(DISTINCT name) FROM leads WHERE tenant_id = :t"), {"t": company.tenant.id}
        )
        attempts = await session.scalar(
            text("SELECT attempts FROM import_jobs WHERE id = :id"), {"id": job.id}
        )
    assert names == 700 and attempts == 2

    # A job whose workers kept dying is failed with a reason, not retried forever.
    stuck = await upload(lead_imports, company, csv_bytes(rows[:3]))
    async with db.unit_of_work() as uow:
        await uow.session.execute(
            text(
                "UPDATE import_jobs SET status = 'running', attempts = :n, "
                "lease_until = now() - interval '1 second' WHERE id = :id"
            ),
            {"id": stuck.id, "n": worker.MAX_ATTEMPTS},
        )
    # Nothing wakes the worker here: it finds the job on its next poll.
    failed = await run_to_end(lead_imports, company, stuck.id)
    assert failed.status == ipb.JOB_STATUS_FAILED
    assert failed.error == "the import stopped 3 times without finishing; rows up to 0 are imported"


async def test_imports_belong_to_their_tenant_and_need_the_import_right(identity, leads, lead_imports):
    company, (rep,) = await team(identity, 1)
    other, _ = await team(identity, 0, name="腾讯")
    job = await upload(lead_imports, company, csv_bytes([["姓名", "负责人邮箱"], ["周杰", rep.user.email]]))

    # Another company's job id is not found, whatever the call.
    for call in (
        lead_imports.GetLeadImport(pb.GetLeadImportRequest(id=job.id), metadata=other.md),
        lead_imports.DryRunLeadImport(pb.DryRunLeadImportRequest(id=job.id), metadata=other.md),
        lead_imports.StartLeadImport(pb.StartLeadImportRequest(id=job.id), metadata=other.md),
        lead_imports.CancelLeadImport(pb.CancelLeadImportRequest(id=job.id), metadata=other.md),
        lead_imports.ListLeadImportErrors(pb.ListLeadImportErrorsRequest(id=job.id), metadata=other.md),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    download = lead_imports.DownloadLeadImportErrors(
        pb.DownloadLeadImportErrorsRequest(id=job.id), metadata=other.md
    )
    assert (await rpc_error(download.read())).code() == grpc.StatusCode.NOT_FOUND
    assert not (await lead_imports.ListLeadImports(pb.ListLeadImportsRequest(), metadata=other.md)).items

    # A rep may create leads but not import them.
    denied = await rpc_error(upload(lead_imports, rep, csv_bytes([["姓名"], ["a"]])))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    for call in (
        lead_imports.GetLeadImport(pb.GetLeadImportRequest(id=job.id), metadata=rep.md),
        lead_imports.ListLeadImports(pb.ListLeadImportsRequest(), metadata=rep.md),
        lead_imports.StartLeadImport(pb.StartLeadImportRequest(id=job.id), metadata=rep.md),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.PERMISSION_DENIED

    # With the right to import leads, but not to read users, owners cannot be named by e-mail.
    lead_and_import = identity_pb2.Permission(
        object="lead", actions=["create", "read", "update", "import"], data_scope=identity_pb2.DATA_SCOPE_OWN
    )
    importer = await identity.CreateRole(
        identity_pb2.CreateRoleRequest(
            name="线索导入员",
            permissions=[p for p in REP_PERMISSIONS if p.object != "lead"] + [lead_and_import],
        ),
        metadata=company.md,
    )
    from tests.identity.helpers import invite_and_join
    from tests.sales.helpers import Rep

    user, token = await invite_and_join(identity, company, role_ids=[importer.role.id])
    clerk = Rep(user, token)
    theirs = await upload(lead_imports, clerk, csv_bytes([["姓名", "负责人邮箱"], ["周杰", rep.user.email]]))
    refused = await rpc_error(
        lead_imports.DryRunLeadImport(pb.DryRunLeadImportRequest(id=theirs.id), metadata=clerk.md)
    )
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "read users" in refused.details()
    # Without the owner column the same file imports.
    await lead_imports.StartLeadImport(
        pb.StartLeadImportRequest(id=theirs.id, mapping=[ipb.ColumnMapping(column="姓名", field="name")]),
        metadata=clerk.md,
    )
    done = await run_to_end(lead_imports, clerk, theirs.id)
    assert (done.status, done.rows_created) == (ipb.JOB_STATUS_SUCCEEDED, 1)
    assert (await leads_by_name(leads, clerk))["周杰"].owner_id == clerk.id

    # Bad choices are 422s naming the field; a started import cannot be started or dry-run again.
    bad = await rpc_error(
        lead_imports.StartLeadImport(
            pb.StartLeadImportRequest(id=job.id, pool_id="0190a7e4-0000-7000-8000-00000000abcd"),
            metadata=company.md,
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "pool_id" in bad.details()
    again = await rpc_error(
        lead_imports.StartLeadImport(pb.StartLeadImportRequest(id=theirs.id), metadata=clerk.md)
    )
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
