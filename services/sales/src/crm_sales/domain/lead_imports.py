"""Lead import (线索导入) on the kit's import machinery (`crm_kit.imports`: upload, mapping, dry run, job with
progress and checkpoint, error report). What is sales' own:

- the fields and the header words for them (`VOCABULARY`), Chinese and English; any other column can go into
  the lead's free attributes (`attributes.<key>`, suggested when a scoring rule uses the key);
- what a row means (`LeadConverter`): the same checks as a lead created through the API (`leads.check_new`),
  the source from a word people write (展会 → event), the owner named by e-mail, the pool by name;
  province and city are kept as attributes and give the region when the row has none;
- duplicates (`LeadBatcher.check`): a row whose phone (E.164) or e-mail (lower case) is already an open lead's
  (new, working, qualified), or an earlier row's of the file, is skipped, updates that lead, or is created
  anyway, as the import says (`on_duplicate`);
- placement as through the API (`leads.place`): the row's owner, else the import's owner; the row's pool,
  else the import's pool; else the assignment rules; else the importer; then the scoring rules;
- each lead created with its LeadCreated event (and its first move) in the batch's transaction; each
  duplicate updated with LeadUpdated. A batch the database refuses is retried row by row, so a failed row
  never leaves half a lead.

The worker has no credential to ask identity with, so what it would ask (the owners named by e-mail, the
departments of possible owners) is looked up when the import is dry-run or started (`prepare`) and kept with
the job.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from crm.common.v1 import imports_pb2
from crm.sales.v1 import events_pb2, lead_imports_pb2
from crm_kit.context import caller
from crm_kit.db import Database, UnitOfWork
from crm_kit.errors import InvalidArgument
from crm_kit.ids import is_uuid, new_id
from crm_kit.imports import jobs as import_jobs
from crm_kit.imports import source
from crm_kit.imports.importer import Batcher, Converted, Importer, Row, new_row
from crm_kit.imports.mapping import EMAIL_WORDS, PHONE_WORDS, Vocabulary, fold
from crm_kit.imports.models import ImportJob
from crm_kit.normalize import InvalidValue, normalize_email
from crm_kit.policy import Decision
from crm_kit.validation import Check
from sqlalchemy import or_, select

from crm_sales import models
from crm_sales.clock import Clock
from crm_sales.domain import leads
from crm_sales.domain.common import People, enum_name, snapshot

LEAD_FIELDS: dict[str, tuple[str, ...]] = {
    "name": (
        "姓名",
        "名字",
        "联系人",
        "联系人姓名",
        "客户姓名",
        "线索名称",
        "称呼",
        "fullname",
        "contactname",
        "contact",
        "person",
        "leadname",
    ),
    "company": (
        "公司",
        "公司名称",
        "企业",
        "企业名称",
        "单位",
        "单位名称",
        "客户名称",
        "机构",
        "company",
        "companyname",
        "organization",
        "organisation",
        "account",
        "accountname",
        "employer",
    ),
    "title": ("职位", "职务", "头衔", "岗位", "jobtitle", "position", "role"),
    "phone": (*PHONE_WORDS, "联系方式"),
    "email": (*EMAIL_WORDS, "邮箱地址"),
    "source": ("来源", "线索来源", "来源类型", "来源渠道", "leadsource", "sourcetype"),
    "channel": ("渠道", "推广渠道", "获客渠道", "medium"),
    "source_detail": (
        "来源详情",
        "来源说明",
        "活动",
        "活动名称",
        "市场活动",
        "展会名称",
        "推荐人",
        "campaign",
        "campaignname",
        "event",
        "eventname",
        "referrer",
    ),
    "campaign_id": ("活动id", "活动编号", "campaigncode"),
    "region": ("区域", "地区", "大区", "销售区域", "area", "salesregion"),
    "province": ("省", "省份", "所在省份", "所在省", "state"),
    "city": ("市", "城市", "所在城市"),
    "territory": ("片区", "辖区", "销售片区", "销售辖区"),
    "industry": ("行业", "所属行业", "行业类型", "sector"),
    "description": (
        "备注",
        "说明",
        "描述",
        "需求",
        "需求描述",
        "详情",
        "notes",
        "note",
        "remarks",
        "comments",
        "memo",
    ),
    "owner_email": (
        "负责人邮箱",
        "负责人",
        "所有人",
        "跟进人",
        "跟进人邮箱",
        "销售邮箱",
        "owner",
        "salesrep",
        "salesrepemail",
        "assignee",
    ),
    "pool": ("线索池", "公海", "公海池", "所属线索池", "leadpool"),
}
VOCABULARY = Vocabulary(
    "leads", LEAD_FIELDS, required=("name",), custom_prefix="attributes.", free_custom=True
)
# Columns that write a lead field of another name (what field rules are checked against).
WRITES = {"owner_email": "owner_id", "pool": "pool_id", "province": "attributes", "city": "attributes"}
# Words people write for a source (compared folded), besides the names themselves (event, LEAD_SOURCE_EVENT).
SOURCE_WORDS = {
    "手工": "manual",
    "手动": "manual",
    "手工录入": "manual",
    "人工录入": "manual",
    "网站": "web_form",
    "官网": "web_form",
    "表单": "web_form",
    "网站表单": "web_form",
    "在线表单": "web_form",
    "web": "web_form",
    "website": "web_form",
    "form": "web_form",
    "市场活动": "campaign",
    "营销活动": "campaign",
    "推广": "campaign",
    "广告": "campaign",
    "展会": "event",
    "会展": "event",
    "会议": "event",
    "峰会": "event",
    "tradeshow": "event",
    "tradefair": "event",
    "exhibition": "event",
    "转介绍": "referral",
    "推荐": "referral",
    "老客户推荐": "referral",
    "合作伙伴": "partner",
    "代理商": "partner",
    "渠道商": "partner",
    "经销商": "partner",
    "导入": "import",
    "接口": "api",
}
SOURCE_NAMES = {
    fold(spelling): v.name.removeprefix("LEAD_SOURCE_").lower()
    for v in leads.SOURCE.values
    if v.number
    for spelling in (v.name, v.name.removeprefix("LEAD_SOURCE_"))
}
_SOURCE_HELP = (
    "is not a lead source: use one of manual, web_form, campaign, event, referral, partner, import, api "
    "(or 手工, 网站, 市场活动, 展会, 转介绍, 合作伙伴, …); map the column to source_detail to keep free text"
)
DUPLICATE = lead_imports_pb2.LeadDuplicateAction.DESCRIPTOR
OPEN_STATUSES = leads.OPEN_STATUSES
MAX_OWNERS = 1000


def source_of(text: str) -> str:
    """A lead source's short name from what a cell says ("展会", "Event", "LEAD_SOURCE_EVENT"), or ""."""
    word = fold(text)
    return SOURCE_NAMES.get(word) or SOURCE_WORDS.get(word, "")


@dataclass
class LeadValues(Converted):
    """A row as a lead: `values` (lead columns), its attributes, and what is looked up per batch."""

    attributes: dict[str, str] = field(default_factory=dict)
    owner_id: str = ""
    pool_ref: str = ""
    # field → (column, cell) of every mapped cell, to name the cell of a problem found later.
    cells: dict[str, tuple[str, str]] = field(default_factory=dict)


class LeadConverter:
    """Converts rows of one lead import (pure: it runs in a thread or a child process)."""

    def __init__(self, *, columns: list[str], mapping: list[tuple[str, str]], owners: dict[str, str]):
        self.columns = list(columns)
        self.mapping = list(mapping)
        # E-mail (lower case) → the active user who has it, looked up when the import started.
        self.owners = owners
        self.cells = [(i, c, f) for i, (c, f) in enumerate(mapping) if f and i < len(columns)]

    def spec(self) -> dict[str, Any]:
        return {"columns": self.columns, "mapping": [list(m) for m in self.mapping], "owners": self.owners}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LeadConverter:
        return cls(
            columns=spec["columns"], mapping=[tuple(m) for m in spec["mapping"]], owners=spec["owners"]
        )

    def convert(self, row: list[str]) -> LeadValues:
        out = LeadValues()
        for i, column, f in self.cells:
            raw = row[i] if i < len(row) else ""
            if "\x00" in raw:
                out.errors.append((column, raw.replace("\x00", ""), "contains a NUL character"))
                continue
            out.cells[f] = (column, raw.strip())
        v, attributes = out.values, out.attributes
        # The field a check names → the cell it came from.
        origin: dict[str, tuple[str, str]] = {}
        for f, (column, text) in out.cells.items():
            target = f"attributes.{f}" if f in ("province", "city") else f
            origin[target] = (column, text)
            if not text:
                if f == "name":
                    v["name"] = ""
                continue
            if target.startswith("attributes."):
                attributes[target.removeprefix("attributes.")] = text
            elif f == "source":
                v["source"] = source_of(text)
                if not v["source"]:
                    out.errors.append((column, text, _SOURCE_HELP))
            elif f == "owner_email":
                try:
                    owner = self.owners.get(normalize_email(text))
                except InvalidValue as exc:
                    out.errors.append((column, text, str(exc)))
                    continue
                if owner is None:
                    out.errors.append((column, text, "no active user of your company has this e-mail"))
                else:
                    out.owner_id = owner
            elif f == "pool":
                out.pool_ref = text
            else:
                v[f] = text
        if not v.get("region") and attributes.get("province"):
            v["region"] = attributes["province"]
            origin["region"] = origin["attributes.province"]
        check = Check()
        leads.check_new(check, v, attributes)
        for e in check.errors:
            column, text = origin.get(e.field, ("", ""))
            out.errors.append((column, text, e.message))
        v["phone_key"], v["email_key"] = leads.contact_keys(v.get("phone", ""), v.get("email", ""))
        return out


def batch_converter(params: dict[str, Any]) -> Any:
    """The converter of a child process (`crm_kit.imports.converter_process`), from `LeadConverter.spec()`."""
    converter = LeadConverter.from_spec(params)
    return lambda rows: [new_row(number, converter.convert(cells)) for number, cells in rows]


class KnownPeople:
    """Departments of possible owners, looked up when the import started: what `People` answers through the
    API, for the worker, which has no credential to ask identity with."""

    def __init__(self, departments: dict[str, str]):
        self.departments = departments

    async def department_of(self, field: str, user_id: str) -> str | None:
        return self.departments.get(user_id) or None


class LeadBatcher(Batcher):
    # Each lead is written with its move and event (not COPied): smaller batches keep a transaction short.
    batch_rows = 500

    def __init__(self, *, job: ImportJob, converter: LeadConverter, clock: Clock):
        super().__init__(job)
        self.converter = converter
        self.clock = clock
        options, prepared = job.options or {}, (job.stats or {}).get("prepared") or {}
        self.on_duplicate = options.get("on_duplicate", "skip")
        self.pool_id = options.get("pool_id", "")
        self.source = options.get("source", "import")
        self.source_detail = options.get("source_detail", "")
        self.owner_id = prepared.get("owner_id", "")
        self.fallback_owner = prepared.get("fallback_owner") or None
        self.people = KnownPeople(prepared.get("departments") or {})
        self.pools: dict[str, str | None] = {}

    def convert(self, rows: list[tuple[int, list[str]]]) -> list[Row]:
        return [new_row(number, self.converter.convert(cells)) for number, cells in rows]

    def child_spec(self) -> tuple[str, dict[str, Any]]:
        return "crm_sales.domain.lead_imports:batch_converter", self.converter.spec()

    def preview(self, row: Row) -> dict[str, Any]:
        c = row.converted
        values = {k: x for k, x in c.values.items() if not k.endswith("_key")}
        values.setdefault("source", self.source)
        if self.source_detail:
            values.setdefault("source_detail", self.source_detail)
        if c.attributes:
            values["attributes"] = dict(c.attributes)
        if c.owner_id or self.owner_id:
            values["owner_id"] = c.owner_id or self.owner_id
        if isinstance(row.record, str) or self.pool_id:
            values["pool_id"] = row.record if isinstance(row.record, str) else self.pool_id
        return values

    # ---------------------------------------------------------------- per batch

    async def check(self, session: Any, batch: list[Row]) -> None:
        await self._pools(session, batch)
        if self.on_duplicate != "create":
            await self._duplicates(session, batch)

    async def _pools(self, session: Any, batch: list[Row]) -> None:
        """A pool cell names a pool of the tenant by its name (or id)."""
        wanted = {r.converted.pool_ref for r in batch if r.converted.pool_ref}
        missing = [ref for ref in wanted if ref not in self.pools]
        if missing:
            P = models.LeadPool
            ids = [ref for ref in missing if is_uuid(ref)]
            found = await session.execute(
                select(P.id, P.name).where(
                    P.tenant_id == self.job.tenant_id, or_(P.name.in_(missing), P.id.in_(ids))
                )
            )
            for pool_id, name in found.all():
                self.pools[name] = self.pools[pool_id] = pool_id
            for ref in missing:
                self.pools.setdefault(ref, None)
        for r in batch:
            ref = r.converted.pool_ref
            if not ref:
                continue
            pool_id = self.pools.get(ref)
            if pool_id is None:  # reported for rows that failed already too: the report names every cell
                r.errors.append((r.converted.cells["pool"][0], ref, "no lead pool has this name"))
                r.action = "failed"
            else:
                r.record = pool_id

    async def _duplicates(self, session: Any, batch: list[Row]) -> None:
        """Open leads (one query per kind, on its partial index) and earlier rows with the same phone or e-mail."""
        live = [r for r in batch if r.action != "failed"]
        L = models.Lead
        known: dict[str, dict[str, str]] = {}
        for kind, column in (("phone", L.phone_key), ("email", L.email_key)):
            keys = sorted({r.converted.values[f"{kind}_key"] for r in live} - {""})
            known[kind] = {}
            if not keys:
                continue
            found = await session.execute(
                select(column, L.id)
                .where(
                    L.tenant_id == self.job.tenant_id,
                    column != "",
                    L.status.in_(OPEN_STATUSES),
                    column.in_(keys),
                )
                .order_by(L.id)
            )
            for key, lead_id in found.all():
                known[kind].setdefault(key, lead_id)
        earlier: dict[str, set[str]] = {"phone": set(), "email": set()}
        for r in live:
            v = r.converted.values
            match = next(
                ((kind, known[kind][v[f"{kind}_key"]]) for kind in known if v[f"{kind}_key"] in known[kind]),
                None,
            )
            if match is not None and self.on_duplicate == "update":
                r.action, r.duplicate_of = "update", match[1]
            elif match is not None:
                self._skip(r, match[0], f"skipped: duplicate of lead {match[1]} ({match[0]})")
            else:
                repeated = next((k for k in earlier if v[f"{k}_key"] and v[f"{k}_key"] in earlier[k]), None)
                if repeated is not None:
                    self._skip(r, repeated, f"skipped: duplicate of an earlier row of this file ({repeated})")
            for kind in earlier:
                if v[f"{kind}_key"]:
                    earlier[kind].add(v[f"{kind}_key"])

    @staticmethod
    def _skip(r: Row, kind: str, reason: str) -> None:
        """Skipped as a duplicate; the report names the row's phone or e-mail cell."""
        column, text = r.converted.cells.get(kind, ("", ""))
        r.action = "skip"
        r.errors.append((column, text, reason))

    async def write(self, session: Any, batch: list[Row], uow: UnitOfWork) -> None:
        now = self.clock.now()
        tenant = self.job.tenant_id
        scoring = await leads.scoring_rules(session, tenant)
        for r in batch:
            if r.action == "update":
                await self._update(r, uow, scoring)
        rules = None
        made = []
        for r in batch:
            if r.action != "create":
                continue
            lead = self._new_lead(r)
            owner = r.converted.owner_id or self.owner_id
            pool = r.record if isinstance(r.record, str) else self.pool_id
            if not owner and not pool and rules is None:
                rules = await leads.assignment_rules(session, tenant)
            await leads.place(
                session,
                lead,
                owner_id=owner,
                pool_id=pool,
                fallback_owner=self.fallback_owner,
                people=self.people,
                now=now,
                rules=rules,
            )
            leads.refresh_keys(lead)
            lead.score = leads.score_of(lead, scoring)
            lead.created_at = lead.updated_at = now
            session.add(lead)
            made.append(lead)
        if made:
            await session.flush()
            for lead in made:
                leads.record_created(uow, lead, now=now, reason=f"import {self.job.id}")

    def _new_lead(self, r: Row) -> models.Lead:
        v, c = r.converted.values, r.converted
        text = {k: v[k] for k in leads.TEXT_FIELDS if v.get(k)}
        text["source_detail"] = text.get("source_detail") or self.source_detail
        return models.Lead(
            id=new_id(),
            tenant_id=self.job.tenant_id,
            **text,
            source=v.get("source") or self.source,
            campaign_id=v.get("campaign_id", ""),
            form_id="",
            status="new",
            attributes=dict(c.attributes),
            version=1,
        )

    async def _update(self, r: Row, uow: UnitOfWork, scoring: list[Any]) -> None:
        """The open lead takes the row's non-empty values (attributes: added), audited like any update; it
        keeps its owner and pool."""
        lead = (
            await uow.session.execute(
                select(models.Lead)
                .where(models.Lead.id == r.duplicate_of, models.Lead.tenant_id == self.job.tenant_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        ).scalar_one_or_none()
        if lead is None or lead.status not in OPEN_STATUSES:  # gone or closed since: a new lead then
            r.action = "create"
            return
        v = r.converted.values
        if not import_jobs.may_change(self.job, lead.owner_id, lead.department_id):
            kind = "phone" if v["phone_key"] and v["phone_key"] == lead.phone_key else "email"
            self._skip(r, kind, f"skipped: duplicate of lead {lead.id}, which you may not change")
            return
        attributes = {**(lead.attributes or {}), **r.converted.attributes}
        check = Check()
        leads.check_attributes(check, attributes)
        if check.errors:
            r.action = "failed"
            r.errors.extend(("", "", f"{e.field}: {e.message} (lead {lead.id})") for e in check.errors)
            return
        before = snapshot(lead, leads.AUDITED)
        for k in (*leads.TEXT_FIELDS, "source", "campaign_id"):
            if v.get(k):
                setattr(lead, k, v[k])
        lead.attributes = attributes
        await leads.save_changes(uow, lead, before, scoring=scoring)


class LeadImporter(Importer):
    target = "leads"
    object = "lead"
    vocabulary = VOCABULARY

    def __init__(self, *, people: People, clock: Clock):
        self.people = people
        self.clock = clock

    async def custom_fields(self, session: Any, tenant_id: str) -> list[tuple[str, str, str]]:
        """The attribute keys the tenant's scoring rules use: a column named after one is suggested for it."""
        rules = await leads.scoring_rules(session, tenant_id)
        keys = sorted(
            {r.field.removeprefix("attributes.") for r in rules if r.field.startswith("attributes.")}
        )
        return [(k, "", "") for k in keys]

    def check_writable(self, decision: Decision, fields: list[str]) -> None:
        decision.check_writable(sorted({WRITES.get(f, f.split(".", 1)[0]) for f in fields}))

    async def prepare(
        self, db: Database, job: ImportJob, request: Any, decision: Decision
    ) -> tuple[dict[str, str], dict[str, Any]]:
        """The options (unset ones: the dry run's), checked; and, with the caller's credential, the owners the
        file names by e-mail and the departments of everyone a lead may go to."""
        previous = job.options or {}
        principal = caller()
        check = Check()
        on_duplicate = enum_name(DUPLICATE, request.on_duplicate) or previous.get("on_duplicate") or "skip"
        lead_source = enum_name(leads.SOURCE, request.source) or previous.get("source") or "import"
        source_detail = request.source_detail.strip() or previous.get("source_detail", "")
        check.length("source_detail", source_detail, max_len=leads.TEXT_FIELDS["source_detail"])
        pool_id = request.pool_id or previous.get("pool_id", "")
        if pool_id:
            check.uuid("pool_id", pool_id)
            if not check.errors:
                async with db.read() as session:
                    exists = await session.scalar(
                        select(models.LeadPool.id).where(
                            models.LeadPool.id == pool_id, models.LeadPool.tenant_id == principal.tenant_id
                        )
                    )
                if not exists:
                    check.fail("pool_id", "no such lead pool")
        check.done()
        departments: dict[str, str] = {}
        owner_id = request.owner_id
        if owner_id:
            departments[owner_id] = await self.people.department_of("owner_id", owner_id) or ""
        fallback = "" if principal.is_api_key else principal.actor_id
        if fallback:
            departments[fallback] = principal.department_id
        owners = await self._owners(db, job, departments)
        async with db.read() as session:
            rules = await leads.assignment_rules(session, principal.tenant_id)
        for user_id in sorted({a for rule in rules for a in rule.assignee_ids} - departments.keys()):
            try:
                departments[user_id] = await self.people.department_of("assignee_ids", user_id) or ""
            except InvalidArgument:  # no longer a user: a lead the rule gives them has no department
                departments[user_id] = ""
        options = {"on_duplicate": on_duplicate, "source": lead_source}
        if pool_id:
            options["pool_id"] = pool_id
        if source_detail:
            options["source_detail"] = source_detail
        prepared = {
            "owner_id": owner_id,
            "fallback_owner": fallback,
            "owners": owners,
            "departments": departments,
        }
        return options, prepared

    async def _owners(self, db: Database, job: ImportJob, departments: dict[str, str]) -> dict[str, str]:
        """E-mail → user id of the active users the owner column names (their departments into `departments`)."""
        index = next((i for i, m in enumerate(job.mapping) if m["field"] == "owner_email"), None)
        if index is None:
            return {}
        async with source.spooled(db, job.id, f".{job.format}", size=job.size_bytes) as path:
            try:
                cells = await asyncio.to_thread(
                    source.distinct_values,
                    path,
                    job.format,
                    (job.stats or {}).get("encoding") or "utf-8",
                    index,
                    MAX_OWNERS,
                )
            except source.BadFile as exc:
                raise InvalidArgument.for_field("mapping", f"owner e-mails: {exc}") from exc
        emails = set()
        for cell in cells:
            try:
                emails.add(normalize_email(cell))
            except InvalidValue:
                continue  # the row's own error
        found = await self.people.active_users_by_email(emails)
        departments.update({user_id: department for user_id, department in found.values()})
        return {email: user_id for email, (user_id, _) in found.items()}

    async def batcher(self, db: Database, job: ImportJob) -> Batcher:
        prepared = (job.stats or {}).get("prepared") or {}
        converter = LeadConverter(
            columns=list(job.columns),
            mapping=[(m["column"], m["field"]) for m in job.mapping],
            owners=prepared.get("owners") or {},
        )
        return LeadBatcher(job=job, converter=converter, clock=self.clock)

    def finished_event(self, job: ImportJob) -> Any:
        return events_pb2.LeadImportFinished(import_job=import_jobs.fill_job(imports_pb2.ImportJob(), job))
