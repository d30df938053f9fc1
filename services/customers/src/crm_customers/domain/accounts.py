"""Accounts (companies): create, read, list, update, soft delete and restore; lifecycle history; the group
hierarchy with its roll-ups; tier rules.

Reusable by other domains (duplicate rules, merge, import): `prepare` validates and normalises an incoming
`pb.Account` into a row without writing it, `insert` writes a prepared row with its events, `apply_update`
changes an existing row, and `account_pb`/`redact` convert for output.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlparse

from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import events_pb2
from crm_kit.db import UnitOfWork, utcnow
from crm_kit.errors import Conflict, FieldError, InvalidArgument
from crm_kit.ids import new_id
from crm_kit.policy import Decision
from crm_kit.validation import Check
from google.protobuf import json_format, struct_pb2
from sqlalchemy import and_, func, literal, not_, select, text
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, defer

from crm_customers import models
from crm_customers.domain import custom_fields as cf
from crm_customers.domain import dedup, search
from crm_customers.domain import query as q
from crm_customers.domain.common import (
    SIZES,
    STAGES,
    caller,
    expect_version,
    get_owned,
    is_hidden,
    soft_delete,
    ts,
    visible,
)
from crm_customers.normalize import (
    InvalidValue,
    company_name_key,
    normalize_credit_code,
    normalize_email,
    normalize_phone,
)

# Resolves a user id to that user's department id ("" if none), or None when no such user exists.
DepartmentOf = Callable[[str], Awaitable[str | None]]

WRITABLE = (
    "name",
    "alt_name",
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
    "emails",
    "source",
    "tier",
    "lifecycle_stage",
    "owner_id",
    "team_member_ids",
    "tags",
    "notes",
    "satisfaction",
    "competitors",
    "parent_id",
    "custom_fields",
)
SERVER_OWNED = (
    "id",
    "department_id",
    "subsidiary_count",
    "descendant_count",
    "created_by",
    "created_at",
    "updated_at",
    "deleted_at",
    "version",
)
TEXT_LIMITS = {
    "name": 300,
    "alt_name": 300,
    "legal_representative": 100,
    "industry": 100,
    "region": 100,
    "province": 50,
    "city": 50,
    "district": 50,
    "address": 500,
    "website": 300,
    "source": 50,
    "tier": 50,
    "notes": 10000,
}
# Changing one of these re-checks the duplicate rules.
DEDUP_FIELDS = ("name", "alt_name", "phones", "emails", "credit_code")
MAX_LIST = 50
MAX_TREE_DEPTH = 50
CURRENCY = re.compile(r"^[A-Z]{3}$")

FIELDS = [
    q.Field("id", "id", models.Account.id),
    q.Field("name", "text", models.Account.name, sortable=True),
    q.Field("alt_name", "text", models.Account.alt_name, sortable=True),
    q.Field("credit_code", "text", models.Account.credit_code, nullable=True),
    q.Field("legal_representative", "text", models.Account.legal_representative, sortable=True),
    q.Field("registered_capital", "decimal", models.Account.registered_capital, sortable=True, nullable=True),
    q.Field("registered_capital_currency", "text", models.Account.registered_capital_currency),
    q.Field("industry", "text", models.Account.industry, sortable=True),
    q.Field("size", "enum", models.Account.size, enum=SIZES, sortable=True),
    q.Field("region", "text", models.Account.region, sortable=True),
    q.Field("province", "text", models.Account.province, sortable=True),
    q.Field("city", "text", models.Account.city, sortable=True),
    q.Field("district", "text", models.Account.district, sortable=True),
    q.Field("address", "text", models.Account.address),
    q.Field("website", "text", models.Account.website),
    q.Field("phones", "array", models.Account.phones_normalized, normalize=normalize_phone),
    q.Field("emails", "array", models.Account.emails_normalized, normalize=normalize_email),
    q.Field("source", "text", models.Account.source, sortable=True),
    q.Field("tier", "text", models.Account.tier, sortable=True),
    q.Field("lifecycle_stage", "enum", models.Account.lifecycle_stage, enum=STAGES, sortable=True),
    q.Field("owner_id", "id", models.Account.owner_id, sortable=True),
    q.Field("department_id", "id", models.Account.department_id),
    q.Field("team_member_ids", "array", models.Account.team_member_ids),
    q.Field("tags", "array", models.Account.tags),
    q.Field("notes", "text", models.Account.notes),
    q.Field("satisfaction", "int", models.Account.satisfaction, sortable=True),
    q.Field("competitors", "array", models.Account.competitors),
    q.Field("parent_id", "id", models.Account.parent_id, nullable=True),
    q.Field("created_by", "id", models.Account.created_by),
    q.Field("created_at", "datetime", models.Account.created_at, sortable=True),
    q.Field("updated_at", "datetime", models.Account.updated_at, sortable=True),
    q.Field("deleted_at", "datetime", models.Account.deleted_at, sortable=True, nullable=True),
]


# ---------------------------------------------------------------- conversions


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if values:
        s.update(values)
    return s


def account_pb(a: models.Account, *, subsidiaries: int = 0, descendants: int = 0) -> pb.Account:
    return pb.Account(
        id=a.id,
        name=a.name,
        alt_name=a.alt_name,
        credit_code=a.credit_code or "",
        legal_representative=a.legal_representative,
        registered_capital="" if a.registered_capital is None else format(a.registered_capital, "f"),
        registered_capital_currency=a.registered_capital_currency,
        industry=a.industry,
        size=SIZES.number(a.size),
        region=a.region,
        province=a.province,
        city=a.city,
        district=a.district,
        address=a.address,
        website=a.website,
        phones=list(a.phones or []),
        emails=list(a.emails or []),
        source=a.source,
        tier=a.tier,
        lifecycle_stage=STAGES.number(a.lifecycle_stage),
        owner_id=a.owner_id,
        department_id=a.department_id,
        team_member_ids=list(a.team_member_ids or []),
        tags=list(a.tags or []),
        notes=a.notes,
        satisfaction=a.satisfaction,
        competitors=list(a.competitors or []),
        parent_id=a.parent_id or "",
        custom_fields=_struct(a.custom_fields or {}),
        subsidiary_count=subsidiaries,
        descendant_count=descendants,
        created_by=a.created_by,
        created_at=ts(a.created_at),
        updated_at=ts(a.updated_at),
        deleted_at=ts(a.deleted_at),
        version=a.version,
    )


def snapshot(a: models.Account) -> dict[str, Any]:
    """The audited fields: what the audit trail shows as before/after."""
    out: dict[str, Any] = {}
    for name in WRITABLE:
        value = getattr(a, name)
        if name == "registered_capital":
            value = None if value is None else format(value, "f")
        elif isinstance(value, list):
            value = list(value)
        elif isinstance(value, dict):
            value = dict(value)
        out[name] = value
    out["department_id"] = a.department_id
    return out


def redact(decision: Decision, message: Any) -> Any:
    """Hidden fields leave the message: top-level ones, and custom fields named `custom_fields.<key>`."""
    return decision.redact_message(message)


# The names a keyword search looks at, per table (both live in the one `search_name` column).
NAME_FIELDS = {"accounts": ("name", "alt_name"), "contacts": ("name", "name_latin")}


def searchable_names(decision: Decision, model: Any) -> list[Any] | None:
    """None when the caller sees every name of `model`'s records, else the name columns they see."""
    fields = NAME_FIELDS[model.__tablename__]
    shown = [getattr(model, f) for f in fields if not is_hidden(decision, f)]
    return None if len(shown) == len(fields) else shown


def keyword(decision: Decision, defs: dict[str, models.CustomField], model: Any, query: str) -> Any:
    """The keyword clause for this caller: it never matches on a value hidden from them (a hidden name, phone,
    e-mail or searchable custom field), so which records match reveals nothing they may not see."""
    return search.clause(
        model,
        query,
        include_extra=not search_blocked(decision, defs),
        names=searchable_names(decision, model),
    )


def search_blocked(decision: Decision, defs: dict[str, models.CustomField]) -> bool:
    """Phones, e-mails or a searchable custom field hidden: search the names only."""
    hidden = decision.hidden
    if not hidden:
        return False
    if {"phones", "emails", "custom_fields"} & hidden:
        return True
    return any(is_hidden(decision, f"custom_fields.{k}") for k, d in defs.items() if d.searchable)


# ---------------------------------------------------------------- validation and normal forms


def given_fields(src: pb.Account) -> list[str]:
    """The fields a create request sets (non-default values)."""
    out = []
    for name in WRITABLE:
        if name == "custom_fields":
            out.extend(f"custom_fields.{k}" for k in src.custom_fields.fields)
            continue
        value = getattr(src, name)
        if (hasattr(value, "__len__") and len(value) > 0) or (not hasattr(value, "__len__") and value):
            out.append(name)
    return out


def _clean_list(
    check: Check, field: str, values: Any, *, max_len: int = 100, limit: int = MAX_LIST
) -> list[str]:
    out: list[str] = []
    for i, v in enumerate(values):
        v = v.strip()
        if not v:
            continue
        if len(v) > max_len:
            check.fail(f"{field}[{i}]", f"must be at most {max_len} characters")
        if v not in out:
            out.append(v)
    if len(out) > limit:
        check.fail(field, f"at most {limit} entries")
    return out


def set_field(check: Check, row: models.Account, name: str, src: pb.Account) -> None:
    """Copy one field from the request onto the row, validated and normalised."""
    value = getattr(src, name)
    if name in TEXT_LIMITS:
        value = value.strip()
        check.length(name, value, max_len=TEXT_LIMITS[name])
        if name == "website" and value:
            url = value if "://" in value else "https://" + value
            parsed = urlparse(url)
            if parsed.scheme not in ("http", "https") or "." not in parsed.netloc:
                check.fail("website", "is not a web address")
            value = url
        if name == "tier":
            row.tier_manual = bool(value)
        setattr(row, name, value)
    elif name == "credit_code":
        value = value.strip()
        if not value:
            row.credit_code = None
        else:
            try:
                row.credit_code = normalize_credit_code(value)
            except InvalidValue as exc:
                check.fail("credit_code", str(exc))
    elif name == "registered_capital":
        value = value.strip().replace(",", "")
        if not value:
            row.registered_capital = None
        else:
            try:
                amount = Decimal(value)
                if (
                    not amount.is_finite()
                    or amount < 0
                    or amount.as_tuple().exponent < -2
                    or amount >= Decimal(10) ** 18
                ):
                    raise InvalidOperation
                row.registered_capital = amount
            except InvalidOperation:
                check.fail(
                    "registered_capital",
                    'must be a non-negative amount with at most 2 decimals, e.g. "5000000.00"',
                )
    elif name == "registered_capital_currency":
        value = value.strip().upper() or "CNY"
        if not CURRENCY.match(value):
            check.fail(name, "must be an ISO 4217 code such as CNY or USD")
        row.registered_capital_currency = value
    elif name == "size":
        row.size = SIZES.name(value)
    elif name == "lifecycle_stage":
        row.lifecycle_stage = STAGES.name(value) or "prospect"
    elif name == "satisfaction":
        if not 0 <= value <= 5:
            check.fail("satisfaction", "must be 1 to 5 (0: not rated)")
        row.satisfaction = value
    elif name == "phones":
        phones = _clean_list(check, "phones", value, max_len=50)
        normalized = []
        for i, p in enumerate(phones):
            try:
                normalized.append(normalize_phone(p))
            except InvalidValue as exc:
                check.fail(f"phones[{i}]", str(exc))
        row.phones, row.phones_normalized = phones, list(dict.fromkeys(normalized))
    elif name == "emails":
        emails = _clean_list(check, "emails", value, max_len=320)
        normalized = []
        for i, e in enumerate(emails):
            try:
                normalized.append(normalize_email(e))
            except InvalidValue as exc:
                check.fail(f"emails[{i}]", str(exc))
        row.emails, row.emails_normalized = emails, list(dict.fromkeys(normalized))
    elif name in ("tags", "competitors"):
        setattr(row, name, _clean_list(check, name, value))
    elif name == "team_member_ids":
        ids = _clean_list(check, name, value, max_len=36)
        for i, v in enumerate(ids):
            check.uuid(f"team_member_ids[{i}]", v)
        row.team_member_ids = ids
    elif name == "owner_id":
        check.uuid("owner_id", value.strip())
        row.owner_id = value.strip()
    elif name == "parent_id":
        value = value.strip()
        check.uuid("parent_id", value)
        row.parent_id = value or None
    else:  # pragma: no cover - every writable field is handled above
        raise AssertionError(name)


def refresh_derived(row: models.Account, defs: dict[str, models.CustomField]) -> None:
    """The normal forms and search columns, from the row's current values."""
    row.name_key = company_name_key(row.name)
    row.search_name = search.name_text(row.name, row.alt_name)
    row.search_grams = search.name_grams(row.name, row.alt_name)
    row.search_extra = search.extra_text(
        row.phones_normalized or [],
        row.emails_normalized or [],
        cf.searchable_values(defs, row.custom_fields or {}),
    )


async def _check_parent(session: AsyncSession, check: Check, row: models.Account) -> None:
    if not row.parent_id or check.errors:
        return
    if row.parent_id == row.id:
        check.fail("parent_id", "an account cannot be its own parent")
        return
    parent = await session.scalar(
        select(models.Account.id).where(
            models.Account.id == row.parent_id,
            models.Account.tenant_id == row.tenant_id,
            models.Account.deleted_at.is_(None),
        )
    )
    if parent is None:
        check.fail("parent_id", "no such account")
        return
    ancestors = await ancestor_ids(session, row.tenant_id, row.parent_id)
    if row.id in ancestors:
        check.fail("parent_id", "would make a cycle: the new parent is below this account in its group")
    elif len(ancestors) >= MAX_TREE_DEPTH:
        check.fail("parent_id", f"a group can be at most {MAX_TREE_DEPTH} levels deep")


async def _owner(check: Check, row: models.Account, department_of: DepartmentOf) -> None:
    principal = caller()
    if not row.owner_id:
        row.owner_id = principal.actor_id
    if row.owner_id == principal.actor_id:
        row.department_id = principal.department_id
        return
    if check.errors and "owner_id" in {e.field for e in check.errors}:
        return
    department = await department_of(row.owner_id)
    if department is None:
        check.fail("owner_id", "no such user")
    else:
        row.department_id = department


async def _team(
    check: Check, row: models.Account, department_of: DepartmentOf, before: list[str] | None = None
) -> None:
    """Everyone newly on the account's team is a user of the caller's company."""
    if check.errors:
        return
    known = {*(before or []), caller().actor_id}
    for i, user_id in enumerate(row.team_member_ids or []):
        if user_id not in known and await department_of(user_id) is None:
            check.fail(f"team_member_ids[{i}]", "no such user")


async def prepare(
    session: AsyncSession,
    src: pb.Account,
    *,
    defs: dict[str, models.CustomField],
    department_of: DepartmentOf,
    check: Check | None = None,
) -> models.Account:
    """A new account row from a request, validated and normalised, not yet written. Raises InvalidArgument
    with every bad field (or adds them to `check` when given, for an importer that reports per row)."""
    principal = caller()
    own_check = check is None
    check = check or Check()
    row = models.Account(
        id=new_id(),
        tenant_id=principal.tenant_id,
        created_by=principal.actor_id,
        version=1,
        custom_fields={},
        registered_capital_currency="CNY",
        tier_manual=False,
    )
    check.required("name", src.name)
    for name in WRITABLE:
        if name != "custom_fields":
            set_field(check, row, name, src)
    given = json_format.MessageToDict(src.custom_fields) if src.custom_fields.fields else {}
    row.custom_fields = cf.merge_values(check, defs, {}, given, creating=True)
    await _owner(check, row, department_of)
    await _check_parent(session, check, row)
    await _team(check, row, department_of)
    if not check.errors:
        await cf.check_unique(session, check, defs, models.Account, row.custom_fields, set(given), row.id)
    refresh_derived(row, defs)
    if own_check:
        check.done()
    return row


async def insert(uow: UnitOfWork, row: models.Account) -> models.Account:
    """Write a prepared account with its tier, first stage-history entry and events."""
    uow.session.add(row)
    await uow.session.flush()
    await _apply_tier(uow.session, row)
    await uow.session.flush()
    await uow.session.refresh(row)
    uow.session.add(
        models.AccountStageChange(
            tenant_id=row.tenant_id,
            account_id=row.id,
            to_stage=row.lifecycle_stage,
            changed_by=row.created_by,
        )
    )
    uow.emit(
        events_pb2.AccountCreated(account=account_pb(row)),
        aggregate_type="account",
        aggregate_id=row.id,
        aggregate_version=1,
        action="created",
        after=snapshot(row),
    )
    return row


async def create(
    uow: UnitOfWork,
    src: pb.Account,
    *,
    defs: dict[str, models.CustomField],
    department_of: DepartmentOf,
    read: Decision | None = None,
) -> models.Account:
    """`read`: the caller's read decision, which says what the duplicate candidates may show (see dedup)."""
    row = await prepare(uow.session, src, defs=defs, department_of=department_of)
    await dedup.enforce(uow, "account", row, mode="create", read=read)  # duplicate rules: 409 when blocked
    return await insert(uow, row)


# ---------------------------------------------------------------- reads


async def get(
    session: AsyncSession, account_id: str, decision: Decision, *, deleted: bool | None = False
) -> models.Account:
    return await get_owned(session, models.Account, "account", account_id, decision=decision, deleted=deleted)


async def rollups(session: AsyncSession, tenant_id: str, ids: list[str]) -> dict[str, tuple[int, int]]:
    """(direct subsidiaries, all descendants) of each account, live accounts only."""
    if not ids:
        return {}
    rows = await session.execute(
        text(
            """
            WITH RECURSIVE below(root, id, depth) AS (
                SELECT a.parent_id, a.id, 1 FROM accounts a
                WHERE a.tenant_id = :t AND a.parent_id = ANY(:ids) AND a.deleted_at IS NULL
              UNION ALL
                SELECT b.root, a.id, b.depth + 1 FROM accounts a JOIN below b ON a.parent_id = b.id
                WHERE a.tenant_id = :t AND a.deleted_at IS NULL AND b.depth < :max
            )
            SELECT root, count(*) FILTER (WHERE depth = 1), count(*) FROM below GROUP BY root
            """
        ),
        {"t": tenant_id, "ids": ids, "max": MAX_TREE_DEPTH},
    )
    return {r[0]: (r[1], r[2]) for r in rows}


async def direct_counts(session: AsyncSession, tenant_id: str, ids: list[str]) -> dict[str, int]:
    if not ids:
        return {}
    rows = await session.execute(
        select(models.Account.parent_id, func.count())
        .where(
            models.Account.tenant_id == tenant_id,
            models.Account.parent_id.in_(ids),
            models.Account.deleted_at.is_(None),
        )
        .group_by(models.Account.parent_id)
    )
    return {r[0]: r[1] for r in rows}


async def ancestor_ids(session: AsyncSession, tenant_id: str, account_id: str) -> list[str]:
    """The account's parent, grandparent, ... up to the top of its group (nearest first)."""
    rows = await session.execute(
        text(
            """
            WITH RECURSIVE up(id, parent_id, depth) AS (
                SELECT id, parent_id, 0 FROM accounts WHERE tenant_id = :t AND id = :id
              UNION ALL
                SELECT a.id, a.parent_id, u.depth + 1 FROM accounts a JOIN up u ON a.id = u.parent_id
                WHERE a.tenant_id = :t AND u.depth < :max
            )
            SELECT id FROM up WHERE depth > 0 ORDER BY depth
            """
        ),
        {"t": tenant_id, "id": account_id, "max": MAX_TREE_DEPTH + 1},
    )
    return [r[0] for r in rows]


def fields_for(defs: dict[str, models.CustomField]) -> q.Fields:
    return q.Fields(models.Account, FIELDS, defs)


def base_query(decision: Decision, *, deleted: bool) -> Any:
    principal = caller()
    stmt = (
        select(models.Account)
        .options(*SKIP_SEARCH_COLUMNS)
        .where(models.Account.tenant_id == principal.tenant_id)
    )
    stmt = stmt.where(
        models.Account.deleted_at.is_not(None) if deleted else models.Account.deleted_at.is_(None)
    )
    return stmt.where(visible(decision, models.Account))


def filtered(
    decision: Decision,
    defs: dict[str, models.CustomField],
    *,
    query: str,
    filters: list[str],
    deleted: bool,
) -> Any:
    stmt = base_query(decision, deleted=deleted)
    for clause in q.parse_filters(fields_for(defs), filters, decision):
        stmt = stmt.where(clause)
    if query.strip():
        stmt = stmt.where(keyword(decision, defs, models.Account, query))
    return stmt


def _subsidiary_count_column() -> Any:
    """Direct live subsidiaries of each listed account, in the list's own statement (one index probe each)."""
    child = aliased(models.Account)
    return (
        select(func.count())
        .where(
            child.tenant_id == models.Account.tenant_id,
            child.parent_id == models.Account.id,
            child.deleted_at.is_(None),
        )
        .correlate(models.Account)
        .scalar_subquery()
        .label("subsidiary_count")
    )


# Lists never need the search columns (they only serve WHERE clauses): not fetched.
SKIP_SEARCH_COLUMNS = [
    defer(models.Account.search_name),
    defer(models.Account.search_grams),
    defer(models.Account.search_extra),
]
SUBSIDIARY_COUNT = _subsidiary_count_column()  # built once: constructing it costs more than running it


async def list_accounts(
    session: AsyncSession,
    decision: Decision,
    defs: dict[str, models.CustomField],
    *,
    page: Any,
    query: str = "",
    filters: list[str] | None = None,
    sort: str = "",
    deleted: bool = False,
) -> tuple[list[Any], str]:
    """A page of account rows (columns by name, with `subsidiary_count`) and the next page's cursor."""
    stmt = filtered(decision, defs, query=query, filters=list(filters or []), deleted=deleted)
    ordering = q.parse_sort(fields_for(defs), sort, decision, default="-deleted_at" if deleted else "-id")
    paging = q.page_of(page, ordering)
    if query.strip():
        await search.prepare(session, query)
    return await q.fetch_page(session, stmt, ordering, paging, extra=[SUBSIDIARY_COUNT])


async def count_accounts(
    session: AsyncSession,
    decision: Decision,
    defs: dict[str, models.CustomField],
    *,
    query: str = "",
    filters: list[str] | None = None,
    deleted: bool = False,
) -> tuple[int, bool]:
    stmt = filtered(decision, defs, query=query, filters=list(filters or []), deleted=deleted)
    return await q.capped_count(session, stmt)


# ---------------------------------------------------------------- updates


async def _record_stage(uow: UnitOfWork, row: models.Account, before: str) -> None:
    if row.lifecycle_stage == before:
        return
    principal = caller()
    uow.session.add(
        models.AccountStageChange(
            tenant_id=row.tenant_id,
            account_id=row.id,
            from_stage=before,
            to_stage=row.lifecycle_stage,
            changed_by=principal.actor_id,
        )
    )
    uow.emit(
        events_pb2.AccountStageChanged(
            account_id=row.id, from_stage=STAGES.number(before), to_stage=STAGES.number(row.lifecycle_stage)
        ),
        aggregate_type="account",
        aggregate_id=row.id,
        aggregate_version=row.version,
        action="stage_changed",
        before={"lifecycle_stage": before},
        after={"lifecycle_stage": row.lifecycle_stage},
    )


def custom_paths(paths: list[str], src: pb.Account) -> dict[str, Any]:
    """The custom field values an update sets: the whole `custom_fields` object (merged key by key; a null
    removes a key) or single `custom_fields.<key>` paths."""
    values = json_format.MessageToDict(src.custom_fields) if src.custom_fields.fields else {}
    out: dict[str, Any] = {}
    for path in paths:
        if path == "custom_fields":
            out.update(values)
        elif path.startswith("custom_fields."):
            key = path.split(".", 1)[1]
            out[key] = values.get(key)
    return out


def writable_paths(paths: list[str], src: pb.Account) -> list[str]:
    """The mask as field names permissions are checked against (custom fields key by key)."""
    out = [p for p in paths if not p.startswith("custom_fields")]
    custom = custom_paths(paths, src)
    out.extend(f"custom_fields.{k}" for k in custom)
    if any(p == "custom_fields" for p in paths):
        out.append("custom_fields")
    return out


def check_mask(paths: list[str]) -> None:
    unknown = [p for p in paths if p.split(".", 1)[0] not in WRITABLE]
    if unknown:
        raise InvalidArgument(
            f"these fields cannot be changed here: {', '.join(unknown)}",
            field_errors=[FieldError(p, "cannot be changed here") for p in unknown],
        )
    if not paths:
        raise InvalidArgument.for_field("update_mask", "names no field to change")


async def apply_update(
    uow: UnitOfWork,
    row: models.Account,
    src: pb.Account,
    paths: list[str],
    *,
    defs: dict[str, models.CustomField],
    department_of: DepartmentOf,
    read: Decision | None = None,
) -> models.Account:
    """Change the fields in `paths` of a loaded (locked) row; emits the events when anything changed."""
    check_mask(paths)
    before = snapshot(row)
    stage_before = row.lifecycle_stage
    owner_before = row.owner_id
    parent_before = row.parent_id or ""
    team_before = list(row.team_member_ids or [])
    check = Check()
    for path in dict.fromkeys(p for p in paths if not p.startswith("custom_fields")):
        set_field(check, row, path, src)
        if path == "name":
            check.required("name", row.name)
    custom = custom_paths(paths, src)
    if custom:
        row.custom_fields = cf.merge_values(check, defs, row.custom_fields or {}, custom, creating=False)
    if "owner_id" in paths:
        if not row.owner_id:
            check.fail("owner_id", "is required")
        else:
            await _owner_change(check, row, department_of)
    if "parent_id" in paths:
        await _check_parent(uow.session, check, row)
    if "team_member_ids" in paths:
        await _team(check, row, department_of, team_before)
    if custom and not check.errors:
        await cf.check_unique(
            uow.session, check, defs, models.Account, row.custom_fields, set(custom), row.id
        )
    check.done()
    refresh_derived(row, defs)
    if set(paths) & set(DEDUP_FIELDS):
        await dedup.enforce(uow, "account", row, mode="update", read=read)  # 409 when blocked
    await _apply_tier(uow.session, row)
    after = snapshot(row)
    if after == before:
        return row
    row.version += 1
    row.updated_at = utcnow()
    await uow.session.flush()
    await uow.session.refresh(row)
    uow.emit(
        events_pb2.AccountUpdated(account=account_pb(row)),
        aggregate_type="account",
        aggregate_id=row.id,
        aggregate_version=row.version,
        action="updated",
        before=before,
        after=after,
    )
    await _record_stage(uow, row, stage_before)
    if row.owner_id != owner_before:
        uow.emit(
            events_pb2.AccountOwnerChanged(
                account_id=row.id, from_owner_id=owner_before, to_owner_id=row.owner_id
            ),
            aggregate_type="account",
            aggregate_id=row.id,
            aggregate_version=row.version,
            action="owner_changed",
            before={"owner_id": owner_before},
            after={"owner_id": row.owner_id},
        )
    if (row.parent_id or "") != parent_before:
        uow.emit(
            events_pb2.AccountParentChanged(
                account_id=row.id, from_parent_id=parent_before, to_parent_id=row.parent_id or ""
            ),
            aggregate_type="account",
            aggregate_id=row.id,
            aggregate_version=row.version,
            action="parent_changed",
            before={"parent_id": parent_before},
            after={"parent_id": row.parent_id or ""},
        )
    return row


async def _owner_change(check: Check, row: models.Account, department_of: DepartmentOf) -> None:
    principal = caller()
    if check.errors and "owner_id" in {e.field for e in check.errors}:
        return
    if row.owner_id == principal.actor_id:
        row.department_id = principal.department_id
        return
    department = await department_of(row.owner_id)
    if department is None:
        check.fail("owner_id", "no such user")
    else:
        row.department_id = department


async def update(
    uow: UnitOfWork,
    request: pb.UpdateAccountRequest,
    decision: Decision,
    *,
    defs: dict[str, models.CustomField],
    department_of: DepartmentOf,
    read: Decision | None = None,
) -> models.Account:
    paths = list(request.update_mask.paths)
    check_mask(paths)
    row = await get_owned(uow.session, models.Account, "account", request.id, decision=decision, lock=True)
    expect_version(row, request.expected_version)
    return await apply_update(
        uow, row, request.account, paths, defs=defs, department_of=department_of, read=read
    )


async def delete(
    uow: UnitOfWork, account_id: str, expected_version: int, decision: Decision
) -> models.Account:
    """To the recycle bin. An account that still heads live subsidiaries stays: move or delete them first."""
    row = await get_owned(uow.session, models.Account, "account", account_id, decision=decision, lock=True)
    expect_version(row, expected_version)
    child = await uow.session.scalar(
        select(models.Account.id)
        .where(
            models.Account.tenant_id == row.tenant_id,
            models.Account.parent_id == row.id,
            models.Account.deleted_at.is_(None),
        )
        .limit(1)
    )
    if child:
        raise Conflict(
            "this account heads subsidiaries: move or delete them first", reason="account_has_subsidiaries"
        )
    await soft_delete(
        uow,
        row,
        before=snapshot(row),
        event_of=lambda r: events_pb2.AccountDeleted(account=account_pb(r)),
        aggregate_type="account",
        record_deleter=True,
    )
    return row


async def restore(
    uow: UnitOfWork, account_id: str, decision: Decision, *, defs: dict[str, models.CustomField]
) -> models.Account:
    row = await get_owned(
        uow.session, models.Account, "account", account_id, decision=decision, lock=True, deleted=True
    )
    if row.merged_into_id:
        raise Conflict(
            f"this account was merged into {row.merged_into_id}: undo the merge instead",
            reason="account_merged",
        )
    if row.parent_id:
        parent_live = await uow.session.scalar(
            select(models.Account.id).where(
                models.Account.id == row.parent_id,
                models.Account.tenant_id == row.tenant_id,
                models.Account.deleted_at.is_(None),
            )
        )
        if not parent_live:
            row.parent_id = None
    check = Check()
    await cf.check_unique(
        uow.session,
        check,
        defs,
        models.Account,
        row.custom_fields or {},
        set(row.custom_fields or {}),
        row.id,
    )
    check.done()
    row.deleted_at = None
    row.deleted_by = None
    row.version += 1
    await uow.session.flush()
    await uow.session.refresh(row)
    uow.emit(
        events_pb2.AccountRestored(account=account_pb(row)),
        aggregate_type="account",
        aggregate_id=row.id,
        aggregate_version=row.version,
        action="restored",
        after=snapshot(row),
    )
    return row


# ---------------------------------------------------------------- lifecycle history and the group tree


async def stage_changes(
    session: AsyncSession, account_id: str, decision: Decision, page: Any
) -> tuple[list[models.AccountStageChange], str]:
    from crm_kit.paging import Page, SortKey

    await get(session, account_id, decision, deleted=None)
    keys = [SortKey(models.AccountStageChange.id, descending=True)]
    paging = Page.of(page, 1)
    stmt = select(models.AccountStageChange).where(
        models.AccountStageChange.tenant_id == caller().tenant_id,
        models.AccountStageChange.account_id == account_id,
    )
    rows = (await session.scalars(paging.apply(stmt, keys))).all()
    return paging.split(rows, lambda r: [r.id])


def stage_change_pb(c: models.AccountStageChange) -> pb.AccountStageChange:
    return pb.AccountStageChange(
        id=c.id,
        account_id=c.account_id,
        from_stage=STAGES.number(c.from_stage),
        to_stage=STAGES.number(c.to_stage),
        changed_by=c.changed_by,
        changed_at=ts(c.changed_at),
    )


async def tree(
    session: AsyncSession, account_id: str, decision: Decision, max_depth: int
) -> tuple[str, list[pb.TreeNode]]:
    """The whole group of an account, from its top, depth first. Accounts outside the caller's data scope
    appear by id only (no name), so the shape of the group stays readable without revealing records."""
    principal = caller()
    row = await get(session, account_id, decision)
    if not 0 <= max_depth <= MAX_TREE_DEPTH:
        raise InvalidArgument.for_field("max_depth", f"must be 0 to {MAX_TREE_DEPTH}")
    ancestors = await ancestor_ids(session, principal.tenant_id, row.id)
    root_id = ancestors[-1] if ancestors else row.id
    depth_limit = max_depth or MAX_TREE_DEPTH
    rows = (
        await session.execute(
            text(
                """
                WITH RECURSIVE t(id, parent_id, depth, path) AS (
                    SELECT id, parent_id, 0, ARRAY[name::text, id::text] FROM accounts
                    WHERE tenant_id = :t AND id = :root AND deleted_at IS NULL
                  UNION ALL
                    SELECT a.id, a.parent_id, t.depth + 1, t.path || ARRAY[a.name::text, a.id::text]
                    FROM accounts a JOIN t ON a.parent_id = t.id
                    WHERE a.tenant_id = :t AND a.deleted_at IS NULL AND t.depth < :max
                )
                SELECT t.id, t.parent_id, t.depth FROM t ORDER BY t.path LIMIT 10000
                """
            ),
            {"t": principal.tenant_id, "root": root_id, "max": depth_limit},
        )
    ).all()
    ids = [r[0] for r in rows]
    seen = (
        {
            a.id: a
            for a in (
                await session.scalars(
                    select(models.Account).where(
                        models.Account.tenant_id == principal.tenant_id,
                        models.Account.id.in_(ids),
                        visible(decision, models.Account),
                    )
                )
            ).all()
        }
        if ids
        else {}
    )
    counts = await rollups(session, principal.tenant_id, ids)
    name_hidden = "name" in decision.hidden
    nodes = []
    for node_id, parent_id, depth in rows:
        a = seen.get(node_id)
        direct, total = counts.get(node_id, (0, 0))
        nodes.append(
            pb.TreeNode(
                id=node_id,
                name=a.name if a is not None and not name_hidden else "",
                parent_id=parent_id or "",
                depth=depth,
                subsidiary_count=direct,
                descendant_count=total,
            )
        )
    return root_id, nodes


# ---------------------------------------------------------------- tier rules


async def tier_rules(session: AsyncSession, tenant_id: str) -> tuple[dict[str, Any], int]:
    row = await session.get(models.TenantSettings, tenant_id)
    return (row.tier_rules or {}, row.version) if row else ({}, 0)


def tier_rules_pb(rules: dict[str, Any], version: int) -> pb.TierRules:
    return pb.TierRules(
        rules=[pb.TierRule(tier=r["tier"], filter=r.get("filter", [])) for r in rules.get("rules", [])],
        default_tier=rules.get("default_tier", ""),
        version=version,
    )


_ALL = Decision("account", "read", True, scope=4)


async def _apply_tier(session: AsyncSession, row: models.Account) -> None:
    """The first tier rule whose filters hold for the (flushed) row gives its tier, unless a person set it.
    Rules are list filters, evaluated by PostgreSQL on the row itself: one meaning of a filter everywhere."""
    if row.tier_manual:
        return
    rules, _ = await tier_rules(session, row.tenant_id)
    if not rules.get("rules") and not rules.get("default_tier"):
        return
    await session.flush()
    tier = rules.get("default_tier", "")
    fields = q.Fields(models.Account, FIELDS, {})
    for rule in rules.get("rules", []):
        clauses = q.parse_filters(fields, rule.get("filter", []), _ALL)
        if await session.scalar(select(literal(1)).where(models.Account.id == row.id, *clauses)):
            tier = rule["tier"]
            break
    row.tier = tier


def parse_rules(rules: list[pb.TierRule], default_tier: str) -> dict[str, Any]:
    check = Check()
    out = []
    fields = q.Fields(models.Account, FIELDS, {})
    for i, r in enumerate(rules):
        if not r.tier.strip() or len(r.tier) > 50:
            check.fail(f"rules[{i}].tier", "must be 1 to 50 characters")
        try:
            q.parse_filters(fields, list(r.filter), _ALL)
        except InvalidArgument as exc:
            check.fail(f"rules[{i}].filter", exc.message)
        out.append({"tier": r.tier.strip(), "filter": list(r.filter)})
    if len(rules) > 20:
        check.fail("rules", "at most 20 rules")
    check.length("default_tier", default_tier, max_len=50)
    check.done()
    return {"rules": out, "default_tier": default_tier.strip()}


async def set_tier_rules(
    uow: UnitOfWork, rules: list[pb.TierRule], default_tier: str, *, reapply: bool
) -> tuple[dict[str, Any], int, int]:
    principal = caller()
    parsed = parse_rules(rules, default_tier)
    row = await uow.session.get(models.TenantSettings, principal.tenant_id, with_for_update=True)
    before = dict(row.tier_rules or {}) if row else {}
    if row is None:
        row = models.TenantSettings(tenant_id=principal.tenant_id, tier_rules=parsed, version=1)
        uow.session.add(row)
    else:
        row.tier_rules = parsed
        row.version += 1
    await uow.session.flush()
    changed = 0
    if reapply:
        changed = await reapply_tiers(uow, parsed)
    uow.emit(
        events_pb2.TierRulesUpdated(tier_rules=tier_rules_pb(parsed, row.version)),
        aggregate_type="tier_rules",
        aggregate_id=principal.tenant_id,
        aggregate_version=row.version,
        action="updated",
        before=before,
        after=parsed,
    )
    return parsed, row.version, changed


async def reapply_tiers(uow: UnitOfWork, rules: dict[str, Any]) -> int:
    """Recompute every rule-driven tier in set-based SQL: one UPDATE per rule, the first rule wins."""
    principal = caller()
    fields = q.Fields(models.Account, FIELDS, {})
    A = models.Account
    base = [A.tenant_id == principal.tenant_id, A.deleted_at.is_(None), A.tier_manual.is_(False)]
    decided: list[Any] = []
    changed = 0
    targets = [
        (r["tier"], q.parse_filters(fields, r.get("filter", []), _ALL)) for r in rules.get("rules", [])
    ]
    targets.append((rules.get("default_tier", ""), []))
    for tier, clauses in targets:
        result = await uow.session.execute(
            sql_update(A)
            .where(*base, *clauses, *(not_(d) for d in decided), A.tier != tier)
            .values(tier=tier)
            .execution_options(synchronize_session=False)
        )
        changed += result.rowcount or 0
        decided.append(and_(*clauses) if clauses else literal(True))
    return changed
