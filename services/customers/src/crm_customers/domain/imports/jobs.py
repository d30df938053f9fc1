"""Import jobs: upload (the file into PostgreSQL, the header read, a mapping suggested), start, cancel, progress
and the error report. The work itself is `pipeline`; the background `worker` runs it."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

from crm.customers.v1 import data_quality_pb2 as pb
from crm_kit.db import Database, UnitOfWork
from crm_kit.errors import Conflict, InvalidArgument
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.policy import Decision
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_customers.domain import custom_fields as cf
from crm_customers.domain.common import check_writable
from crm_customers.domain.dedup.common import JOB_STATUS_PB, caller, get_owned, ts, utcnow
from crm_customers.domain.imports import mapping as mappings
from crm_customers.domain.imports import source
from crm_customers.domain.imports.models import ImportErrorRow, ImportFileChunk, ImportJob

TARGETS = {
    pb.IMPORT_TARGET_ACCOUNTS: "accounts",
    pb.IMPORT_TARGET_CONTACTS: "contacts",
    pb.IMPORT_TARGET_RELATIONSHIPS: "relationships",
}
TARGET_PB = {v: k for k, v in TARGETS.items()}
# The permission object an import of each target needs ("import" action).
OBJECT_OF = {"accounts": "account", "contacts": "contact", "relationships": "contact"}
RECORD_TYPE_OF = {"accounts": "account", "contacts": "contact"}
MAX_FILE_BYTES = 2 << 30
FORMATS = {"csv": pb.FILE_FORMAT_CSV, "xlsx": pb.FILE_FORMAT_XLSX}
# Import columns that are no field of the record (they fill account_ids / im_handles): writable by anyone
# who may write those.
IMPORT_ONLY_FIELDS = {
    "account": "account_ids",
    "account_id": "account_ids",
    "wechat": "im_handles",
    "consent_email": "consent",
    "consent_sms": "consent",
    "consent_phone": "consent",
    "consent_wechat": "consent",
}
REPORT_HEADER = {"en": ("row", "column", "value", "reason"), "zh-CN": ("行", "列", "值", "原因")}


def target_name(number: int) -> str:
    target = TARGETS.get(number)
    if target is None:
        raise InvalidArgument.for_field("target", "must be accounts, contacts or relationships")
    return target


def job_pb(j: ImportJob) -> pb.ImportJob:
    total = j.rows_total or 0
    percent = 100 if j.status == "succeeded" else (min(99, int(j.rows_done * 100 / total)) if total else 0)
    return pb.ImportJob(
        id=j.id,
        target=TARGET_PB[j.target],
        status=JOB_STATUS_PB[j.status],
        file_name=j.file_name,
        format=FORMATS.get(j.format, 0),
        size_bytes=j.size_bytes,
        columns=list(j.columns or []),
        mapping=[pb.ColumnMapping(column=m["column"], field=m["field"]) for m in j.mapping or []],
        rows_total=total,
        rows_done=j.rows_done,
        rows_created=j.rows_created,
        rows_updated=j.rows_updated,
        rows_skipped=j.rows_skipped,
        rows_failed=j.rows_failed,
        percent=percent,
        error=j.error,
        owner_id=j.owner_id,
        created_by=j.created_by,
        created_at=ts(j.created_at),
        started_at=ts(j.started_at),
        finished_at=ts(j.finished_at),
    )


def error_pb(e: ImportErrorRow) -> pb.ImportError:
    return pb.ImportError(row=e.row, column=e.column, value=e.value, reason=e.reason)


async def custom_definitions(session: AsyncSession, tenant_id: str, target: str) -> dict[str, Any]:
    record_type = RECORD_TYPE_OF.get(target)
    return await cf.definitions(session, tenant_id, record_type) if record_type else {}


async def upload(db: Database, *, target: str, file: Any, chunks: AsyncIterator[bytes]) -> ImportJob:
    """Store the file (1 MiB chunks, one transaction), read its header, suggest the mapping."""
    principal = caller()
    job_id = new_id()
    size, seq, head = 0, 0, b""
    buffer = bytearray()
    async with db.unit_of_work() as uow:
        session = uow.session

        async def flush_chunk(data: bytes) -> None:
            nonlocal seq
            await session.execute(
                insert(ImportFileChunk).values(
                    job_id=job_id, seq=seq, tenant_id=principal.tenant_id, data=data
                )
            )
            seq += 1

        async for chunk in chunks:
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise InvalidArgument.for_field("file", f"is larger than {MAX_FILE_BYTES >> 20} MiB")
            if len(head) < 64 * 1024:
                head += chunk[: 64 * 1024 - len(head)]
            buffer.extend(chunk)
            while len(buffer) >= source.CHUNK_BYTES:
                await flush_chunk(bytes(buffer[: source.CHUNK_BYTES]))
                del buffer[: source.CHUNK_BYTES]
        if buffer:
            await flush_chunk(bytes(buffer))
        if size == 0:
            raise InvalidArgument.for_field("file", "is empty")
        file_name = (file.file_name or "upload").strip()[:300] or "upload"
        file_format = source.detect_format(file_name, file.content_type or "", head)
        encoding = source.detect_encoding(head) if file_format == "csv" else ""
        job = ImportJob(
            id=job_id,
            tenant_id=principal.tenant_id,
            target=target,
            status="uploaded",
            file_name=file_name,
            format=file_format,
            size_bytes=size,
            columns=[],
            mapping=[],
            rows_total=0,
            rows_done=0,
            rows_created=0,
            rows_updated=0,
            rows_skipped=0,
            rows_failed=0,
            error="",
            owner_id=principal.actor_id,
            department_id=principal.department_id,
            created_by=principal.actor_id,
            role_ids=list(principal.role_ids),
            created_at=utcnow(),
            attempts=0,
            cancel_requested=False,
            stats={"encoding": encoding},
        )
        session.add(job)
        await session.flush()
    # The header, read from the stored file as the worker will read it.
    try:
        async with source.spooled(db, job_id, f".{file_format}") as path:
            columns = source.header_of(path, file_format, encoding)
    except source.BadFile as exc:
        async with db.unit_of_work() as uow:
            job = await uow.session.get(ImportJob, job_id)
            job.status, job.error, job.finished_at = "failed", str(exc), utcnow()
        raise InvalidArgument.for_field("file", str(exc)) from exc
    async with db.unit_of_work() as uow:
        job = await uow.session.get(ImportJob, job_id)
        defs = await custom_definitions(uow.session, principal.tenant_id, target)
        custom = [(k, d.label_zh, d.label_en) for k, d in defs.items()]
        job.columns = columns
        job.mapping = [{"column": c, "field": f} for c, f in mappings.suggest(target, columns, custom)]
    return job


async def get(session: AsyncSession, job_id: str) -> ImportJob:
    return await get_owned(session, ImportJob, "import", job_id)


async def list_jobs(session: AsyncSession, *, page_request: Any) -> tuple[list[ImportJob], str]:
    keys = [SortKey(ImportJob.id, descending=True)]
    page = Page.of(page_request, len(keys))
    stmt = select(ImportJob).where(ImportJob.tenant_id == caller().tenant_id)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda j: [j.id])


async def chosen_mapping(
    session: AsyncSession, job: ImportJob, given: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    defs = await custom_definitions(session, job.tenant_id, job.target)
    current = [(m["column"], m["field"]) for m in job.mapping or []]
    return mappings.check(job.target, list(job.columns), given or current, defs.keys())


def owner_of(job: ImportJob, owner_id: str) -> None:
    principal = caller()
    if owner_id and owner_id != principal.actor_id:
        from crm_kit.ids import is_uuid

        if not is_uuid(owner_id):
            raise InvalidArgument.for_field("owner_id", "is not a user id")
        job.owner_id, job.department_id = owner_id, ""
    else:
        job.owner_id, job.department_id = principal.actor_id, principal.department_id


async def start(
    uow: UnitOfWork, *, job_id: str, mapping: list[tuple[str, str]], owner_id: str, decision: Decision
) -> ImportJob:
    job = await get_owned(uow.session, ImportJob, "import", job_id, lock=True)
    if job.status != "uploaded":
        raise Conflict(
            f"the import is {job.status}; only an uploaded file can be started", reason="import_started"
        )
    chosen = await chosen_mapping(uow.session, job, mapping)
    check_writable(decision, [IMPORT_ONLY_FIELDS.get(f, f) for _, f in chosen if f])
    principal = caller()
    job.mapping = [{"column": c, "field": f} for c, f in chosen]
    owner_of(job, owner_id)
    job.status = "queued"
    job.created_by = principal.actor_id
    job.role_ids = list(principal.role_ids)
    job.rows_done = job.rows_created = job.rows_updated = job.rows_skipped = job.rows_failed = 0
    # The starter's data scope, for the worker: "update existing" only touches records they may see.
    job.stats = {
        **(job.stats or {}),
        "scope": int(decision.scope),
        "departments": sorted(decision.departments) if decision.departments is not None else None,
    }
    await uow.session.flush()
    return job


async def cancel(uow: UnitOfWork, *, job_id: str) -> ImportJob:
    job = await get_owned(uow.session, ImportJob, "import", job_id, lock=True)
    if job.status in ("uploaded", "queued"):
        job.status, job.finished_at = "cancelled", utcnow()
    elif job.status == "running":
        job.cancel_requested = True  # the worker stops after its current batch (committed batches stay)
    else:
        raise Conflict(f"the import is {job.status} already", reason="import_finished")
    await uow.session.flush()
    return job


async def list_errors(
    session: AsyncSession, *, job_id: str, page_request: Any
) -> tuple[list[ImportErrorRow], str]:
    keys = [SortKey(ImportErrorRow.row), SortKey(ImportErrorRow.id)]
    page = Page.of(page_request, len(keys))
    stmt = select(ImportErrorRow).where(ImportErrorRow.job_id == job_id)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda e: [e.row, e.id])


async def _error_rows(db: Database, job_id: str) -> AsyncIterator[tuple[int, str, str, str]]:
    after = (0, 0)
    while True:
        async with db.read() as session:
            rows = (
                await session.execute(
                    select(
                        ImportErrorRow.row,
                        ImportErrorRow.id,
                        ImportErrorRow.column,
                        ImportErrorRow.value,
                        ImportErrorRow.reason,
                    )
                    .where(
                        ImportErrorRow.job_id == job_id,
                        (ImportErrorRow.row > after[0])
                        | ((ImportErrorRow.row == after[0]) & (ImportErrorRow.id > after[1])),
                    )
                    .order_by(ImportErrorRow.row, ImportErrorRow.id)
                    .limit(5000)
                )
            ).all()
        if not rows:
            return
        for r in rows:
            yield r.row, r.column, r.value, r.reason
        after = (rows[-1].row, rows[-1].id)


async def error_report(db: Database, *, job: ImportJob, file_format: int) -> AsyncIterator[Any]:
    """The error report as a streamed file: row, column, value, reason (CSV with a BOM so Excel reads the
    Chinese, or XLSX)."""
    xlsx = file_format == pb.FILE_FORMAT_XLSX
    stem = job.file_name.rsplit(".", 1)[0]
    name = f"{stem}-errors.{'xlsx' if xlsx else 'csv'}"
    header = REPORT_HEADER["en"]
    if xlsx:
        from crm_customers.domain.exports.writers import XlsxWriter

        writer: Any = XlsxWriter()
    else:
        writer = None
    yield pb.DownloadImportErrorsResponse(
        header=pb.FileInfo(
            file_name=name,
            content_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            if xlsx
            else "text/csv; charset=utf-8",
        )
    )
    if xlsx:
        async for chunk in writer.stream(_as_lists(header, _error_rows(db, job.id))):
            yield pb.DownloadImportErrorsResponse(chunk=chunk)
        return
    buffer = io.StringIO()
    out = csv.writer(buffer)
    buffer.write("\ufeff")
    out.writerow(header)
    async for row in _error_rows(db, job.id):
        out.writerow(row)
        if buffer.tell() > 256 * 1024:
            yield pb.DownloadImportErrorsResponse(chunk=buffer.getvalue().encode())
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield pb.DownloadImportErrorsResponse(chunk=buffer.getvalue().encode())


async def _as_lists(header: Any, rows: AsyncIterator[Any]) -> AsyncIterator[list[Any]]:
    yield list(header)
    async for r in rows:
        yield list(r)
