"""The import itself: file rows → converted records → duplicate rules → COPY into the table, in batches.

    spool file from PostgreSQL to a temp file ──► parse + convert a batch (Python) ──► queue (2 batches)
                                                                                      │
        one transaction per batch: resolve accounts, match duplicates (set-based), ◄──┘
        COPY the new rows, update the duplicates, COPY the errors, move the checkpoint

- Flat memory: the file streams from disk; at most three batches are in memory.
- Parsing overlaps the database: the converter fills the next batch while a batch's statements run.
- A failed row never leaves half a record: a batch is one transaction; if it fails as a whole (a row the
  checks let through is refused by a constraint), it is rolled back and retried row by row, each in a
  savepoint, and the refused rows go to the error report with the database's reason.
- Checkpoint: `rows_done` moves in the same transaction as the batch's rows. A worker that dies loses at most
  the batch in flight; the job's lease runs out and another worker resumes after the last committed row. The
  worker's claim number (`attempts`) fences a worker that lost its lease: its next commit matches no row.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import pickle
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from crm.customers.v1 import data_quality_pb2 as pb
from crm_kit import context
from crm_kit.context import Principal
from crm_kit.db import Database, utcnow
from crm_kit.errors import AlreadyExists, InvalidArgument
from crm_kit.ids import new_id
from crm_kit.policy import Decision
from google.protobuf import struct_pb2
from sqlalchemy import Text, bindparam, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import undefer

from crm_customers import models, normalize
from crm_customers.domain.common import check_writable
from crm_customers.domain.dedup.matching import IMPORT_STRICTNESS
from crm_customers.domain.dedup.merge import _refresh_derived
from crm_customers.domain.dedup.rules import active_rules
from crm_customers.domain.imports import jobs, source
from crm_customers.domain.imports.convert import Converted, Converter
from crm_customers.domain.imports.models import ImportJob

log = logging.getLogger("crm.customers.imports")

BATCH_ROWS = 2000
DRY_RUN_ROWS = 10_000
DRY_RUN_ERRORS = 100
PREVIEW_ROWS = 5

CONTACT_COLUMNS = (
    "id",
    "tenant_id",
    "name",
    "name_latin",
    "name_key",
    "titles",
    "phones",
    "phones_normalized",
    "emails",
    "emails_normalized",
    "im_handles",
    "birthday",
    "buying_role",
    "consent_email",
    "consent_sms",
    "consent_phone",
    "consent_wechat",
    "account_ids",
    "primary_account_id",
    "owner_id",
    "department_id",
    "tags",
    "notes",
    "custom_fields",
    "created_by",
    "version",
    "search_name",
    "search_grams",
    "search_extra",
)
ACCOUNT_COLUMNS = (
    "id",
    "tenant_id",
    "name",
    "alt_name",
    "name_key",
    "credit_code",
    "legal_representative",
    "registered_capital",
    "registered_capital_currency",
    "industry",
    "size",
    "region",
    "province",
    "city",
    "district",
    "address",
    "website",
    "phones",
    "phones_normalized",
    "emails",
    "emails_normalized",
    "source",
    "tier",
    "tier_manual",
    "lifecycle_stage",
    "owner_id",
    "department_id",
    "tags",
    "notes",
    "satisfaction",
    "competitors",
    "custom_fields",
    "created_by",
    "version",
    "search_name",
    "search_grams",
    "search_extra",
)
# What a converter needs of a custom field definition (sent to the child process as plain values).
CUSTOM_FIELD_ATTRIBUTES = (
    "key",
    "record_type",
    "label_zh",
    "label_en",
    "type",
    "required",
    "unique",
    "searchable",
    "options",
    "pattern",
    "min",
    "max",
    "max_length",
)
LISTS = {
    "titles",
    "phones",
    "phones_normalized",
    "emails",
    "emails_normalized",
    "account_ids",
    "tags",
    "competitors",
    "search_grams",
}
JSON = {"im_handles": "[]", "custom_fields": "{}"}
FALSE_DEFAULTS = {"consent_email", "consent_sms", "consent_phone", "consent_wechat", "tier_manual"}
NULL_DEFAULTS = {"birthday", "primary_account_id", "credit_code", "registered_capital"}
DEFAULTS = {
    "registered_capital_currency": "CNY",
    "lifecycle_stage": "prospect",
    "satisfaction": 0,
    "version": 1,
}


def _esc(text_: str) -> str:
    """A value in COPY's text format."""
    if "\\" in text_ or "\t" in text_ or "\n" in text_ or "\r" in text_:
        return text_.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text_


def _array(values: list[Any]) -> str:
    if not values:
        return "{}"
    return _esc(
        "{" + ",".join('"' + str(e).replace("\\", "\\\\").replace('"', '\\"') + '"' for e in values) + "}"
    )


def _default_text(c: str) -> str:
    if c in LISTS:
        return "{}"
    if c in JSON:
        return JSON[c]
    if c in FALSE_DEFAULTS:
        return "f"
    if c in NULL_DEFAULTS:
        return "\\N"
    if c in DEFAULTS:
        return str(DEFAULTS[c])
    return ""


def _encoder(c: str) -> Any:
    if c in LISTS:
        return _array
    if c in JSON:
        return lambda v: _esc(json.dumps(v, ensure_ascii=False))
    if c in FALSE_DEFAULTS:
        return lambda v: "t" if v else "f"
    return lambda v: _esc(v) if isinstance(v, str) else str(v)


def copy_line(columns: tuple[str, ...], v: dict[str, Any]) -> str:
    """One row in COPY's text format (built where the row is converted: no per-value work on the event loop).
    Columns the row does not fill take the table's own defaults."""
    plan = _PLANS.get(columns)
    if plan is None:
        plan = _PLANS[columns] = [(c, _encoder(c), _default_text(c)) for c in columns]
    get = v.get
    out = [default if (value := get(c)) is None else encode(value) for c, encode, default in plan]
    return "\t".join(out)


_PLANS: dict[tuple[str, ...], list[tuple[str, Any, str]]] = {}


@dataclass
class Row:
    number: int
    converted: Converted
    # Decided per batch: "create", "update", "skip" or "failed".
    action: str = "create"
    duplicate_of: str = ""
    # The row as COPY takes it (built with the conversion, off the event loop); None when values changed since.
    record: str | None = None
    errors: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class Outcome:
    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[tuple[int, str, str, str]] = field(default_factory=list)


def convert_rows(
    converter: Converter, columns: tuple[str, ...], rows: list[tuple[int, list[str]]]
) -> list[Row]:
    """File rows → Rows with their values, errors, new id and COPY line (no database needed)."""
    out = []
    for number, cells in rows:
        converted = converter.convert(cells)
        row = Row(number, converted, errors=list(converted.errors))
        if row.errors:
            row.action = "failed"
        else:
            converted.values["id"] = new_id()
            row.record = copy_line(columns, converted.values)
        out.append(row)
    return out


class Batcher:
    """Everything one import needs across batches: the converter, the rules, the account lookup cache."""

    def __init__(self, *, job: ImportJob, converter: Converter, rules: list[Any]):
        self.job = job
        self.target = job.target
        self.record_type = "account" if job.target == "accounts" else "contact"
        self.model = models.Account if job.target == "accounts" else models.Contact
        self.columns = ACCOUNT_COLUMNS if job.target == "accounts" else CONTACT_COLUMNS
        self.converter = converter
        self.rules = rules
        self.accounts: dict[str, str | None] = {}

    def convert(self, rows: list[tuple[int, list[str]]]) -> list[Row]:
        return convert_rows(self.converter, self.columns, rows)

    # ---------------------------------------------------------------- per batch, in a transaction

    async def resolve_accounts(self, session: Any, batch: list[Row]) -> None:
        """Contacts: the company cell → an account (by credit code, else the company name's key)."""
        wanted = {r.converted.account_ref for r in batch if r.converted.account_ref}
        missing = [ref for ref in wanted if ref not in self.accounts]
        if missing:
            codes, keys = {}, {}
            for ref in missing:
                try:
                    codes[normalize.normalize_credit_code(ref)] = ref
                except normalize.InvalidValue:
                    keys.setdefault(normalize.company_name_key(ref), []).append(ref)
            A = models.Account
            found: dict[str, str] = {}
            if keys:
                stmt = (
                    select(A.name_key, A.id)
                    .where(
                        A.tenant_id == self.job.tenant_id, A.deleted_at.is_(None), A.name_key.in_(list(keys))
                    )
                    .order_by(A.name_key, A.id)
                )
                for key, account_id in (await session.execute(stmt)).all():
                    for ref in keys[key]:
                        found.setdefault(ref, account_id)
            if codes:
                stmt = select(A.credit_code, A.id).where(
                    A.tenant_id == self.job.tenant_id, A.deleted_at.is_(None), A.credit_code.in_(list(codes))
                )
                for code, account_id in (await session.execute(stmt)).all():
                    found.setdefault(codes[code], account_id)
            if len(self.accounts) > 100_000:  # a bounded cache
                self.accounts = {ref: self.accounts[ref] for ref in wanted if ref in self.accounts}
            for ref in missing:
                self.accounts[ref] = found.get(ref)
        for r in batch:
            ref = r.converted.account_ref
            if not ref:
                continue
            account_id = self.accounts.get(ref)
            if account_id is None:  # reported for rows that failed already too: the report names every cell
                r.errors.append(
                    (r.converted.account_ref_column, ref, "no account has this name or credit code")
                )
                r.action = "failed"
                continue
            if r.action == "failed":
                continue
            v = r.converted.values
            ids = v.setdefault("account_ids", [])
            if account_id not in ids:
                ids.append(account_id)
            v.setdefault("primary_account_id", account_id)
            r.record = None

    async def match_duplicates(self, session: Any, batch: list[Row]) -> None:
        """Apply the rules' import actions: against the table (set-based) and within the batch."""
        live = [r for r in batch if r.action != "failed"]
        if not self.rules or not live:
            return
        # The table grows from empty during an import, faster than autovacuum's statistics: without this the
        # planner would believe it tiny, or a 2000-value `&&` unselective, and scan it whole for every batch.
        # Every lookup here has its index (phone and e-mail ones are written so only their GIN index fits).
        await session.execute(text("SET LOCAL enable_seqscan = off"))
        hits: dict[int, dict[str, tuple[str, str]]] = {}  # row index → rule id → (record id, value)
        by_index = {i: r for i, r in enumerate(batch)}
        tenant = self.job.tenant_id
        table = self.model.__tablename__
        for rule in self.rules:
            pairs: list[tuple[int, str]] = []
            if rule.match in ("phone", "email"):
                column = "phones_normalized" if rule.match == "phone" else "emails_normalized"
                wanted: dict[str, list[int]] = {}
                for i, r in by_index.items():
                    if r.action != "failed":
                        for value in r.converted.values.get(column, []):
                            wanted.setdefault(value, []).append(i)
                            pairs.append((i, value))
                if wanted:
                    # One GIN bitmap scan for the whole batch (`&&` with every value), not one per row.
                    found = await session.execute(
                        text(
                            # Only the GIN index can serve the inner query (the tenant and liveness are checked
                            # on its few rows), whatever the planner believes about the table's size.
                            f"WITH m AS MATERIALIZED (SELECT id, tenant_id, deleted_at, {column} AS v FROM {table} "
                            f"WHERE {column} && CAST(:vals AS text[])) "
                            f"SELECT id, v FROM m WHERE tenant_id = :tenant AND deleted_at IS NULL"
                        ),
                        {"tenant": tenant, "vals": list(wanted)},
                    )
                    for record_id, values in found.all():
                        for value in values:
                            for i in wanted.get(value, ()):
                                hits.setdefault(i, {}).setdefault(rule.id, (record_id, value))
                self._within_batch(pairs, hits, rule)
                continue
            elif rule.match == "credit_code" and table == "accounts":
                pairs = [
                    (i, r.converted.values["credit_code"])
                    for i, r in by_index.items()
                    if r.action != "failed" and r.converted.values.get("credit_code")
                ]
                sql = (
                    "SELECT v.i, t.id, v.value FROM unnest(CAST(:idx AS int[]), CAST(:vals AS text[])) AS v(i, value) "
                    "JOIN accounts t ON t.tenant_id = :tenant AND t.deleted_at IS NULL AND t.credit_code = v.value"
                )
            elif rule.match == "company_name" and table == "accounts":
                pairs = [
                    (i, r.converted.values["name_key"])
                    for i, r in by_index.items()
                    if r.action != "failed" and r.converted.values.get("name_key")
                ]
                sql = (
                    "SELECT v.i, t.id, t.name FROM unnest(CAST(:idx AS int[]), CAST(:vals AS text[])) AS v(i, value) "
                    "JOIN LATERAL (SELECT id, name FROM accounts t WHERE t.tenant_id = :tenant "
                    "AND t.deleted_at IS NULL AND (t.name_key = v.value OR t.name_key % v.value) LIMIT 20) t ON true"
                )
            elif rule.match == "person_name_and_company" and table == "contacts":
                keyed: dict[str, list[int]] = {}
                for i, r in by_index.items():
                    v = r.converted.values
                    if r.action != "failed" and v.get("name_key") and v.get("account_ids"):
                        keyed.setdefault(v["name_key"], []).append(i)
                        pairs.extend((i, f"{a}\x1f{v['name_key']}") for a in v["account_ids"])
                if keyed:
                    found = await session.execute(
                        text(
                            "SELECT id, name_key, account_ids FROM contacts WHERE tenant_id = :tenant "
                            "AND deleted_at IS NULL AND name_key = ANY(CAST(:keys AS text[])) "
                            "AND account_ids && CAST(:accounts AS text[])"
                        ),
                        {
                            "tenant": tenant,
                            "keys": list(keyed),
                            "accounts": sorted(
                                {
                                    a
                                    for idx in keyed.values()
                                    for i in idx
                                    for a in by_index[i].converted.values["account_ids"]
                                }
                            ),
                        },
                    )
                    for record_id, key, account_ids in found.all():
                        for i in keyed.get(key, ()):
                            if set(account_ids) & set(by_index[i].converted.values["account_ids"]):
                                hits.setdefault(i, {}).setdefault(rule.id, (record_id, key))
                self._within_batch(pairs, hits, rule)
                continue
            else:
                continue
            if not pairs:
                continue
            rows = await session.execute(
                text(sql), {"idx": [p[0] for p in pairs], "vals": [p[1] for p in pairs], "tenant": tenant}
            )
            for i, record_id, value in rows.all():
                if rule.match == "company_name":
                    score = normalize.company_name_score(by_index[i].converted.values["name"], value)
                    if score < rule.threshold:
                        continue
                hits.setdefault(i, {}).setdefault(rule.id, (record_id, value))
            self._within_batch(pairs, hits, rule)
        rules_by_id = {r.id: r for r in self.rules}
        for i, found in hits.items():
            r = by_index[i]
            actions = [rules_by_id[rid].on_import for rid in found]
            action = next(a for a in IMPORT_STRICTNESS if a in actions)
            if action == "create":
                continue
            record_id, value = next(
                ((rec, val) for rid, (rec, val) in found.items() if rules_by_id[rid].on_import == action),
                ("", ""),
            )
            matched = ", ".join(sorted({rules_by_id[rid].match for rid in found}))
            if action == "update" and not record_id:
                action = "skip"  # the earlier row of this file is not in the table yet: nothing to update
            if action == "skip":
                r.action = "skip"
                target = f"record {record_id}" if record_id else "an earlier row of this file"
                r.errors.append(("", value, f"skipped: duplicate of {target} ({matched})"))
            else:
                r.action, r.duplicate_of = "update", record_id

    @staticmethod
    def _within_batch(
        pairs: list[tuple[int, str]], hits: dict[int, dict[str, tuple[str, str]]], rule: Any
    ) -> None:
        """A later row repeating an earlier row's value (that earlier row is not in the table yet)."""
        first: dict[str, int] = {}
        for i, value in pairs:
            if value in first and first[value] != i:
                hits.setdefault(i, {}).setdefault(rule.id, ("", value))
            else:
                first.setdefault(value, i)

    def may_change(self, row: Any) -> bool:
        """The import's starter's data scope (kept on the job when it started) over an existing record."""
        stats = self.job.stats or {}
        scope = stats.get("scope", 4)
        actor = self.job.created_by
        if scope == 4 or row.owner_id == actor or actor in (getattr(row, "team_member_ids", None) or ()):
            return True
        departments = stats.get("departments")
        return scope != 1 and bool(departments) and row.department_id in departments

    async def update_existing(self, session: Any, r: Row, uow: Any = None) -> None:
        """The existing record takes the row's non-empty values (lists: added to), audited like any update."""
        from crm.customers.v1 import events_pb2

        from crm_customers.domain import accounts, contacts

        row = await session.get(self.model, r.duplicate_of, with_for_update=True, options=[undefer("*")])
        if row is None or row.deleted_at is not None:
            r.action = "create"
            return
        if not self.may_change(row):
            r.action = "skip"
            r.errors.append(("", "", f"skipped: duplicate of record {row.id}, which you may not change"))
            return
        domain: Any = accounts if self.record_type == "account" else contacts
        before = domain.snapshot(row)
        for key, value in r.converted.values.items():
            if (
                key in ("id", "tenant_id", "created_by", "owner_id", "department_id", "name_key")
                or key.startswith("search_")
                or key.endswith("_normalized")
            ):
                continue
            if key == "custom_fields":
                row.custom_fields = {**(row.custom_fields or {}), **value}
            elif isinstance(value, list):
                current = list(getattr(row, key) or [])
                setattr(row, key, current + [x for x in value if x not in current])
            elif value not in (None, ""):
                setattr(row, key, value)
        _refresh_derived(self.record_type, row)
        if domain.snapshot(row) == before:
            return
        row.version += 1
        await session.flush()
        await session.refresh(row)
        if uow is not None:
            if self.record_type == "account":
                payload: Any = events_pb2.AccountUpdated(account=accounts.account_pb(row))
            else:
                payload = events_pb2.ContactUpdated(contact=contacts.contact_pb(row))
            uow.emit(
                payload,
                aggregate_type=self.record_type,
                aggregate_id=row.id,
                aggregate_version=row.version,
                action="updated",
                before=before,
                after=domain.snapshot(row),
            )

    async def settle_indexes(self, session: Any) -> None:
        """Merge the GIN pending lists of the indexes the rules search into their trees. New entries wait in a
        pending list that every search scans in full; over a big import it would make each batch's lookups
        slower than the last. Merging after every batch keeps lookups at tree speed (the merge is work the
        index does anyway, at the 4 MB pending-list limit)."""
        names = {
            "phone": f"ix_{self.model.__tablename__}_phones",
            "email": f"ix_{self.model.__tablename__}_emails",
        }
        indexes = sorted({names[r.match] for r in self.rules if r.match in names})
        if indexes:
            calls = ", ".join(f"gin_clean_pending_list(CAST(:i{n} AS regclass))" for n in range(len(indexes)))
            await session.execute(text(f"SELECT {calls}"), {f"i{n}": ix for n, ix in enumerate(indexes)})

    async def write(self, session: Any, batch: list[Row], uow: Any = None) -> None:
        """The batch's creates (COPY) and updates, in the caller's transaction."""
        for r in batch:
            if r.action == "update":
                await self.update_existing(session, r, uow)
        creates = [r for r in batch if r.action == "create"]
        if creates:
            lines = [r.record or copy_line(self.columns, r.converted.values) for r in creates]
            raw = await (await session.connection()).get_raw_connection()
            await raw.driver_connection.copy_to_table(
                self.model.__tablename__,
                source=io.BytesIO(("\n".join(lines) + "\n").encode()),
                columns=list(self.columns),
                format="text",
            )
            if self.target == "accounts":
                await session.execute(
                    text(
                        "INSERT INTO account_stage_changes (id, tenant_id, account_id, from_stage, to_stage, "
                        "changed_by, changed_at) SELECT gen_random_uuid()::text, :tenant, a.id, '', a.lifecycle_stage, "
                        ":by, now() FROM accounts a WHERE a.id = ANY(:ids)"
                    ).bindparams(bindparam("ids", type_=ARRAY(Text))),
                    {
                        "tenant": self.job.tenant_id,
                        "by": self.job.created_by,
                        "ids": [r.converted.values["id"] for r in creates],
                    },
                )


def outcome_of(batch: list[Row]) -> Outcome:
    out = Outcome()
    for r in batch:
        if r.action == "create":
            out.created += 1
        elif r.action == "update":
            out.updated += 1
        elif r.action == "skip":
            out.skipped += 1
        else:
            out.failed += 1
        out.errors.extend((r.number, c, v, reason) for c, v, reason in r.errors)
    return out


# ---------------------------------------------------------------- setting up a run


def principal_of(job: ImportJob) -> Principal:
    return Principal(
        tenant_id=job.tenant_id,
        actor_id=job.created_by,
        role_ids=tuple(job.role_ids or ()),
        department_id=job.department_id if job.owner_id == job.created_by else "",
    )


async def batcher_for(db: Database, job: ImportJob) -> Batcher:
    async with db.read() as session:
        defs = await jobs.custom_definitions(session, job.tenant_id, job.target)
        rules = (
            await active_rules(session, job.tenant_id, "account" if job.target == "accounts" else "contact")
            if job.target != "relationships"
            else []
        )
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
    return Batcher(job=job, converter=converter, rules=rules)


def batches(rows: Iterator[tuple[int, list[str]]], size: int) -> Iterator[list[tuple[int, list[str]]]]:
    batch: list[tuple[int, list[str]]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------- dry run


async def dry_run(
    db: Database, *, job_id: str, mapping: list[tuple[str, str]], owner_id: str, decision: Decision
) -> tuple[pb.ImportJob, list[pb.ImportError], list[struct_pb2.Struct]]:
    """Everything but the writes, over the first DRY_RUN_ROWS rows: the counts, the first problems, a preview."""
    async with db.unit_of_work() as uow:
        job = await jobs.get(uow.session, job_id)
        if job.status != "uploaded":
            from crm_kit.errors import Conflict

            raise Conflict(
                f"the import is {job.status}; a dry run needs an uploaded file", reason="import_started"
            )
        chosen = await jobs.chosen_mapping(uow.session, job, mapping)
        check_writable(decision, [jobs.IMPORT_ONLY_FIELDS.get(f, f) for _, f in chosen if f])
        job.mapping = [{"column": c, "field": f} for c, f in chosen]
        jobs.owner_of(job, owner_id)
    batcher = await batcher_for(db, job)
    totals = Outcome()
    preview: list[struct_pb2.Struct] = []
    seen = 0
    complete = True
    async with source.spooled(db, job.id, f".{job.format}") as path:
        rows = source.data_rows(path, job.format, job.stats.get("encoding") or "utf-8")
        try:
            for raw in batches(rows, BATCH_ROWS):
                if seen >= DRY_RUN_ROWS:
                    complete = False
                    break
                raw = raw[: DRY_RUN_ROWS - seen]
                seen += len(raw)
                batch = batcher.convert(raw)
                async with db.read() as session:
                    if job.target == "contacts":
                        await batcher.resolve_accounts(session, batch)
                    await batcher.match_duplicates(session, batch)
                for r in batch:
                    if len(preview) < PREVIEW_ROWS and r.action != "failed":
                        s = struct_pb2.Struct()
                        s.update(
                            {
                                k: _jsonable(v)
                                for k, v in r.converted.values.items()
                                if k not in ("id", "tenant_id", "created_by") and not k.startswith("search_")
                            }
                        )
                        preview.append(s)
                got = outcome_of(batch)
                totals.created += got.created
                totals.updated += got.updated
                totals.skipped += got.skipped
                totals.failed += got.failed
                totals.errors.extend(got.errors[: max(0, DRY_RUN_ERRORS - len(totals.errors))])
                await asyncio.sleep(0)
        except source.BadFile as exc:
            from crm_kit.errors import InvalidArgument

            raise InvalidArgument.for_field("file", str(exc)) from exc
    async with db.unit_of_work() as uow:
        job = await jobs.get(uow.session, job_id)
        job.mapping = [{"column": c, "field": f} for c, f in chosen]
        jobs.owner_of(job, owner_id)
        job.rows_total = seen if complete else 0
        job.stats = {**(job.stats or {}), "dry_run": {"rows": seen, "complete": complete}}
    answer = jobs.job_pb(job)
    answer.rows_done = seen
    answer.rows_created, answer.rows_updated = totals.created, totals.updated
    answer.rows_skipped, answer.rows_failed = totals.skipped, totals.failed
    errors = [pb.ImportError(row=n, column=c, value=v, reason=why) for n, c, v, why in totals.errors]
    return answer, errors, preview


def _jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | str | int | float):
        return value
    return str(value)


# ---------------------------------------------------------------- the run


# What a database refusal of a row looks like: raw asyncpg errors (COPY), SQLAlchemy's, or the unit of
# work's translation of an integrity error.
REFUSALS = (DBAPIError, asyncpg.PostgresError, InvalidArgument, AlreadyExists)


def _reason(exc: Exception) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig  # type: ignore[assignment]
    text_ = getattr(exc, "message", None) or str(exc)
    return (text_.splitlines() or [""])[0][:300]


class LeaseLost(Exception):
    """Another worker took the job over (this one was too slow to renew its lease)."""


async def _commit_batch(
    db: Database,
    batcher: Batcher,
    job: ImportJob,
    claim: int,
    batch: list[Row],
    done_before: int,
    done_after: int,
) -> Outcome:
    """The batch and its checkpoint, in one transaction; on a database refusal, row by row in savepoints."""
    try:
        async with db.unit_of_work() as uow:
            session = uow.session
            if job.target == "contacts":
                await batcher.resolve_accounts(session, batch)
            await batcher.match_duplicates(session, batch)
            await batcher.write(session, batch, uow)
            await batcher.settle_indexes(session)
            outcome = outcome_of(batch)
            await _checkpoint(session, job, claim, done_before, done_after, outcome)
        return outcome
    except LeaseLost:
        raise
    except REFUSALS as exc:
        log.info(
            "import %s: batch ending at row %s refused (%s); retrying row by row",
            job.id,
            batch[-1].number if batch else 0,
            _reason(exc),
        )
    for r in batch:  # the first attempt's decisions are recomputed
        r.errors, r.duplicate_of = list(r.converted.errors), ""
        r.action = "failed" if r.errors else "create"
    async with db.unit_of_work() as uow:
        session = uow.session
        if job.target == "contacts":
            await batcher.resolve_accounts(session, batch)
        await batcher.match_duplicates(session, batch)
        for r in batch:
            if r.action not in ("create", "update"):
                continue
            try:
                async with session.begin_nested():
                    await batcher.write(session, [r], uow)
            except REFUSALS as exc:
                reason = _reason(exc)
                r.action = "failed"
                r.errors.append(("", "", f"refused by the database: {reason}"))
        outcome = outcome_of(batch)
        await _checkpoint(session, job, claim, done_before, done_after, outcome)
        return outcome


async def _checkpoint(
    session: Any, job: ImportJob, claim: int, done_before: int, done_after: int, outcome: Outcome
) -> None:
    result = await session.execute(
        update(ImportJob)
        .where(ImportJob.id == job.id, ImportJob.attempts == claim, ImportJob.rows_done == done_before)
        .values(
            rows_done=done_after,
            rows_created=ImportJob.rows_created + outcome.created,
            rows_updated=ImportJob.rows_updated + outcome.updated,
            rows_skipped=ImportJob.rows_skipped + outcome.skipped,
            rows_failed=ImportJob.rows_failed + outcome.failed,
        )
        .returning(ImportJob.cancel_requested)
    )
    row = result.first()
    if row is None:
        raise LeaseLost(job.id)
    if outcome.errors:
        lines = "".join(
            f"{job.tenant_id}\t{job.id}\t{n}\t{_esc(c)}\t{_esc(v[:1000])}\t{_esc(why)}\n"
            for n, c, v, why in outcome.errors
        )
        raw = await (await session.connection()).get_raw_connection()
        await raw.driver_connection.copy_to_table(
            "import_errors",
            source=io.BytesIO(lines.encode()),
            columns=["tenant_id", "job_id", "row", "column", "value", "reason"],
            format="text",
        )
    job.cancel_requested = bool(row[0])


# Files this large are converted in a child process (`converter_process`); smaller ones in a thread, which
# starts at once (a child takes a second or two to import its modules).
CHILD_PROCESS_BYTES = 8 << 20


async def _thread_batches(batcher: Batcher, path: str, totals: dict[str, int]) -> AsyncIterator[list[Row]]:
    """Parse and convert in a thread: the event loop stays free to feed PostgreSQL the previous batch (the two
    interleave at a 0.5 ms switch interval of the interpreter lock, not a whole batch apart)."""
    job = batcher.job
    resume_after = job.rows_done
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[Row] | BaseException | None] = asyncio.Queue(maxsize=2)
    stop = threading.Event()

    def hand_over(item: list[Row] | BaseException | None) -> None:
        while not stop.is_set():
            try:
                asyncio.run_coroutine_threadsafe(queue.put(item), loop).result(timeout=1)
                return
            except TimeoutError:
                continue

    def produce() -> None:
        try:
            rows = source.data_rows(path, job.format, job.stats.get("encoding") or "utf-8")
            index = 0

            def fresh() -> Iterator[tuple[int, list[str]]]:
                nonlocal index
                for item in rows:
                    index += 1
                    if index > resume_after:
                        yield item

            for raw in batches(fresh(), BATCH_ROWS):
                if stop.is_set():
                    return
                hand_over(batcher.convert(raw))
            totals["data_rows"] = index
            hand_over(None)
        except BaseException as exc:  # handed to the consumer, which fails the job
            hand_over(exc)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, 0.0005))
    producer = loop.run_in_executor(None, produce)
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not queue.empty():  # unblock a producer waiting to hand over
            queue.get_nowait()
        with contextlib.suppress(BaseException):
            await producer
        sys.setswitchinterval(switch)


async def _child_batches(batcher: Batcher, path: str, totals: dict[str, int]) -> AsyncIterator[list[Row]]:
    """Parse and convert in a child process (see `converter_process`); batches come back pickled."""
    from crm_customers.domain.imports.converter_process import FRAME

    job = batcher.job
    custom = {
        k: {a: getattr(d, a) for a in CUSTOM_FIELD_ATTRIBUTES} for k, d in batcher.converter.defs.items()
    }
    spec = {
        "path": path,
        "format": job.format,
        "encoding": job.stats.get("encoding") or "utf-8",
        "resume_after": job.rows_done,
        "batch_rows": BATCH_ROWS,
        "target": job.target,
        "columns": list(job.columns),
        "mapping": [[m["column"], m["field"]] for m in job.mapping],
        "defs": custom,
        "tenant_id": job.tenant_id,
        "owner_id": job.owner_id,
        "department_id": job.department_id,
        "created_by": job.created_by,
        "record_columns": list(batcher.columns),
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crm_customers.domain.imports.converter_process",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps(spec, ensure_ascii=False, default=str).encode() + b"\n")
        await child.stdin.drain()
        child.stdin.close()
        while True:
            try:
                (size,) = FRAME.unpack(await child.stdout.readexactly(FRAME.size))
                # Frames come only from our own child process.
                message = pickle.loads(await child.stdout.readexactly(size))
            except asyncio.IncompleteReadError:
                raise RuntimeError("the converter process ended without finishing") from None
            if message[0] == "batch":
                yield message[1]
            elif message[0] == "done":
                totals["data_rows"], totals["converter_peak_rss_kib"] = message[1], message[2]
                return
            elif message[1] == "bad_file":
                raise source.BadFile(message[2])
            else:
                raise RuntimeError(f"the converter process failed: {message[1]}: {message[2]}")
    finally:
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()


async def run(db: Database, job: ImportJob, *, claim: int) -> None:
    """Run (or resume) a claimed job to its end. The caller renews the lease meanwhile."""
    token = context.bind(context.RequestContext(principal=principal_of(job), request_id=f"import-{job.id}"))
    try:
        await _run(db, job, claim=claim)
    finally:
        context.reset(token)


async def _run(db: Database, job: ImportJob, *, claim: int) -> None:
    if job.target == "relationships":
        from crm_customers.domain.imports import relationships

        await relationships.run(db, job, claim=claim)
        return
    batcher = await batcher_for(db, job)
    totals: dict[str, int] = {"data_rows": 0}
    async with source.spooled(db, job.id, f".{job.format}") as path:
        if job.size_bytes >= CHILD_PROCESS_BYTES:
            produced = _child_batches(batcher, path, totals)
        else:
            produced = _thread_batches(batcher, path, totals)
        done = job.rows_done
        try:
            async for item in produced:
                await _commit_batch(db, batcher, job, claim, item, done, done + len(item))
                done += len(item)
                if job.cancel_requested:
                    break
        finally:
            await produced.aclose()
    if totals.get("converter_peak_rss_kib"):
        log.info("import %s: converter peak RSS %s MiB", job.id, totals["converter_peak_rss_kib"] // 1024)
    async with db.unit_of_work() as uow:
        current = await uow.session.get(ImportJob, job.id, with_for_update=True)
        if current is None or current.attempts != claim:
            raise LeaseLost(job.id)
        if job.target == "accounts" and current.rows_created:
            # The tenant's tier rules, set-based, once for the whole import (not per row).
            from crm_customers.domain import accounts

            rules, _ = await accounts.tier_rules(uow.session, job.tenant_id)
            if rules.get("rules") or rules.get("default_tier"):
                await accounts.reapply_tiers(uow, rules)
        current.status = "cancelled" if job.cancel_requested else "succeeded"
        current.rows_total = current.rows_done if job.cancel_requested else totals["data_rows"]
        if totals.get("converter_peak_rss_kib"):
            current.stats = {
                **(current.stats or {}),
                "converter_peak_rss_kib": totals["converter_peak_rss_kib"],
            }
        current.finished_at = utcnow()
        current.lease_until = None
        uow.emit(
            pb.ImportFinished(import_job=jobs.job_pb(current)),
            aggregate_type="import",
            aggregate_id=current.id,
            action="finished",
            after={
                "target": current.target,
                "file_name": current.file_name,
                "status": current.status,
                "rows_created": current.rows_created,
                "rows_updated": current.rows_updated,
                "rows_skipped": current.rows_skipped,
                "rows_failed": current.rows_failed,
            },
        )
