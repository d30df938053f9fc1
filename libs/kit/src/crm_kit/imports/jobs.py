"""Import jobs: upload (the file into PostgreSQL, the header read, a mapping suggested), start, cancel and
progress. The work itself is `pipeline`; the background `worker` runs it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.message import Message
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_kit.context import caller
from crm_kit.db import Database, UnitOfWork, utcnow
from crm_kit.errors import Conflict, DomainError, InvalidArgument, not_found
from crm_kit.ids import is_uuid, new_id
from crm_kit.imports import source
from crm_kit.imports.importer import Importer
from crm_kit.imports.models import ImportFileChunk, ImportJob
from crm_kit.paging import Page, SortKey
from crm_kit.policy import Decision

MAX_FILE_BYTES = source.MAX_FILE_BYTES
FINISHED = ("succeeded", "failed", "cancelled")


async def drop_file(session: AsyncSession, job_id: str) -> None:
    """Delete a job's stored file, in the transaction that finishes the job (its counts and error report stay):
    every way a job ends calls this, and `worker.purge_files` catches any file left behind."""
    await session.execute(delete(ImportFileChunk).where(ImportFileChunk.job_id == job_id))


def emit_finished(uow: UnitOfWork, importer: Importer | None, job: ImportJob) -> None:
    """Record that `job` ended, as its importer's finished event (its audit entry) when it has one."""
    event = importer.finished_event(job) if importer is not None else None
    if event is None:
        return
    uow.emit(
        event,
        aggregate_type="import",
        aggregate_id=job.id,
        action="finished",
        after={
            "target": job.target,
            "file_name": job.file_name,
            "status": job.status,
            "rows_created": job.rows_created,
            "rows_updated": job.rows_updated,
            "rows_skipped": job.rows_skipped,
            "rows_failed": job.rows_failed,
        },
    )


async def upload(
    db: Database, importer: Importer, *, file_name: str, content_type: str, chunks: AsyncIterator[bytes]
) -> ImportJob:
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
        file_name = (file_name or "upload").strip()[:300] or "upload"
        file_format = source.detect_format(file_name, content_type or "", head)
        encoding = source.detect_encoding(head) if file_format == "csv" else ""
        job = ImportJob(
            id=job_id,
            tenant_id=principal.tenant_id,
            target=importer.target,
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
            options={},
        )
        session.add(job)
        await session.flush()
    # The header, read from the stored file as the worker will read it.
    try:
        async with source.spooled(db, job_id, f".{file_format}", size=size) as path:
            columns = await asyncio.to_thread(source.header_of, path, file_format, encoding)
    except (source.BadFile, DomainError) as exc:  # unreadable, or no room to read it now (see crm_kit.spool)
        async with db.unit_of_work() as uow:
            job = await uow.session.get(ImportJob, job_id)
            job.status, job.error, job.finished_at = "failed", str(exc), utcnow()
            await drop_file(uow.session, job_id)
        if isinstance(exc, DomainError):
            raise
        raise InvalidArgument.for_field("file", str(exc)) from exc
    async with db.unit_of_work() as uow:
        job = await uow.session.get(ImportJob, job_id)
        custom = await importer.custom_fields(uow.session, principal.tenant_id)
        job.columns = columns
        job.mapping = [{"column": c, "field": f} for c, f in importer.vocabulary.suggest(columns, custom)]
    return job


async def get(session: AsyncSession, job_id: str, *, lock: bool = False) -> ImportJob:
    """A job of the caller's tenant; another tenant's id, a malformed id and a missing one are one 404."""
    if not is_uuid(job_id):
        raise not_found("import", job_id)
    stmt = select(ImportJob).where(ImportJob.id == job_id, ImportJob.tenant_id == caller().tenant_id)
    if lock:
        stmt = stmt.with_for_update()
    job = (await session.execute(stmt)).scalar_one_or_none()
    if job is None:
        raise not_found("import", job_id)
    return job


async def list_jobs(session: AsyncSession, *, page_request: Any) -> tuple[list[ImportJob], str]:
    keys = [SortKey(ImportJob.id, descending=True)]
    page = Page.of(page_request, len(keys))
    stmt = select(ImportJob).where(ImportJob.tenant_id == caller().tenant_id)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda j: [j.id])


async def chosen_mapping(
    session: AsyncSession, importer: Importer, job: ImportJob, given: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The mapping given (else the job's current one: suggested, or the dry run's), checked."""
    custom = await importer.custom_fields(session, job.tenant_id)
    current = [(m["column"], m["field"]) for m in job.mapping or []]
    return importer.vocabulary.check(list(job.columns), given or current, [k for k, _, _ in custom])


def owner_of(job: ImportJob, owner_id: str) -> None:
    """The imported records' owner: the one named, else the starter."""
    principal = caller()
    if owner_id and owner_id != principal.actor_id:
        if not is_uuid(owner_id):
            raise InvalidArgument.for_field("owner_id", "is not a user id")
        job.owner_id, job.department_id = owner_id, ""
    else:
        job.owner_id, job.department_id = principal.actor_id, principal.department_id


def expect_uploaded(job: ImportJob, what: str) -> None:
    if job.status != "uploaded":
        raise Conflict(f"the import is {job.status}; {what}", reason="import_started")


async def choose(
    db: Database, importer: Importer, *, request: Any, decision: Decision, what: str
) -> tuple[ImportJob, dict[str, str], dict[str, Any]]:
    """What a dry run and a start share. `request` is a dry run's or a start's: the job's `id`, the chosen
    `mapping` (empty: the job's current one) and `owner_id`, and the importer's own options. Returns the job
    (still uploaded; its mapping and owner as chosen, unsaved), once the mapping is checked and allowed for
    the caller, with the importer's options."""
    async with db.read() as session:
        job = await get(session, request.id)
        expect_uploaded(job, what)
        given = [(m.column, m.field) for m in request.mapping]
        chosen = await chosen_mapping(session, importer, job, given)
    importer.check_writable(decision, [f for _, f in chosen if f])
    job.mapping = [{"column": c, "field": f} for c, f in chosen]
    owner_of(job, request.owner_id)
    options, prepared = await importer.prepare(db, job, request, decision)
    return job, options, prepared


def apply_choice(
    job: ImportJob, chosen: ImportJob, options: dict[str, str], prepared: dict[str, Any]
) -> None:
    job.mapping = chosen.mapping
    job.owner_id, job.department_id = chosen.owner_id, chosen.department_id
    job.options = options
    job.stats = {**(job.stats or {}), "prepared": prepared}


async def start(db: Database, importer: Importer, *, request: Any, decision: Decision) -> ImportJob:
    """Queue the job with the choices of `request` (see `choose`) for the worker."""
    what = "only an uploaded file can be started"
    chosen, options, prepared = await choose(db, importer, request=request, decision=decision, what=what)
    principal = caller()
    async with db.unit_of_work() as uow:
        job = await get(uow.session, request.id, lock=True)
        expect_uploaded(job, what)
        apply_choice(job, chosen, options, prepared)
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


def may_change(job: ImportJob, owner_id: str | None, department_id: str | None, members: Any = ()) -> bool:
    """Whether the import's starter may change an existing record, by the data scope kept on the job when it
    started: everything, their own (or one they are a member of), or their departments'."""
    stats = job.stats or {}
    scope = stats.get("scope", 4)
    actor = job.created_by
    if scope == 4 or owner_id == actor or actor in (members or ()):
        return True
    departments = stats.get("departments")
    return scope != 1 and bool(departments) and department_id in departments


async def cancel(db: Database, *, job_id: str) -> ImportJob:
    async with db.unit_of_work() as uow:
        job = await get(uow.session, job_id, lock=True)
        if job.status in ("uploaded", "queued"):
            job.status, job.finished_at = "cancelled", utcnow()
            await drop_file(uow.session, job.id)
        elif job.status == "running":
            job.cancel_requested = True  # the worker stops after its current batch (committed batches stay)
        else:
            raise Conflict(f"the import is {job.status} already", reason="import_finished")
        await uow.session.flush()
    return job


def percent(job: ImportJob) -> int:
    total = job.rows_total or 0
    if job.status == "succeeded":
        return 100
    return min(99, int(job.rows_done * 100 / total)) if total else 0


def fill_job(message: Message, job: ImportJob, **extra: Any) -> Message:
    """Fill a service's job message (crm.common.v1.ImportJob, or a service's own with the same field names) in
    place; fields the message does not have are left out."""
    fields = message.DESCRIPTOR.fields_by_name
    values: dict[str, Any] = {
        "id": job.id,
        "status": f"JOB_STATUS_{job.status.upper()}",
        "file_name": job.file_name,
        "format": f"FILE_FORMAT_{job.format.upper()}" if job.format else None,
        "size_bytes": job.size_bytes,
        "rows_total": job.rows_total or 0,
        "rows_done": job.rows_done,
        "rows_created": job.rows_created,
        "rows_updated": job.rows_updated,
        "rows_skipped": job.rows_skipped,
        "rows_failed": job.rows_failed,
        "percent": percent(job),
        "error": job.error,
        "owner_id": job.owner_id,
        "created_by": job.created_by,
        **extra,
    }
    for name, value in values.items():
        f = fields.get(name)
        if f is None or value is None:
            continue
        if isinstance(value, str) and f.enum_type is not None:
            number = f.enum_type.values_by_name.get(value)
            if number is not None:
                setattr(message, name, number.number)
        else:
            setattr(message, name, value)
    if "columns" in fields:
        message.columns.extend(job.columns or [])  # type: ignore[attr-defined]
    if "mapping" in fields:
        for m in job.mapping or []:
            message.mapping.add(column=m["column"], field=m["field"])  # type: ignore[attr-defined]
    if "options" in fields:
        message.options.update({k: str(v) for k, v in (job.options or {}).items()})  # type: ignore[attr-defined]
    for name in ("created_at", "started_at", "finished_at"):
        value = getattr(job, name)
        if name in fields and value is not None:
            getattr(message, name).FromDatetime(value)
    return message
