"""Importing relationships between existing records: each row names a source, a target (by id, credit code,
e-mail or phone) and a relationship type (its key). Rows are few compared with records, so each is written in
its own savepoint through the relationships domain's own checks."""

from __future__ import annotations

from typing import Any

from crm.customers.v1 import customers_pb2
from crm.identity.v1 import identity_pb2
from crm_kit.db import Database, utcnow
from crm_kit.errors import DomainError
from crm_kit.ids import is_uuid
from crm_kit.policy import Decision
from sqlalchemy import or_, select

from crm_customers import models, normalize
from crm_customers.domain.imports import pipeline, source
from crm_customers.domain.imports.models import ImportJob

BATCH = 200
# Ends are looked up tenant-wide: importing is a tenant-level data operation (the "import" permission).
EVERYWHERE = {k: Decision(k, "read", True, scope=identity_pb2.DATA_SCOPE_ALL) for k in ("account", "contact")}


async def _resolve(session: Any, tenant: str, ref: str) -> tuple[int, str] | None:
    """A record by id, credit code, e-mail or phone: (RecordType, id)."""
    ref = ref.strip()
    if not ref:
        return None
    for model, kind in (
        (models.Account, customers_pb2.RECORD_TYPE_ACCOUNT),
        (models.Contact, customers_pb2.RECORD_TYPE_CONTACT),
    ):
        live = [model.tenant_id == tenant, model.deleted_at.is_(None)]
        conditions = []
        if is_uuid(ref):
            conditions.append(model.id == ref)
        try:
            conditions.append(model.emails_normalized.contains([normalize.normalize_email(ref)]))
        except normalize.InvalidValue:
            pass
        try:
            conditions.append(model.phones_normalized.contains([normalize.normalize_phone(ref)]))
        except normalize.InvalidValue:
            pass
        if model is models.Account:
            try:
                conditions.append(model.credit_code == normalize.normalize_credit_code(ref))
            except normalize.InvalidValue:
                pass
        if not conditions:
            continue
        found = (
            (await session.execute(select(model.id).where(*live, or_(*conditions)).limit(2))).scalars().all()
        )
        if len(found) == 1:
            return kind, found[0]
    return None


async def run(db: Database, job: ImportJob, *, claim: int) -> None:
    from crm_customers.domain import relationships as domain

    columns = {m["field"]: i for i, m in enumerate(job.mapping) if m["field"]}
    names = {m["field"]: m["column"] for m in job.mapping if m["field"]}
    done = job.rows_done
    index = 0
    total = 0
    async with source.spooled(db, job.id, f".{job.format}") as path:
        rows = source.data_rows(path, job.format, job.stats.get("encoding") or "utf-8")
        batch: list[tuple[int, list[str]]] = []

        async def flush(batch: list[tuple[int, list[str]]]) -> None:
            nonlocal done
            outcome = pipeline.Outcome()
            async with db.unit_of_work() as uow:
                for number, cells in batch:

                    def cell(f: str, cells: list[str] = cells) -> str:
                        i = columns.get(f)
                        return cells[i].strip() if i is not None and i < len(cells) else ""

                    errors = []
                    refs = {}
                    for f in ("source", "target"):
                        found = await _resolve(uow.session, job.tenant_id, cell(f))
                        if found is None:
                            errors.append(
                                (
                                    names[f],
                                    cell(f),
                                    "matches no record (or more than one) by id, credit code, e-mail or phone",
                                )
                            )
                        refs[f] = found
                    if not cell("type"):
                        errors.append((names["type"], "", "is required"))
                    if errors:
                        outcome.failed += 1
                        outcome.errors.extend((number, c, v, r) for c, v, r in errors)
                        continue
                    request = customers_pb2.CreateRelationshipRequest(
                        type=cell("type"),
                        source=customers_pb2.RecordRef(type=refs["source"][0], id=refs["source"][1]),
                        target=customers_pb2.RecordRef(type=refs["target"][0], id=refs["target"][1]),
                        note=cell("note"),
                    )
                    try:
                        async with uow.session.begin_nested():
                            await domain.create(uow, request, EVERYWHERE)
                        outcome.created += 1
                    except DomainError as exc:
                        outcome.failed += 1
                        outcome.errors.append((number, "", "", exc.message))
                await pipeline._checkpoint(uow.session, job, claim, done, done + len(batch), outcome)
            done += len(batch)

        for item in rows:
            index += 1
            if index <= job.rows_done:
                continue
            batch.append(item)
            if len(batch) >= BATCH:
                await flush(batch)
                batch = []
        if batch:
            await flush(batch)
        total = index
    async with db.unit_of_work() as uow:
        current = await uow.session.get(ImportJob, job.id, with_for_update=True)
        if current is None or current.attempts != claim:
            raise pipeline.LeaseLost(job.id)
        current.status, current.rows_total, current.finished_at, current.lease_until = (
            "succeeded",
            total,
            utcnow(),
            None,
        )
