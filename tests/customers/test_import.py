"""Imports through the gRPC API: upload in chunks, mapping suggested from Chinese and English headers, dry run,
background job with progress, exact error report, duplicate rules, nothing half-written, resume after a crash."""

from __future__ import annotations

import asyncio
import csv
import io

import grpc
import pytest
from crm.common.v1 import imports_pb2
from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import data_quality_pb2 as dq
from crm.customers.v1 import data_quality_pb2_grpc, duplicates_pb2
from openpyxl import Workbook
from sqlalchemy import text

from tests.customers.helpers import credit_code, new_account, rpc_error, sign_up, without_default_rules

CONTACTS, ACCOUNTS = dq.IMPORT_TARGET_CONTACTS, dq.IMPORT_TARGET_ACCOUNTS


@pytest.fixture(scope="session")
async def data(customers_service):
    async with grpc.aio.insecure_channel(customers_service.address) as channel:
        yield data_quality_pb2_grpc.CustomersDataServiceStub(channel)


def csv_bytes(rows: list[list[str]], encoding: str = "utf-8") -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode(encoding)


def xlsx_bytes(rows: list[list[object]]) -> bytes:
    wb = Workbook()
    for row in rows:
        wb.active.append(row)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


async def upload(data, company, content: bytes, target=CONTACTS, name="联系人.csv", chunk=7):
    async def parts():
        yield dq.UploadImportFileRequest(
            header=dq.UploadImportFileRequest.Header(file=dq.FileInfo(file_name=name), target=target)
        )
        for i in range(0, len(content), chunk):
            yield dq.UploadImportFileRequest(chunk=content[i : i + chunk])

    return (await data.UploadImportFile(parts(), metadata=company.md)).import_job


async def run_to_end(data, company, job_id):
    for _ in range(1200):  # 60 s at most: a loaded machine is slow to start a converter process
        job = (await data.GetImport(dq.GetImportRequest(id=job_id), metadata=company.md)).import_job
        if job.status not in (dq.JOB_STATUS_QUEUED, dq.JOB_STATUS_RUNNING):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"import {job_id} did not finish: {job}")


async def errors_of(data, company, job_id):
    items = (await data.ListImportErrors(dq.ListImportErrorsRequest(id=job_id), metadata=company.md)).items
    return [(e.row, e.column, e.value, e.reason) for e in items]


async def contacts_named(customers, company):
    listed = await customers.ListContacts(pb.ListContactsRequest(page={"limit": 200}), metadata=company.md)
    return {c.name: c for c in listed.items}


async def test_an_import_maps_chinese_headers_and_reports_each_bad_cell_exactly(identity, customers, data):
    company = await sign_up(identity)
    huawei = await new_account(customers, company, "华为技术有限公司")
    content = csv_bytes(
        [
            ["姓名", "手机", "邮箱", "公司名称", "职位", "生日", "备注列"],
            [
                "王小明",
                "138-0013-8000",
                "Wang@Huawei.com",
                "华为技术（深圳）有限公司",
                "经理;总监",
                "1990年5月20日",
                "x",
            ],
            ["李雷", "12345", "lilei@example.com", "", "", "", ""],
            ["", "13900139000", "", "", "", "", ""],
            ["韩梅梅", "13700137000", "not-an-email", "不存在的公司", "", "1990-13-01", ""],
            ["Lucy Wang", "+1 650 253 0000", "lucy@example.com", "华为技术有限公司", "", "", ""],
        ]
    )
    job = await upload(data, company, content)
    assert job.status == dq.JOB_STATUS_UPLOADED
    assert list(job.columns) == ["姓名", "手机", "邮箱", "公司名称", "职位", "生日", "备注列"]
    assert {m.column: m.field for m in job.mapping} == {
        "姓名": "name",
        "手机": "phones",
        "邮箱": "emails",
        "公司名称": "account",
        "职位": "titles",
        "生日": "birthday",
        "备注列": "",
    }

    dry = await data.DryRunImport(dq.DryRunImportRequest(id=job.id), metadata=company.md)
    assert (
        dry.import_job.rows_total == 5
        and dry.import_job.rows_created == 2
        and dry.import_job.rows_failed == 3
    )
    assert dry.preview[0]["name"] == "王小明"
    assert not (await contacts_named(customers, company))  # a dry run writes nothing

    started = (await data.StartImport(dq.StartImportRequest(id=job.id), metadata=company.md)).import_job
    assert started.status in (dq.JOB_STATUS_QUEUED, dq.JOB_STATUS_RUNNING, dq.JOB_STATUS_SUCCEEDED)
    done = await run_to_end(data, company, job.id)
    assert done.status == dq.JOB_STATUS_SUCCEEDED, done.error
    assert (done.rows_total, done.rows_done, done.rows_created, done.rows_failed, done.percent) == (
        5,
        5,
        2,
        3,
        100,
    )

    assert await errors_of(data, company, job.id) == [
        (3, "手机", "12345", "is not a valid phone number"),
        (4, "姓名", "", "is required"),
        (5, "邮箱", "not-an-email", "is not an e-mail address"),
        (5, "生日", "1990-13-01", 'is not a date (e.g. "1990-05-20" or "1990年5月20日")'),
        (5, "公司名称", "不存在的公司", "no account has this name or credit code"),
    ]
    made = await contacts_named(customers, company)
    assert set(made) == {"王小明", "Lucy Wang"}
    wang = made["王小明"]
    assert list(wang.phones) == ["138-0013-8000"] and list(wang.emails) == ["Wang@Huawei.com"]
    assert list(wang.account_ids) == [huawei.id] and list(wang.titles) == ["经理", "总监"]
    assert wang.birthday == "1990-05-20" and wang.owner_id == company.admin.id

    report = b""
    async for part in data.DownloadImportErrors(
        dq.DownloadImportErrorsRequest(id=job.id), metadata=company.md
    ):
        if part.WhichOneof("part") == "header":
            assert part.header.file_name == "联系人-errors.csv"
        else:
            report += part.chunk
    rows = list(csv.reader(io.StringIO(report.decode("utf-8-sig"))))
    assert rows[0] == ["row", "column", "value", "reason"]
    assert rows[1] == ["3", "手机", "12345", "is not a valid phone number"]
    assert len(rows) == 6


async def test_duplicate_rules_decide_skip_update_or_create_on_import(
    identity, customers, data, customers_service
):
    company = await sign_up(identity)
    await without_default_rules(data, company.tenant.id, company.md)
    for match, action in (
        (duplicates_pb2.DUPLICATE_MATCH_CREDIT_CODE, dq.IMPORT_DUPLICATE_ACTION_UPDATE),
        (duplicates_pb2.DUPLICATE_MATCH_COMPANY_NAME, dq.IMPORT_DUPLICATE_ACTION_SKIP),
    ):
        await data.CreateDuplicateRule(
            dq.CreateDuplicateRuleRequest(
                duplicate_rule=dq.DuplicateRule(
                    name=str(match),
                    record_type=pb.RECORD_TYPE_ACCOUNT,
                    match=match,
                    on_create=duplicates_pb2.DUPLICATE_ACTION_ALLOW,
                    on_update=duplicates_pb2.DUPLICATE_ACTION_ALLOW,
                    on_import=action,
                )
            ),
            metadata=company.md,
        )
    await customers.UpdateTierRules(
        pb.UpdateTierRulesRequest(
            rules=[pb.TierRule(tier="vip", filter=["industry:eq:互联网"])], default_tier="normal"
        ),
        metadata=company.md,
    )
    existing = await new_account(customers, company, "小米科技有限责任公司", credit_code=credit_code(31))
    huawei = await new_account(customers, company, "华为技术有限公司")
    content = xlsx_bytes(
        [
            ["Company Name", "Unified Social Credit Code", "Industry", "Phone"],
            [
                "智米科技有限公司",
                credit_code(31),
                "消费电子",
                "13800138000",
            ],  # same code: the existing one is updated
            ["深圳华为技术有限公司", None, "通信", None],  # same company by name: skipped
            ["字节跳动有限公司", credit_code(32), "互联网", 13900139000],
            ["北京字节跳动科技有限公司", None, None, None],  # repeats the row above within the file: skipped
        ]
    )
    job = await upload(data, company, content, target=ACCOUNTS, name="accounts.xlsx", chunk=1000)
    assert {m.column: m.field for m in job.mapping} == {
        "Company Name": "name",
        "Unified Social Credit Code": "credit_code",
        "Industry": "industry",
        "Phone": "phones",
    }
    await data.StartImport(dq.StartImportRequest(id=job.id), metadata=company.md)
    done = await run_to_end(data, company, job.id)
    assert done.status == dq.JOB_STATUS_SUCCEEDED, done.error
    assert (done.rows_created, done.rows_updated, done.rows_skipped, done.rows_failed) == (1, 1, 2, 0)
    errors = await errors_of(data, company, job.id)
    assert [e[0] for e in errors] == [3, 5]
    assert errors[0][3] == f"skipped: duplicate of record {huawei.id} (company_name)"
    assert "earlier row of this file" in errors[1][3]

    updated = (await customers.GetAccount(pb.GetAccountRequest(id=existing.id), metadata=company.md)).account
    assert (
        updated.name == "智米科技有限公司"
        and updated.industry == "消费电子"
        and list(updated.phones) == ["13800138000"]
    )
    assert updated.version == existing.version + 1
    async with customers_service.runtime.db.read() as session:
        subjects = (
            (
                await session.execute(
                    text("SELECT subject FROM outbox_events WHERE aggregate_id = :id"), {"id": existing.id}
                )
            )
            .scalars()
            .all()
        )
    assert any(s.endswith("AccountUpdated") for s in subjects)  # an update by import is audited
    listed = await customers.ListAccounts(pb.ListAccountsRequest(q="字节跳动"), metadata=company.md)
    assert [a.name for a in listed.items] == ["字节跳动有限公司"]
    assert listed.items[0].tier == "vip"  # the tenant's tier rules apply to imported accounts
    assert listed.items[0].lifecycle_stage == pb.LIFECYCLE_STAGE_PROSPECT


async def test_a_row_the_database_refuses_leaves_nothing_behind(identity, customers, data, customers_service):
    company = await sign_up(identity)
    # A constraint the row checks do not know about: the batch fails, then each row is retried on its own.
    async with customers_service.runtime.db.unit_of_work() as uow:
        await uow.session.execute(
            text(
                "ALTER TABLE contacts ADD CONSTRAINT test_no_forbidden_name "
                "CHECK (name <> '禁止的名字') NOT VALID"
            )
        )
    try:
        content = csv_bytes(
            [
                ["name", "phone", "email"],
                ["张三", "13800138001", "z3@example.com"],
                ["禁止的名字", "13800138002", ""],
                ["李四", "13800138003", ""],
            ]
        )
        job = await upload(data, company, content, name="people.csv")
        await data.StartImport(dq.StartImportRequest(id=job.id), metadata=company.md)
        done = await run_to_end(data, company, job.id)
    finally:
        async with customers_service.runtime.db.unit_of_work() as uow:
            await uow.session.execute(text("ALTER TABLE contacts DROP CONSTRAINT test_no_forbidden_name"))
    assert (done.rows_created, done.rows_failed) == (2, 1)
    [(row, column, _value, reason)] = await errors_of(data, company, job.id)
    assert column == ""
    assert row == 3 and "test_no_forbidden_name" in reason
    assert set(await contacts_named(customers, company)) == {"张三", "李四"}
    async with customers_service.runtime.db.read() as session:
        left = await session.scalar(
            text(
                "SELECT count(*) FROM contacts WHERE tenant_id = :t AND phones_normalized @> ARRAY['+8613800138002']"
            ),
            {"t": company.tenant.id},
        )
    assert left == 0


async def test_a_crashed_import_resumes_after_its_checkpoint(identity, customers, data, customers_service):
    from crm_customers.domain.imports import worker
    from crm_customers.domain.imports.importers import IMPORTERS
    from crm_kit.imports import pipeline
    from crm_kit.imports.importer import BATCH_ROWS

    company = await sign_up(identity)
    rows = [["姓名", "手机"]] + [[f"客户{i}", f"1380000{i:04d}"] for i in range(2500)]
    job = await upload(data, company, csv_bytes(rows), chunk=64 * 1024)
    runtime = customers_service.runtime
    # Claim it as a worker would, commit the first batch, then "crash" (the worker never comes back). The lease
    # runs a few seconds: long enough for this first batch, which the service's own worker would otherwise take
    # over before it is committed (and fence it off, as it should).
    async with runtime.db.unit_of_work() as uow:
        await uow.session.execute(
            text(
                "UPDATE import_jobs SET status = 'running', attempts = 1, lease_until = now() + interval '8 seconds', "
                "mapping = CAST(:m AS jsonb) WHERE id = :id"
            ),
            {
                "id": job.id,
                "m": '[{"column": "姓名", "field": "name"}, {"column": "手机", "field": "phones"}]',
            },
        )
    from crm_kit.imports.models import ImportJob

    async with runtime.db.read() as session:
        claimed = await session.get(ImportJob, job.id)
    batcher = await IMPORTERS["contacts"].batcher(runtime.db, claimed)
    first = batcher.convert([(n + 2, r) for n, r in enumerate(rows[1 : 1 + BATCH_ROWS])])
    from crm_kit import context

    token = context.bind(context.RequestContext(principal=pipeline.principal_of(claimed)))
    try:
        await pipeline.commit_batch(runtime.db, batcher, claimed, 1, first, 0, len(first))
    finally:
        context.reset(token)
    mid = (await data.GetImport(dq.GetImportRequest(id=job.id), metadata=company.md)).import_job
    assert mid.rows_done == BATCH_ROWS and mid.status == dq.JOB_STATUS_RUNNING

    # Its lease has run out: the service's worker takes it over and finishes from the checkpoint.
    done = await run_to_end(data, company, job.id)
    assert done.status == dq.JOB_STATUS_SUCCEEDED and done.rows_created == 2500 and done.rows_done == 2500
    async with runtime.db.read() as session:
        n = await session.scalar(
            text("SELECT count(*) FROM contacts WHERE tenant_id = :t"), {"t": company.tenant.id}
        )
        attempts = await session.scalar(
            text("SELECT attempts FROM import_jobs WHERE id = :id"), {"id": job.id}
        )
    assert n == 2500 and attempts == 2
    assert worker.MAX_ATTEMPTS == 3


async def test_uploads_are_checked_and_imports_belong_to_their_tenant(identity, data):
    mine, theirs = await sign_up(identity), await sign_up(identity, "腾讯")

    async def anonymous():
        yield dq.UploadImportFileRequest(header=dq.UploadImportFileRequest.Header(target=ACCOUNTS))

    # Streaming calls are authenticated like any other (client and server streams).
    assert (await rpc_error(data.UploadImportFile(anonymous()))).code() == grpc.StatusCode.UNAUTHENTICATED
    download = data.DownloadImportErrors(dq.DownloadImportErrorsRequest(id="x"))
    assert (await rpc_error(download.read())).code() == grpc.StatusCode.UNAUTHENTICATED
    empty = await rpc_error(upload(data, mine, b""))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    job = await upload(data, mine, csv_bytes([["名称", "电话"], ["a", "b"]]), target=ACCOUNTS)
    assert (await rpc_error(data.GetImport(dq.GetImportRequest(id=job.id), metadata=theirs.md))).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    bad = await rpc_error(
        data.StartImport(
            dq.StartImportRequest(
                id=job.id, mapping=[imports_pb2.ColumnMapping(column="电话", field="phones")]
            ),
            metadata=mine.md,
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in bad.details()


async def test_gb18030_csv_from_chinese_excel_is_read(identity, data):
    company = await sign_up(identity)
    job = await upload(
        data,
        company,
        csv_bytes([["客户名称", "联系电话"], ["华为技术有限公司", "13800138000"]], "gb18030"),
        target=ACCOUNTS,
    )
    assert list(job.columns) == ["客户名称", "联系电话"]
    dry = await data.DryRunImport(dq.DryRunImportRequest(id=job.id), metadata=company.md)
    assert dry.import_job.rows_created == 1 and dry.preview[0]["name"] == "华为技术有限公司"


async def test_relationships_are_imported_between_records_named_by_code_email_or_phone(
    identity, customers, data
):
    company = await sign_up(identity)
    huawei = await new_account(customers, company, "华为技术有限公司", credit_code=credit_code(41))
    partner = await new_account(customers, company, "中软国际有限公司", credit_code=credit_code(42))
    boss = (
        await customers.CreateContact(
            pb.CreateContactRequest(contact=pb.Contact(name="任正非", emails=["ren@huawei.com"])),
            metadata=company.md,
        )
    ).contact
    staff = (
        await customers.CreateContact(
            pb.CreateContactRequest(contact=pb.Contact(name="王小明", phones=["13800138000"])),
            metadata=company.md,
        )
    ).contact
    content = csv_bytes(
        [
            ["源", "目标", "关系类型", "备注"],
            [credit_code(41), credit_code(42), "partner_of", "战略合作"],
            ["138-0013-8000", "REN@huawei.com", "reports_to", ""],
            ["nobody@example.com", credit_code(42), "partner_of", ""],
            [credit_code(41), credit_code(42), "no_such_type", ""],
        ]
    )
    job = await upload(data, company, content, target=dq.IMPORT_TARGET_RELATIONSHIPS, name="relations.csv")
    assert {m.column: m.field for m in job.mapping} == {
        "源": "source",
        "目标": "target",
        "关系类型": "type",
        "备注": "note",
    }
    await data.StartImport(dq.StartImportRequest(id=job.id), metadata=company.md)
    done = await run_to_end(data, company, job.id)
    assert done.status == dq.JOB_STATUS_SUCCEEDED, done.error
    assert (done.rows_total, done.rows_created, done.rows_failed) == (4, 2, 2)
    errors = await errors_of(data, company, job.id)
    assert [(e[0], e[1], e[2]) for e in errors] == [(4, "源", "nobody@example.com"), (5, "", "")]
    edges = await customers.ListRelationships(pb.ListRelationshipsRequest(), metadata=company.md)
    pairs = {(r.type, r.source.id, r.target.id) for r in edges.items}
    assert pairs == {("partner_of", huawei.id, partner.id), ("reports_to", staff.id, boss.id)}


async def test_an_import_updates_only_records_its_starter_may_see(identity, customers, data):
    from tests.customers.helpers import auth, invite_and_join, role

    company = await sign_up(identity)
    await without_default_rules(data, company.tenant.id, company.md)
    await data.CreateDuplicateRule(
        dq.CreateDuplicateRuleRequest(
            duplicate_rule=dq.DuplicateRule(
                name="code",
                record_type=pb.RECORD_TYPE_ACCOUNT,
                match=duplicates_pb2.DUPLICATE_MATCH_CREDIT_CODE,
                on_import=dq.IMPORT_DUPLICATE_ACTION_UPDATE,
            )
        ),
        metadata=company.md,
    )
    theirs = await new_account(customers, company, "华为技术有限公司", credit_code=credit_code(51))
    own = await role(
        identity,
        company,
        "销售",
        [
            {
                "object": "account",
                "actions": ["read", "create", "update", "import"],
                "data_scope": "DATA_SCOPE_OWN",
            }
        ],
    )
    _, token = await invite_and_join(identity, company, role_ids=[own])
    sales = type("Caller", (), {"md": auth(token.access_token)})()
    job = await upload(
        data, sales, csv_bytes([["名称", "信用代码", "行业"], ["华为", credit_code(51), "改掉"]]), ACCOUNTS
    )
    await data.StartImport(dq.StartImportRequest(id=job.id), metadata=sales.md)
    done = await run_to_end(data, sales, job.id)
    assert (done.rows_updated, done.rows_skipped) == (0, 1)
    [(_, _, _, reason)] = await errors_of(data, sales, job.id)
    assert reason == f"skipped: duplicate of record {theirs.id}, which you may not change"
    got = (await customers.GetAccount(pb.GetAccountRequest(id=theirs.id), metadata=company.md)).account
    assert got.industry == "" and got.name == "华为技术有限公司"


async def test_a_cancelled_import_cannot_be_started(identity, data):
    company = await sign_up(identity)
    job = await upload(data, company, csv_bytes([["名称"], ["华为"]]), ACCOUNTS)
    cancelled = (await data.CancelImport(dq.CancelImportRequest(id=job.id), metadata=company.md)).import_job
    assert cancelled.status == dq.JOB_STATUS_CANCELLED and cancelled.finished_at.seconds
    again = await rpc_error(data.StartImport(dq.StartImportRequest(id=job.id), metadata=company.md))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    twice = await rpc_error(data.CancelImport(dq.CancelImportRequest(id=job.id), metadata=company.md))
    assert twice.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = await data.ListImports(dq.ListImportsRequest(), metadata=company.md)
    assert [j.id for j in listed.items] == [job.id]


async def test_a_big_file_is_converted_in_a_child_process_with_the_same_result(
    identity, customers, data, customers_service, monkeypatch
):
    from crm_kit.imports import pipeline

    monkeypatch.setattr(pipeline, "CHILD_PROCESS_BYTES", 0)  # every file counts as big here
    company = await sign_up(identity)
    await without_default_rules(data, company.tenant.id, company.md)
    await data.CreateDuplicateRule(
        dq.CreateDuplicateRuleRequest(
            duplicate_rule=dq.DuplicateRule(
                name="phone", record_type=pb.RECORD_TYPE_CONTACT, match=duplicates_pb2.DUPLICATE_MATCH_PHONE
            )
        ),
        metadata=company.md,
    )
    rows = [["姓名", "手机"]] + [[f"客户{i}", f"1390000{i:04d}"] for i in range(4500)]
    rows[100] = ["坏号码", "12345"]
    rows[4000] = ["重复", "13900000007"]
    job = await upload(data, company, csv_bytes(rows), chunk=64 * 1024)
    await data.StartImport(dq.StartImportRequest(id=job.id), metadata=company.md)
    done = await run_to_end(data, company, job.id)
    assert done.status == dq.JOB_STATUS_SUCCEEDED, done.error
    assert (done.rows_total, done.rows_created, done.rows_skipped, done.rows_failed) == (4500, 4498 - 0, 1, 1)
    errors = await errors_of(data, company, job.id)
    assert [(e[0], e[1], e[2]) for e in errors] == [(101, "手机", "12345"), (4001, "", "+8613900000007")]
    async with customers_service.runtime.db.read() as session:
        stats = await session.scalar(text("SELECT stats FROM import_jobs WHERE id = :id"), {"id": job.id})
    assert stats["converter_peak_rss_kib"] > 0
