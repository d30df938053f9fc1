"""Importing relationships between existing records: each row names a source, a target (by id, credit code,
e-mail or phone) and a relationship type (its key). Rows are few compared with records, so each is written in
its own savepoint through the relationships domain's own checks (the kit retries a batch the database refuses
row by row, so one refused row never takes its batch with it).

Ends are looked up within the starter's "read" scope on accounts and contacts, as creating a relationship by
hand is: a record outside it "matches no record", so neither the dry run nor the report tells what exists
beyond what the caller may read."""

from __future__ import annotations

from typing import Any

from crm.customers.v1 import customers_pb2
from crm_kit.errors import DomainError
from crm_kit.ids import is_uuid
from crm_kit.imports.importer import Batcher, Row, new_row
from crm_kit.imports.models import ImportJob
from crm_kit.policy import Decision
from sqlalchemy import or_, select

from crm_customers import models, normalize
from crm_customers.domain.common import visible
from crm_customers.domain.imports.convert import Converter

KINDS = {"account": models.Account, "contact": models.Contact}


async def _resolve(session: Any, tenant: str, ref: str, reads: dict[str, Decision]) -> tuple[int, str] | None:
    """A record the caller may read (`reads`: their "read" decision per kind) by id, credit code, e-mail or
    phone: (RecordType, id)."""
    ref = ref.strip()
    if not ref:
        return None
    for model, kind in (
        (models.Account, customers_pb2.RECORD_TYPE_ACCOUNT),
        (models.Contact, customers_pb2.RECORD_TYPE_CONTACT),
    ):
        decision = reads["account" if model is models.Account else "contact"]
        live = [model.tenant_id == tenant, model.deleted_at.is_(None), visible(decision, model)]
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


class RelationshipBatcher(Batcher):
    batch_rows = 200

    def __init__(self, *, job: ImportJob, converter: Converter, reads: dict[str, Decision]):
        super().__init__(job)
        self.converter = converter
        self.reads = reads
        self.names = {m["field"]: m["column"] for m in job.mapping if m["field"]}

    def convert(self, rows: list[tuple[int, list[str]]]) -> list[Row]:
        return [new_row(number, self.converter.convert(cells)) for number, cells in rows]

    def child_spec(self) -> tuple[str, dict[str, Any]]:
        return "crm_customers.domain.imports.relationships:batch_converter", self.converter.spec()

    async def check(self, session: Any, batch: list[Row]) -> None:
        """Both ends must name exactly one record; the type is required (the domain checks it further)."""
        for r in batch:
            if r.action == "failed":
                continue
            v = r.converted.values
            refs = {}
            for f in ("source", "target"):
                found = await _resolve(session, self.job.tenant_id, v.get(f, ""), self.reads)
                if found is None:
                    r.errors.append(
                        (
                            self.names[f],
                            v.get(f, ""),
                            "matches no record (or more than one) by id, credit code, e-mail or phone",
                        )
                    )
                refs[f] = found
            if not v.get("type"):
                r.errors.append((self.names["type"], "", "is required"))
            if r.errors:
                r.action = "failed"
            else:
                r.record = refs

    async def write(self, session: Any, batch: list[Row], uow: Any) -> None:
        from crm_customers.domain import relationships as domain

        for r in batch:
            if r.action != "create":
                continue
            v, refs = r.converted.values, r.record
            request = customers_pb2.CreateRelationshipRequest(
                type=v["type"],
                source=customers_pb2.RecordRef(type=refs["source"][0], id=refs["source"][1]),
                target=customers_pb2.RecordRef(type=refs["target"][0], id=refs["target"][1]),
                note=v.get("note", ""),
            )
            try:
                async with uow.savepoint():
                    await domain.create(uow, request, self.reads)
            except DomainError as exc:
                r.action = "failed"
                r.errors.append(("", "", exc.message))


def batch_converter(params: dict[str, Any]) -> Any:
    """The converter of a child process (`crm_kit.imports.converter_process`), from `Converter.spec()`."""
    converter = Converter.from_spec(params)
    return lambda rows: [new_row(number, converter.convert(cells)) for number, cells in rows]
