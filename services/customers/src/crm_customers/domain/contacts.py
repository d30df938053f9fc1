"""Contacts (people): create, read, list, update, soft delete and restore.

Same shape as accounts (`prepare`/`insert`/`apply_update`/`contact_pb`), so duplicate rules, merge and import
reuse them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import events_pb2
from crm_kit.db import UnitOfWork, utcnow
from crm_kit.errors import FieldError, InvalidArgument
from crm_kit.ids import new_id
from crm_kit.policy import Decision
from crm_kit.validation import Check
from google.protobuf import json_format
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from crm_customers import models
from crm_customers.domain import custom_fields as cf
from crm_customers.domain import dedup, search
from crm_customers.domain import query as q
from crm_customers.domain.accounts import DepartmentOf, _clean_list, _struct, keyword, redact
from crm_customers.domain.common import (
    BUYING_ROLES,
    caller,
    check_hidden,
    expect_version,
    get_owned,
    soft_delete,
    ts,
    visible,
)
from crm_customers.normalize import InvalidValue, normalize_email, normalize_phone, person_name_key

WRITABLE = (
    "name",
    "name_latin",
    "titles",
    "phones",
    "emails",
    "im_handles",
    "birthday",
    "buying_role",
    "consent",
    "account_ids",
    "primary_account_id",
    "owner_id",
    "tags",
    "notes",
    "custom_fields",
)
TEXT_LIMITS = {"name": 200, "name_latin": 200, "notes": 10000}
IM_KINDS = ("wechat", "wecom", "qq", "dingtalk", "feishu", "whatsapp", "telegram", "line", "skype", "other")

# Changing one of these re-checks the duplicate rules.
DEDUP_FIELDS = ("name", "name_latin", "phones", "emails", "account_ids", "primary_account_id")
FIELDS = [
    q.Field("id", "id", models.Contact.id),
    q.Field("name", "text", models.Contact.name, sortable=True),
    q.Field("name_latin", "text", models.Contact.name_latin, sortable=True),
    q.Field("titles", "array", models.Contact.titles),
    q.Field("phones", "array", models.Contact.phones_normalized, normalize=normalize_phone),
    q.Field("emails", "array", models.Contact.emails_normalized, normalize=normalize_email),
    q.Field("birthday", "date", models.Contact.birthday, sortable=True, nullable=True),
    q.Field("buying_role", "enum", models.Contact.buying_role, enum=BUYING_ROLES, sortable=True),
    q.Field("consent.email", "bool", models.Contact.consent_email),
    q.Field("consent.sms", "bool", models.Contact.consent_sms),
    q.Field("consent.phone", "bool", models.Contact.consent_phone),
    q.Field("consent.wechat", "bool", models.Contact.consent_wechat),
    q.Field("account_ids", "array", models.Contact.account_ids),
    q.Field("primary_account_id", "id", models.Contact.primary_account_id, nullable=True),
    q.Field("owner_id", "id", models.Contact.owner_id, sortable=True),
    q.Field("department_id", "id", models.Contact.department_id),
    q.Field("tags", "array", models.Contact.tags),
    q.Field("notes", "text", models.Contact.notes),
    q.Field("created_by", "id", models.Contact.created_by),
    q.Field("created_at", "datetime", models.Contact.created_at, sortable=True),
    q.Field("updated_at", "datetime", models.Contact.updated_at, sortable=True),
    q.Field("deleted_at", "datetime", models.Contact.deleted_at, sortable=True, nullable=True),
]


def contact_pb(c: models.Contact) -> pb.Contact:
    return pb.Contact(
        id=c.id,
        name=c.name,
        name_latin=c.name_latin,
        titles=list(c.titles or []),
        phones=list(c.phones or []),
        emails=list(c.emails or []),
        im_handles=[
            pb.ImHandle(kind=h.get("kind", ""), handle=h.get("handle", "")) for h in c.im_handles or []
        ],
        birthday=c.birthday.isoformat() if c.birthday else "",
        buying_role=BUYING_ROLES.number(c.buying_role),
        consent=pb.Consent(
            email=c.consent_email,
            sms=c.consent_sms,
            phone=c.consent_phone,
            wechat=c.consent_wechat,
            updated_at=ts(c.consent_updated_at),
        ),
        account_ids=list(c.account_ids or []),
        primary_account_id=c.primary_account_id or "",
        owner_id=c.owner_id,
        department_id=c.department_id,
        tags=list(c.tags or []),
        notes=c.notes,
        custom_fields=_struct(c.custom_fields or {}),
        created_by=c.created_by,
        created_at=ts(c.created_at),
        updated_at=ts(c.updated_at),
        deleted_at=ts(c.deleted_at),
        version=c.version,
    )


def snapshot(c: models.Contact) -> dict[str, Any]:
    return {
        "name": c.name,
        "name_latin": c.name_latin,
        "titles": list(c.titles or []),
        "phones": list(c.phones or []),
        "emails": list(c.emails or []),
        "im_handles": list(c.im_handles or []),
        "birthday": c.birthday.isoformat() if c.birthday else "",
        "buying_role": c.buying_role,
        "consent": {
            "email": c.consent_email,
            "sms": c.consent_sms,
            "phone": c.consent_phone,
            "wechat": c.consent_wechat,
        },
        "account_ids": list(c.account_ids or []),
        "primary_account_id": c.primary_account_id or "",
        "owner_id": c.owner_id,
        "department_id": c.department_id,
        "tags": list(c.tags or []),
        "notes": c.notes,
        "custom_fields": dict(c.custom_fields or {}),
    }


def given_fields(src: pb.Contact) -> list[str]:
    out = []
    for name in WRITABLE:
        if name == "custom_fields":
            out.extend(f"custom_fields.{k}" for k in src.custom_fields.fields)
        elif name == "consent":
            if src.HasField("consent"):
                out.append(name)
        else:
            value = getattr(src, name)
            if (hasattr(value, "__len__") and len(value) > 0) or (not hasattr(value, "__len__") and value):
                out.append(name)
    return out


def set_field(check: Check, row: models.Contact, name: str, src: pb.Contact) -> None:
    value = getattr(src, name)
    if name in TEXT_LIMITS:
        value = value.strip()
        check.length(name, value, max_len=TEXT_LIMITS[name])
        setattr(row, name, value)
    elif name == "titles":
        row.titles = _clean_list(check, "titles", value, max_len=100, limit=10)
    elif name == "tags":
        row.tags = _clean_list(check, "tags", value)
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
    elif name == "im_handles":
        handles = []
        for i, h in enumerate(value):
            kind = h.kind.strip().lower() or "other"
            if kind not in IM_KINDS:
                check.fail(f"im_handles[{i}].kind", f"must be one of: {', '.join(IM_KINDS)}")
            if not h.handle.strip() or len(h.handle) > 100:
                check.fail(f"im_handles[{i}].handle", "must be 1 to 100 characters")
            handles.append({"kind": kind, "handle": h.handle.strip()})
        if len(handles) > 20:
            check.fail("im_handles", "at most 20 handles")
        row.im_handles = handles
    elif name == "birthday":
        value = value.strip()
        if not value:
            row.birthday = None
        else:
            try:
                day = dt.date.fromisoformat(value)
                if not dt.date(1900, 1, 1) <= day <= dt.date.today():
                    raise ValueError
                row.birthday = day
            except ValueError:
                check.fail("birthday", 'must be a past date "YYYY-MM-DD"')
    elif name == "buying_role":
        row.buying_role = BUYING_ROLES.name(value)
    elif name == "consent":
        changed = (
            row.consent_email != value.email
            or row.consent_sms != value.sms
            or row.consent_phone != value.phone
            or row.consent_wechat != value.wechat
        )
        row.consent_email, row.consent_sms = value.email, value.sms
        row.consent_phone, row.consent_wechat = value.phone, value.wechat
        if changed:
            row.consent_updated_at = utcnow()
    elif name == "account_ids":
        ids = _clean_list(check, "account_ids", value, max_len=36)
        for i, v in enumerate(ids):
            check.uuid(f"account_ids[{i}]", v)
        row.account_ids = ids
    elif name == "primary_account_id":
        value = value.strip()
        check.uuid("primary_account_id", value)
        row.primary_account_id = value or None
    elif name == "owner_id":
        check.uuid("owner_id", value.strip())
        row.owner_id = value.strip()
    else:  # pragma: no cover
        raise AssertionError(name)


def refresh_derived(row: models.Contact, defs: dict[str, models.CustomField]) -> None:
    row.name_key = person_name_key(row.name)
    row.search_name = search.name_text(row.name, row.name_latin)
    row.search_grams = search.name_grams(row.name, row.name_latin)
    row.search_extra = search.extra_text(
        row.phones_normalized or [],
        row.emails_normalized or [],
        cf.searchable_values(defs, row.custom_fields or {}),
    )


async def _check_accounts(session: AsyncSession, check: Check, row: models.Contact) -> None:
    if row.primary_account_id and row.primary_account_id not in (row.account_ids or []):
        row.account_ids = [*(row.account_ids or []), row.primary_account_id]
    ids = list(row.account_ids or [])
    if not ids or check.errors:
        return
    found = set(
        (
            await session.scalars(
                select(models.Account.id).where(
                    models.Account.tenant_id == row.tenant_id,
                    models.Account.id.in_(ids),
                    models.Account.deleted_at.is_(None),
                )
            )
        ).all()
    )
    for i, account_id in enumerate(ids):
        if account_id not in found:
            check.fail(f"account_ids[{i}]", "no such account")


async def _owner(check: Check, row: models.Contact, department_of: DepartmentOf) -> None:
    principal = caller()
    if not row.owner_id:
        row.owner_id = principal.actor_id
    if row.owner_id == principal.actor_id:
        row.department_id = principal.department_id
        return
    if "owner_id" in {e.field for e in check.errors}:
        return
    department = await department_of(row.owner_id)
    if department is None:
        check.fail("owner_id", "no such user")
    else:
        row.department_id = department


async def prepare(
    session: AsyncSession,
    src: pb.Contact,
    *,
    defs: dict[str, models.CustomField],
    department_of: DepartmentOf,
    check: Check | None = None,
) -> models.Contact:
    principal = caller()
    own_check = check is None
    check = check or Check()
    row = models.Contact(
        id=new_id(),
        tenant_id=principal.tenant_id,
        created_by=principal.actor_id,
        version=1,
        consent_email=False,
        consent_sms=False,
        consent_phone=False,
        consent_wechat=False,
    )
    check.required("name", src.name)
    for name in WRITABLE:
        if name == "custom_fields" or (name == "consent" and not src.HasField("consent")):
            continue
        set_field(check, row, name, src)
    given = json_format.MessageToDict(src.custom_fields) if src.custom_fields.fields else {}
    row.custom_fields = cf.merge_values(check, defs, {}, given, creating=True)
    await _owner(check, row, department_of)
    await _check_accounts(session, check, row)
    if not check.errors:
        await cf.check_unique(session, check, defs, models.Contact, row.custom_fields, set(given), row.id)
    refresh_derived(row, defs)
    if own_check:
        check.done()
    return row


async def insert(uow: UnitOfWork, row: models.Contact) -> models.Contact:
    uow.session.add(row)
    await uow.session.flush()
    await uow.session.refresh(row)
    uow.emit(
        events_pb2.ContactCreated(contact=contact_pb(row)),
        aggregate_type="contact",
        aggregate_id=row.id,
        aggregate_version=1,
        action="created",
        after=snapshot(row),
    )
    return row


async def create(
    uow: UnitOfWork,
    src: pb.Contact,
    *,
    defs: dict[str, models.CustomField],
    department_of: DepartmentOf,
    read: Decision | None = None,
) -> models.Contact:
    """`read`: the caller's read decision, which says what the duplicate candidates may show (see dedup)."""
    row = await prepare(uow.session, src, defs=defs, department_of=department_of)
    await dedup.enforce(uow, "contact", row, mode="create", read=read)  # duplicate rules: 409 when blocked
    return await insert(uow, row)


async def get(
    session: AsyncSession, contact_id: str, decision: Decision, *, deleted: bool | None = False
) -> models.Contact:
    return await get_owned(session, models.Contact, "contact", contact_id, decision=decision, deleted=deleted)


def fields_for(defs: dict[str, models.CustomField]) -> q.Fields:
    return q.Fields(models.Contact, FIELDS, defs)


def filtered(
    decision: Decision,
    defs: dict[str, models.CustomField],
    *,
    query: str,
    filters: list[str],
    deleted: bool,
    account_id: str = "",
) -> Any:
    C = models.Contact
    stmt = select(C).options(defer(C.search_name), defer(C.search_grams), defer(C.search_extra))
    stmt = stmt.where(C.tenant_id == caller().tenant_id)
    stmt = stmt.where(C.deleted_at.is_not(None) if deleted else C.deleted_at.is_(None))
    stmt = stmt.where(visible(decision, C))
    if account_id:
        check_hidden(decision, ["account_ids"])  # the answer would reveal whom the contacts work for
        stmt = stmt.where(C.account_ids.contains([account_id]))
    for clause in q.parse_filters(fields_for(defs), filters, decision):
        stmt = stmt.where(clause)
    if query.strip():
        stmt = stmt.where(keyword(decision, defs, C, query))
    return stmt


async def list_contacts(
    session: AsyncSession,
    decision: Decision,
    defs: dict[str, models.CustomField],
    *,
    page: Any,
    query: str = "",
    filters: list[str] | None = None,
    sort: str = "",
    deleted: bool = False,
    account_id: str = "",
) -> tuple[list[models.Contact], str]:
    stmt = filtered(
        decision, defs, query=query, filters=list(filters or []), deleted=deleted, account_id=account_id
    )
    ordering = q.parse_sort(fields_for(defs), sort, decision, default="-deleted_at" if deleted else "-id")
    paging = q.page_of(page, ordering)
    if query.strip():
        await search.prepare(session, query)
    return await q.fetch_page(session, stmt, ordering, paging)


async def count_contacts(
    session: AsyncSession,
    decision: Decision,
    defs: dict[str, models.CustomField],
    *,
    query: str = "",
    filters: list[str] | None = None,
    deleted: bool = False,
    account_id: str = "",
) -> tuple[int, bool]:
    stmt = filtered(
        decision, defs, query=query, filters=list(filters or []), deleted=deleted, account_id=account_id
    )
    return await q.capped_count(session, stmt)


def custom_paths(paths: list[str], src: pb.Contact) -> dict[str, Any]:
    values = json_format.MessageToDict(src.custom_fields) if src.custom_fields.fields else {}
    out: dict[str, Any] = {}
    for path in paths:
        if path == "custom_fields":
            out.update(values)
        elif path.startswith("custom_fields."):
            key = path.split(".", 1)[1]
            out[key] = values.get(key)
    return out


def writable_paths(paths: list[str], src: pb.Contact) -> list[str]:
    out = [p for p in paths if not p.startswith("custom_fields")]
    out.extend(f"custom_fields.{k}" for k in custom_paths(paths, src))
    if "custom_fields" in paths:
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
    row: models.Contact,
    src: pb.Contact,
    paths: list[str],
    *,
    defs: dict[str, models.CustomField],
    department_of: DepartmentOf,
    read: Decision | None = None,
) -> models.Contact:
    check_mask(paths)
    before = snapshot(row)
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
            await _owner(check, row, department_of)
    if {"account_ids", "primary_account_id"} & set(paths):
        await _check_accounts(uow.session, check, row)
    if custom and not check.errors:
        await cf.check_unique(
            uow.session, check, defs, models.Contact, row.custom_fields, set(custom), row.id
        )
    check.done()
    refresh_derived(row, defs)
    if set(paths) & set(DEDUP_FIELDS):
        await dedup.enforce(uow, "contact", row, mode="update", read=read)  # 409 when blocked
    after = snapshot(row)
    if after == before:
        return row
    row.version += 1
    row.updated_at = utcnow()
    await uow.session.flush()
    await uow.session.refresh(row)
    uow.emit(
        events_pb2.ContactUpdated(contact=contact_pb(row)),
        aggregate_type="contact",
        aggregate_id=row.id,
        aggregate_version=row.version,
        action="updated",
        before=before,
        after=after,
    )
    return row


async def update(
    uow: UnitOfWork,
    request: pb.UpdateContactRequest,
    decision: Decision,
    *,
    defs: dict[str, models.CustomField],
    department_of: DepartmentOf,
    read: Decision | None = None,
) -> models.Contact:
    paths = list(request.update_mask.paths)
    check_mask(paths)
    row = await get_owned(uow.session, models.Contact, "contact", request.id, decision=decision, lock=True)
    expect_version(row, request.expected_version)
    return await apply_update(
        uow, row, request.contact, paths, defs=defs, department_of=department_of, read=read
    )


async def delete(
    uow: UnitOfWork, contact_id: str, expected_version: int, decision: Decision
) -> models.Contact:
    row = await get_owned(uow.session, models.Contact, "contact", contact_id, decision=decision, lock=True)
    expect_version(row, expected_version)
    await soft_delete(
        uow,
        row,
        before=snapshot(row),
        event_of=lambda r: events_pb2.ContactDeleted(contact=contact_pb(r)),
        aggregate_type="contact",
        record_deleter=True,
    )
    return row


async def restore(
    uow: UnitOfWork, contact_id: str, decision: Decision, *, defs: dict[str, models.CustomField]
) -> models.Contact:
    from crm_kit.errors import Conflict

    row = await get_owned(
        uow.session, models.Contact, "contact", contact_id, decision=decision, lock=True, deleted=True
    )
    if row.merged_into_id:
        raise Conflict(
            f"this contact was merged into {row.merged_into_id}: undo the merge instead",
            reason="contact_merged",
        )
    # Links to accounts that are gone now are dropped.
    if row.account_ids:
        live = set(
            (
                await uow.session.scalars(
                    select(models.Account.id).where(
                        models.Account.tenant_id == row.tenant_id,
                        models.Account.id.in_(list(row.account_ids)),
                        models.Account.deleted_at.is_(None),
                    )
                )
            ).all()
        )
        row.account_ids = [a for a in row.account_ids if a in live]
        if row.primary_account_id not in live:
            row.primary_account_id = None
    check = Check()
    await cf.check_unique(
        uow.session,
        check,
        defs,
        models.Contact,
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
        events_pb2.ContactRestored(contact=contact_pb(row)),
        aggregate_type="contact",
        aggregate_id=row.id,
        aggregate_version=row.version,
        action="restored",
        after=snapshot(row),
    )
    return row


__all__ = ["redact"]
