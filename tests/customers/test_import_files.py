"""Uploaded import files are deleted (issue 10, item 10): when the job finishes, fails or is cancelled, whichever
way it ends, and when an upload is never started within the retention."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from crm.customers.v1 import data_quality_pb2 as dq
from crm.customers.v1 import data_quality_pb2_grpc
from crm_kit.imports import jobs, worker
from sqlalchemy import text

from tests.customers.helpers import sign_up
from tests.customers.test_import import ACCOUNTS, csv_bytes, run_to_end, upload


@pytest.fixture(scope="session")
async def data(customers_service):
    async with grpc.aio.insecure_channel(customers_service.address) as channel:
        yield data_quality_pb2_grpc.CustomersDataServiceStub(channel)


async def _chunks(db, job_id: str) -> int:
    async with db.read() as session:
        return await session.scalar(
            text("SELECT count(*) FROM import_file_chunks WHERE job_id = :id"), {"id": job_id}
        )


async def test_every_way_a_job_ends_deletes_its_file(identity, data, customers_service):
    db = customers_service.runtime.db
    company = await sign_up(identity)
    good = csv_bytes([["Company Name"], ["甲公司"], ["乙公司"]])
    ended: dict[str, str] = {}

    job = await upload(data, company, good, target=ACCOUNTS, name="a.csv", chunk=4096)
    assert await _chunks(db, job.id) == 1  # kept while the job may still run
    await data.StartImport(dq.StartImportRequest(id=job.id), metadata=company.md)
    ended[(await run_to_end(data, company, job.id)).status] = job.id

    job = await upload(data, company, good, target=ACCOUNTS, name="b.csv", chunk=4096)
    ended[
        (await data.CancelImport(dq.CancelImportRequest(id=job.id), metadata=company.md)).import_job.status
    ] = job.id

    # Refused at upload (no header row).
    with pytest.raises(grpc.aio.AioRpcError):
        await upload(data, company, b"\n\n\n", target=ACCOUNTS, name="c.csv")
    listed = (await data.ListImports(dq.ListImportsRequest(), metadata=company.md)).items
    ended["upload refused"] = next(j.id for j in listed if j.file_name == "c.csv")

    # Fails while running: bytes that are not text past the part the upload reads.
    broken = csv_bytes([["Company Name"]] + [[f"公司{i}"] for i in range(20000)]) + b"\xff\xfe\xfa\n"
    job = await upload(data, company, broken, target=ACCOUNTS, name="d.csv", chunk=1 << 20)
    await data.StartImport(dq.StartImportRequest(id=job.id), metadata=company.md)
    failed = await run_to_end(data, company, job.id)
    ended[failed.status] = job.id

    assert set(ended) == {
        dq.JOB_STATUS_SUCCEEDED,
        dq.JOB_STATUS_CANCELLED,
        "upload refused",
        dq.JOB_STATUS_FAILED,
    }
    for how, job_id in ended.items():
        assert await _chunks(db, job_id) == 0, how
    assert {dq.JobStatus.Name(s).removeprefix("JOB_STATUS_").lower() for s in ended if isinstance(s, int)} | {
        "failed"
    } == set(jobs.FINISHED)


async def test_uploads_never_started_are_deleted_after_the_retention(identity, data, customers_service):
    db = customers_service.runtime.db
    company = await sign_up(identity)
    old = await upload(data, company, csv_bytes([["Company Name"], ["甲"]]), target=ACCOUNTS, name="old.csv")
    fresh = await upload(
        data, company, csv_bytes([["Company Name"], ["乙"]]), target=ACCOUNTS, name="new.csv"
    )
    async with db.unit_of_work() as uow:
        await uow.session.execute(
            text("UPDATE import_jobs SET created_at = now() - CAST(:age AS interval) WHERE id = :id"),
            {"id": old.id, "age": worker.UPLOAD_RETENTION + dt.timedelta(minutes=1)},
        )
        # A finished job whose file was left behind (finished before files were deleted).
        await uow.session.execute(
            text("UPDATE import_jobs SET status = 'succeeded' WHERE id = :id"), {"id": fresh.id}
        )
    runner = customers_service.runtime  # the service's own worker does this hourly, in one replica
    from crm_customers.domain.imports.worker import Worker

    cancelled = await Worker(runner.db).purge_files()
    assert cancelled >= 1
    got = (await data.GetImport(dq.GetImportRequest(id=old.id), metadata=company.md)).import_job
    assert got.status == dq.JOB_STATUS_CANCELLED and "24 h" in got.error
    assert await _chunks(db, old.id) == 0 and await _chunks(db, fresh.id) == 0
    async with db.read() as session:
        audited = await session.scalar(
            text("SELECT count(*) FROM outbox_events WHERE aggregate_id = :id"), {"id": old.id}
        )
    assert audited == 1
