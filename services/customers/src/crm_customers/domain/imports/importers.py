"""What customers imports (accounts, contacts, relationships) as the kit's importers: the vocabulary of each,
the permission object, the tenant's custom fields, the fields a mapping writes, and the batcher of a run."""

from __future__ import annotations

from typing import Any

from crm.customers.v1 import data_quality_pb2 as pb
from crm_kit.context import caller
from crm_kit.db import Database
from crm_kit.errors import InvalidArgument
from crm_kit.imports.importer import Batcher, Importer
from crm_kit.imports.models import ImportJob
from crm_kit.policy import Decision, PolicyCache

from crm_customers.domain import custom_fields as cf
from crm_customers.domain.common import check_writable
from crm_customers.domain.imports.mapping import VOCABULARIES

TARGETS = {
    pb.IMPORT_TARGET_ACCOUNTS: "accounts",
    pb.IMPORT_TARGET_CONTACTS: "contacts",
    pb.IMPORT_TARGET_RELATIONSHIPS: "relationships",
}
TARGET_PB = {v: k for k, v in TARGETS.items()}
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


def target_name(number: int) -> str:
    target = TARGETS.get(number)
    if target is None:
        raise InvalidArgument.for_field("target", "must be accounts, contacts or relationships")
    return target


class CustomersImporter(Importer):
    def __init__(
        self, target: str, object_type: str, record_type: str = "", policies: PolicyCache | None = None
    ):
        self.policies = policies
        self.target = target
        self.object = object_type
        self.record_type = record_type
        self.vocabulary = VOCABULARIES[target]

    async def definitions(self, session: Any, tenant_id: str) -> dict[str, Any]:
        return await cf.definitions(session, tenant_id, self.record_type) if self.record_type else {}

    async def custom_fields(self, session: Any, tenant_id: str) -> list[tuple[str, str, str]]:
        defs = await self.definitions(session, tenant_id)
        return [(k, d.label_zh, d.label_en) for k, d in defs.items()]

    def check_writable(self, decision: Decision, fields: list[str]) -> None:
        check_writable(decision, [self.rule_field(f) for f in fields])

    def rule_field(self, field: str) -> str:
        return IMPORT_ONLY_FIELDS.get(field, field)

    async def batcher(self, db: Database, job: ImportJob) -> Batcher:
        from crm_customers.domain.dedup.rules import active_rules
        from crm_customers.domain.imports.convert import Converter

        async with db.read() as session:
            defs = await self.definitions(session, job.tenant_id)
            rules = await active_rules(session, job.tenant_id, self.record_type) if self.record_type else []
        # A rule that lets a duplicate row in anyway (on_import "create", as a new company's default rules do)
        # changes nothing an import does: it is not matched at all, so it costs an import nothing.
        rules = [r for r in rules if r.on_import != "create"]
        converter = Converter(
            target=job.target,
            columns=list(job.columns),
            mapping=[(m["column"], m["field"]) for m in job.mapping],
            defs=defs,
            tenant_id=job.tenant_id,
            owner_id=job.owner_id,
            department_id=job.department_id,
            created_by=job.created_by,
        )
        if not self.record_type:
            from crm_customers.domain.imports.relationships import KINDS, RelationshipBatcher

            if self.policies is None:
                raise RuntimeError("a relationship import needs the policies (importers(policies))")
            principal = caller()  # the dry run's caller, or the job's starter in the worker
            reads = {k: await self.policies.decide(principal, k, "read") for k in KINDS}
            return RelationshipBatcher(job=job, converter=converter, reads=reads)
        from crm_customers.domain.imports.pipeline import RecordBatcher

        return RecordBatcher(job=job, converter=converter, rules=rules)

    def finished_event(self, job: ImportJob) -> Any:
        return pb.ImportFinished(import_job=job_pb(job))

    def message_fields(self, job: ImportJob) -> dict[str, Any]:
        return {"target": TARGET_PB[job.target]}


def importers(policies: PolicyCache | None = None) -> dict[str, Importer]:
    """What customers imports; relationships look their ends up within the caller's read scope (`policies`)."""
    return {
        "accounts": CustomersImporter("accounts", "account", "account"),
        "contacts": CustomersImporter("contacts", "contact", "contact"),
        # Relationships are between contacts and accounts; importing them is a contact-level right.
        "relationships": CustomersImporter("relationships", "contact", policies=policies),
    }


IMPORTERS = importers()


def job_pb(job: ImportJob) -> pb.CustomerImportJob:
    from crm_kit.imports.jobs import fill_job

    return fill_job(pb.CustomerImportJob(), job, target=TARGET_PB[job.target])  # type: ignore[return-value]
