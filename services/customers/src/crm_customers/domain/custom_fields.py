"""Custom fields: a tenant's own fields on accounts and contacts.

Definitions live in `custom_fields`; values live in each record's `custom_fields` JSONB object, by key, in a
canonical JSON form per type (numbers as JSON numbers, currency as a decimal string, dates "YYYY-MM-DD",
datetimes "YYYY-MM-DDTHH:MM:SSZ" in UTC, multi-selects as arrays). Canonical forms make equality a JSONB
containment (`@>`, served by the GIN index) and ranges a cast or a plain text comparison.

Field rules from identity name a custom field `custom_fields.<key>` (hidden or read-only like any field).

The rules of each type live here once: `canonical` checks a value by them, and `value_schema` states them as
JSON Schema for the company's own OpenAPI document (GetCustomFieldSchemas; the gateway only splices the
result in). Both read the same limits (TEXT_MAX, LONG_TEXT_MAX, CURRENCY_DIGITS, ...), and a schema never
allows what `canonical` refuses (it may be stricter, e.g. on surrounding spaces that `canonical` strips):

| type              | value                                      | JSON Schema                                     |
|-------------------|--------------------------------------------|-------------------------------------------------|
| text, long text   | string up to max_length (255 / 10,000)     | string, `maxLength`, `pattern`                  |
| number            | JSON number within min..max                | number, `minimum`, `maximum`                    |
| currency          | decimal string, 16 digits, 4 decimals      | string, format `decimal`, `pattern`             |
| date / datetime   | "YYYY-MM-DD" / RFC 3339 with a zone        | string, format `date` / `date-time`             |
| boolean           | true or false                              | boolean                                         |
| single select     | one option value                           | string, `enum`                                  |
| multi select      | a list of option values                    | array of that enum, unique items                |
| url, email, phone | http(s) URL / e-mail / phone number        | string, format `uri` / `email` / `phone`        |
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlparse

from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import events_pb2
from crm_kit import patterns
from crm_kit.db import UnitOfWork
from crm_kit.errors import AlreadyExists, Conflict, FieldError, InvalidArgument
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.validation import Check
from sqlalchemy import func, select, text
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_customers import models
from crm_customers.domain.common import (
    FIELD_TYPES,
    RECORD_TYPES,
    caller,
    expect_version,
    get_owned,
    soft_delete,
    ts,
)
from crm_customers.normalize import InvalidValue, normalize_email, normalize_phone

KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_FIELDS_PER_OBJECT = 200
TEXT_MAX = 255
LONG_TEXT_MAX = 10000
# Currency values: at most CURRENCY_DIGITS digits before the point and CURRENCY_DECIMALS after it.
CURRENCY_DIGITS = 16
CURRENCY_DECIMALS = 4
CURRENCY_PATTERN = rf"^-?[0-9]{{1,{CURRENCY_DIGITS}}}(\.[0-9]{{1,{CURRENCY_DECIMALS}}})?$"
URL_SCHEMES = ("http", "https")
STRING_TYPES = ("text", "long_text", "url", "email", "phone", "single_select")
# Types whose pattern is matched against the value as given (e-mails and phones are matched once normalised).
PATTERN_AS_GIVEN = ("text", "long_text", "url", "single_select")
STRING_FORMATS = {"url": "uri", "email": "email", "phone": "phone", "date": "date", "datetime": "date-time"}
# What `canonical` takes of these types, as patterns for a schema (a validator may not check `format`): an
# http(s) URL with a host; an e-mail as crm_kit.normalize reads one; an RFC 3339 time with a zone; something
# that starts like a phone number (whether the number exists in its numbering plan only the service can tell).
STRING_PATTERNS = {
    "url": r"^\s*[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+",
    "email": r"^\s*(mailto:)?[^@\s]+@[^@\s]+\.[^@\s]+\s*$",
    "datetime": (
        r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
        r"(\.[0-9]{1,6})?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
    ),
    # Digits and the separators people type, then maybe an extension (转123, ext. 123), as normalize_phone.
    "phone": r"^\s*[+＋(（]?[0-9０-９][0-9０-９ ()（）.\-－]{2,}(\s*(转|分机|[Ee][Xx][Tt]\.?|[Xx]|#)\s*[0-9]{1,6})?\s*$",
}
TEXTLIKE = {"text", "long_text", "single_select", "multi_select", "url", "email", "phone"}
NUMERIC = {"number", "currency"}
MODEL_OF = {"account": models.Account, "contact": models.Contact}
UPDATABLE = (
    "label_zh",
    "label_en",
    "required",
    "unique",
    "searchable",
    "options",
    "pattern",
    "min",
    "max",
    "max_length",
    "help_zh",
    "help_en",
    "position",
)


# ---------------------------------------------------------------- definitions


async def definitions(
    session: AsyncSession, tenant_id: str, record_type: str
) -> dict[str, models.CustomField]:
    rows = await session.scalars(
        select(models.CustomField)
        .where(
            models.CustomField.tenant_id == tenant_id,
            models.CustomField.record_type == record_type,
            models.CustomField.deleted_at.is_(None),
        )
        .order_by(models.CustomField.position, models.CustomField.key)
    )
    return {r.key: r for r in rows}


def custom_field_pb(f: models.CustomField) -> pb.CustomField:
    return pb.CustomField(
        id=f.id,
        record_type=RECORD_TYPES.number(f.record_type),
        key=f.key,
        label_zh=f.label_zh,
        label_en=f.label_en,
        type=FIELD_TYPES.number(f.type),
        required=f.required,
        unique=f.unique,
        searchable=f.searchable,
        options=[pb.SelectOption(**o) for o in f.options or []],
        pattern=f.pattern,
        min=f.min,
        max=f.max,
        max_length=f.max_length,
        help_zh=f.help_zh,
        help_en=f.help_en,
        position=f.position,
        created_at=ts(f.created_at),
        updated_at=ts(f.updated_at),
        version=f.version,
    )


def snapshot(f: models.CustomField) -> dict[str, Any]:
    return {k: getattr(f, k) for k in ("record_type", "key", "type", *UPDATABLE)}


def _check_definition(check: Check, f: models.CustomField) -> None:
    check.required("label_zh", f.label_zh or f.label_en, "a label (label_zh or label_en) is required")
    check.length("label_zh", f.label_zh, max_len=100)
    check.length("label_en", f.label_en, max_len=100)
    check.length("help_zh", f.help_zh, max_len=500)
    check.length("help_en", f.help_en, max_len=500)
    if f.type in ("single_select", "multi_select"):
        values = [o.get("value", "") for o in f.options]
        if not values:
            check.fail("options", "a select field needs at least one option")
        if any(not v or len(v) > 100 for v in values):
            check.fail("options", "every option needs a value of 1 to 100 characters")
        if len(set(values)) != len(values):
            check.fail("options", "option values must be unique")
    elif f.options:
        check.fail("options", "only select fields have options")
    if f.pattern:
        if f.type not in TEXTLIKE:
            check.fail("pattern", "only text-like fields take a pattern")
        try:
            patterns.check(f.pattern)
        except InvalidValue as exc:
            check.fail("pattern", str(exc))
    for bound in ("min", "max"):
        value = getattr(f, bound)
        if not value:
            continue
        if f.type in NUMERIC:
            try:
                Decimal(value)
            except InvalidOperation:
                check.fail(bound, "must be a number")
        elif f.type in ("date", "datetime"):
            if _parse_date(value) is None and _parse_datetime(value) is None:
                check.fail(bound, "must be a date or time like the field's values")
        else:
            check.fail(bound, "only number, currency, date and datetime fields take bounds")
    if f.max_length < 0 or f.max_length > LONG_TEXT_MAX:
        check.fail("max_length", f"must be between 0 and {LONG_TEXT_MAX}")
    if f.unique and f.type in ("long_text", "multi_select", "boolean"):
        check.fail("unique", f"a {f.type} field cannot be unique")
    if f.searchable and f.type not in TEXTLIKE:
        check.fail("searchable", "only text-like fields can be searchable")


def _apply(row: models.CustomField, src: pb.CustomField, paths: list[str]) -> None:
    for path in paths:
        if path == "options":
            row.options = [
                {"value": o.value.strip(), "label_zh": o.label_zh.strip(), "label_en": o.label_en.strip()}
                for o in src.options
            ]
        else:
            value = getattr(src, path)
            setattr(row, path, value.strip() if isinstance(value, str) else value)


async def create(uow: UnitOfWork, src: pb.CustomField) -> models.CustomField:
    principal = caller()
    check = Check()
    record_type = RECORD_TYPES.name(src.record_type)
    field_type = FIELD_TYPES.name(src.type)
    if record_type not in MODEL_OF:
        check.fail("record_type", "must be account or contact")
    if not field_type:
        check.fail("type", "is required")
    if not KEY.match(src.key):
        check.fail("key", "must be 1 to 40 lower-case letters, digits or underscores, starting with a letter")
    row = models.CustomField(
        id=new_id(),
        tenant_id=principal.tenant_id,
        record_type=record_type,
        key=src.key,
        type=field_type,
        version=1,
    )
    _apply(row, src, list(UPDATABLE))
    _check_definition(check, row)
    check.done()
    existing = await definitions(uow.session, principal.tenant_id, record_type)
    if src.key in existing:
        raise AlreadyExists(f"a custom field {src.key} already exists", reason="custom_field_exists")
    if len(existing) >= MAX_FIELDS_PER_OBJECT:
        raise Conflict(f"at most {MAX_FIELDS_PER_OBJECT} custom fields per object", reason="too_many_fields")
    if row.required:
        model = MODEL_OF[record_type]
        if await uow.session.scalar(
            select(model.id)
            .where(model.tenant_id == principal.tenant_id, model.deleted_at.is_(None))
            .limit(1)
        ):
            raise Conflict(
                "a new field cannot be required while records without it exist: create it optional, fill it, "
                "then make it required",
                reason="required_on_existing_records",
            )
    uow.session.add(row)
    await uow.session.flush()
    await uow.session.refresh(row)
    uow.emit(
        events_pb2.CustomFieldCreated(custom_field=custom_field_pb(row)),
        aggregate_type="custom_field",
        aggregate_id=row.id,
        aggregate_version=1,
        action="created",
        after=snapshot(row),
    )
    return row


async def get(session: AsyncSession, field_id: str) -> models.CustomField:
    return await get_owned(session, models.CustomField, "custom_field", field_id)


async def list_fields(
    session: AsyncSession, request: pb.ListCustomFieldsRequest
) -> tuple[list[models.CustomField], str]:
    keys = [SortKey(models.CustomField.position), SortKey(models.CustomField.id)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.CustomField).where(
        models.CustomField.tenant_id == caller().tenant_id, models.CustomField.deleted_at.is_(None)
    )
    if request.record_type:
        stmt = stmt.where(models.CustomField.record_type == RECORD_TYPES.name(request.record_type))
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.position, r.id])


async def update(uow: UnitOfWork, request: pb.UpdateCustomFieldRequest) -> models.CustomField:
    paths = list(request.update_mask.paths)
    unknown = [p for p in paths if p not in UPDATABLE]
    if unknown:
        raise InvalidArgument(
            f"these fields cannot be changed: {', '.join(unknown)} (a field's key and type are fixed)",
            field_errors=[FieldError(p, "cannot be changed") for p in unknown],
        )
    row = await get_owned(uow.session, models.CustomField, "custom_field", request.id, lock=True)
    expect_version(row, request.expected_version)
    before = snapshot(row)
    _apply(row, request.custom_field, paths)
    check = Check()
    _check_definition(check, row)
    check.done()
    after = snapshot(row)
    if after == before:
        return row
    model = MODEL_OF[row.record_type]
    if row.required and not before["required"]:
        missing = await uow.session.scalar(
            select(model.id)
            .where(
                model.tenant_id == row.tenant_id,
                model.deleted_at.is_(None),
                ~model.custom_fields.has_key(row.key),
            )
            .limit(1)
        )
        if missing:
            raise Conflict(
                f"records without {row.key} exist (e.g. {missing}): fill them before making it required",
                reason="required_on_existing_records",
            )
    if row.unique and not before["unique"]:
        dup = await uow.session.scalar(
            select(model.custom_fields[row.key].astext)
            .where(
                model.tenant_id == row.tenant_id,
                model.deleted_at.is_(None),
                model.custom_fields.has_key(row.key),
            )
            .group_by(model.custom_fields[row.key].astext)
            .having(func.count() > 1)
            .limit(1)
        )
        if dup is not None:
            raise Conflict(
                f"records share the value {dup!r}: it cannot be unique yet", reason="values_not_unique"
            )
    row.version += 1
    await uow.session.flush()
    await uow.session.refresh(row)
    uow.emit(
        events_pb2.CustomFieldUpdated(custom_field=custom_field_pb(row)),
        aggregate_type="custom_field",
        aggregate_id=row.id,
        aggregate_version=row.version,
        action="updated",
        before=before,
        after=after,
    )
    return row


async def delete(uow: UnitOfWork, field_id: str, expected_version: int) -> None:
    row = await get_owned(uow.session, models.CustomField, "custom_field", field_id, lock=True)
    expect_version(row, expected_version)
    before = snapshot(row)
    # The values go with the definition (they stay in the records' event history).
    model = MODEL_OF[row.record_type]
    await uow.session.execute(
        sql_update(model)
        .where(model.tenant_id == row.tenant_id, model.custom_fields.has_key(row.key))
        .values(custom_fields=model.custom_fields.op("-")(text(":k")))
        .execution_options(synchronize_session=False),
        {"k": row.key},
    )
    await soft_delete(
        uow,
        row,
        before=before,
        event_of=lambda r: events_pb2.CustomFieldDeleted(custom_field=custom_field_pb(r)),
        aggregate_type="custom_field",
    )


# ---------------------------------------------------------------- values


def _parse_date(value: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        return None


def _parse_datetime(value: str) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def format_datetime(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical(f: models.CustomField, value: Any) -> Any:
    """The stored form of one value, or InvalidValue with a reason a person can read."""
    t = f.type
    if t in STRING_TYPES:
        if not isinstance(value, str):
            raise InvalidValue("must be a string")
        value = value.strip()
        limit = text_limit(f)
        if len(value) > limit:
            raise InvalidValue(f"must be at most {limit} characters")
        if t == "url":
            parsed = urlparse(value)
            if parsed.scheme not in URL_SCHEMES or not parsed.netloc:
                raise InvalidValue("must be an http(s) URL")
        elif t == "email":
            value = normalize_email(value)
        elif t == "phone":
            value = normalize_phone(value)
        elif t == "single_select" and value not in {o["value"] for o in f.options}:
            raise InvalidValue(f"must be one of: {', '.join(o['value'] for o in f.options)}")
        if f.pattern and not patterns.fullmatch(f.pattern, value):
            raise InvalidValue(f"does not match the pattern {f.pattern}")
        return value
    if t == "multi_select":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidValue("must be a list of option values")
        allowed = [o["value"] for o in f.options]
        bad = [v for v in value if v not in allowed]
        if bad:
            raise InvalidValue(f"unknown options {bad}; allowed: {', '.join(allowed)}")
        return [v for v in allowed if v in value]  # option order, no repeats
    if t == "number":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidValue("must be a number")
        number = int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)
        _bounds(f, Decimal(str(number)))
        return number
    if t == "currency":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise InvalidValue('must be a decimal string such as "1250.00"')
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation as exc:
            raise InvalidValue('must be a decimal string such as "1250.00"') from exc
        if (
            not amount.is_finite()
            or amount.as_tuple().exponent < -CURRENCY_DECIMALS  # type: ignore[operator]
            or abs(amount) >= Decimal(10) ** CURRENCY_DIGITS
        ):
            raise InvalidValue(f"must be a finite amount with at most {CURRENCY_DECIMALS} decimals")
        _bounds(f, amount)
        return format(amount, "f")
    if t == "date":
        parsed = _parse_date(value) if isinstance(value, str) else None
        if parsed is None:
            raise InvalidValue('must be a date "YYYY-MM-DD"')
        _bounds_text(f, parsed.isoformat())
        return parsed.isoformat()
    if t == "datetime":
        moment = _parse_datetime(value) if isinstance(value, str) else None
        if moment is None:
            raise InvalidValue('must be an RFC 3339 time with a zone, e.g. "2025-01-31T09:30:00Z"')
        out = format_datetime(moment)
        _bounds_text(f, out)
        return out
    if t == "boolean":
        if not isinstance(value, bool):
            raise InvalidValue("must be true or false")
        return value
    raise InvalidValue("has an unknown type")


def text_limit(f: models.CustomField) -> int:
    """The most characters a value of a string type may have."""
    return f.max_length or (LONG_TEXT_MAX if f.type == "long_text" else TEXT_MAX)


def _bounds(f: models.CustomField, amount: Decimal) -> None:
    if f.min and amount < Decimal(f.min):
        raise InvalidValue(f"must be at least {f.min}")
    if f.max and amount > Decimal(f.max):
        raise InvalidValue(f"must be at most {f.max}")


def _bounds_text(f: models.CustomField, value: str) -> None:
    if f.min and value < f.min:
        raise InvalidValue(f"must not be before {f.min}")
    if f.max and value > f.max:
        raise InvalidValue(f"must not be after {f.max}")


def merge_values(
    check: Check,
    defs: dict[str, models.CustomField],
    current: dict[str, Any],
    given: dict[str, Any],
    *,
    creating: bool,
) -> dict[str, Any]:
    """The record's custom fields after applying `given` (a null removes a key); every problem goes to
    `check` as `custom_fields.<key>`."""
    result = dict(current)
    for key, value in given.items():
        field = f"custom_fields.{key}"
        definition = defs.get(key)
        if definition is None:
            check.fail(field, "no such custom field")
            continue
        if value is None or value == "" or value == []:
            result.pop(key, None)
            continue
        try:
            result[key] = canonical(definition, value)
        except InvalidValue as exc:
            check.fail(field, str(exc))
    for key, definition in defs.items():
        if definition.required and key not in result and (creating or key in given):
            check.fail(f"custom_fields.{key}", "is required")
    return result


async def check_unique(
    session: AsyncSession,
    check: Check,
    defs: dict[str, models.CustomField],
    model: Any,
    values: dict[str, Any],
    changed: set[str],
    record_id: str,
) -> None:
    """No other live record of the tenant holds the same value of a unique field. Serialised per field with a
    transaction-scoped advisory lock, so two writers cannot both pass the check."""
    tenant_id = caller().tenant_id
    for key in sorted(changed):
        definition = defs.get(key)
        if definition is None or not definition.unique or key not in values:
            continue
        await session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"cf-unique:{tenant_id}:{definition.record_type}:{key}"},
        )
        other = await session.scalar(
            select(model.id)
            .where(
                model.tenant_id == tenant_id,
                model.deleted_at.is_(None),
                model.id != record_id,
                model.custom_fields.contains({key: values[key]}),
            )
            .limit(1)
        )
        if other:
            check.fail(f"custom_fields.{key}", f"must be unique: another record ({other}) has this value")


def searchable_values(defs: dict[str, models.CustomField], values: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, definition in defs.items():
        if definition.searchable and key in values:
            v = values[key]
            out.extend(v if isinstance(v, list) else [str(v)])
    return out


# ---------------------------------------------------------------- JSON Schema (GetCustomFieldSchemas)

OUTPUT, CREATE, UPDATE = "output", "create", "update"


def _number(text: str) -> int | float | None:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    return int(value) if value == value.to_integral_value() else float(value)


def value_schema(f: models.CustomField) -> dict[str, Any]:
    """The JSON Schema of one custom field's value: what `canonical` takes, stated with the same limits."""
    t = f.type
    options = [o["value"] for o in f.options or []]
    out: dict[str, Any]
    if t == "single_select":
        out = {"type": "string", "enum": options}
    elif t == "multi_select":
        out = {"type": "array", "items": {"type": "string", "enum": options}, "uniqueItems": True}
    elif t in STRING_TYPES:
        out = {"type": "string", "maxLength": text_limit(f)}
    elif t == "number":
        out = {"type": "number"}
        for key, bound in (("minimum", f.min), ("maximum", f.max)):
            if bound and (n := _number(bound)) is not None:
                out[key] = n
    elif t == "currency":
        out = {"type": "string", "format": "decimal", "pattern": CURRENCY_PATTERN}
    elif t in ("date", "datetime"):
        out = {"type": "string"}
    elif t == "boolean":
        out = {"type": "boolean"}
    else:  # a type this code does not know: `canonical` refuses every value
        out = {"not": {}}
    if t in STRING_FORMATS:
        out["format"] = STRING_FORMATS[t]
    if t in STRING_PATTERNS:
        out["pattern"] = STRING_PATTERNS[t]
    if t in (
        "currency",
        "date",
        "datetime",
    ):  # bounds in the values' own form (decimal strings, dates, times)
        for key, bound in (("x-minimum", f.min), ("x-maximum", f.max)):
            if bound:
                out[key] = bound
    notes = []
    if f.pattern and t in PATTERN_AS_GIVEN:
        whole = f"^(?:{f.pattern})$"  # `canonical` matches the whole value
        if "pattern" in out:  # both must hold
            out["allOf"] = [{"pattern": out.pop("pattern")}, {"pattern": whole}]
        else:
            out["pattern"] = whole
    elif f.pattern and t in STRING_TYPES:
        notes.append(
            f"Matches the pattern {f.pattern} once normalised ({'E.164' if t == 'phone' else 'lower case'})."
        )
    out["title"] = f.label_en or f.label_zh or f.key
    notes = [n for n in (f.label_zh, f.help_zh, f.help_en) if n and n != out["title"]] + notes
    if notes:
        out["description"] = " · ".join(notes)
    out["x-label-zh"], out["x-label-en"] = f.label_zh, f.label_en
    return out


def custom_fields_schema(defs: list[models.CustomField], kind: str) -> dict[str, Any]:
    """The JSON Schema of a record's `custom_fields` object: in answers (OUTPUT), in a create body (CREATE: the
    required fields required, unknown keys refused) or in a PATCH body (UPDATE: any field, `null` removes its
    value, unknown keys refused), as `merge_values` takes them. `defs` in display order."""
    properties: dict[str, Any] = {}
    for d in defs:
        value = value_schema(d)
        properties[d.key] = {"anyOf": [value, {"type": "null"}]} if kind == UPDATE else value
    out: dict[str, Any] = {
        "type": "object",
        "title": "Custom Fields",
        "description": "The company's custom fields (GET /api/v1/custom-fields describes them).",
        "properties": properties,
    }
    if kind != OUTPUT:
        out["additionalProperties"] = False
    required = sorted(d.key for d in defs if d.required)
    if kind == CREATE and required:
        out["required"] = required
    return out


async def schemas(session: AsyncSession, tenant_id: str) -> list[pb.CustomFieldSchema]:
    """GetCustomFieldSchemas: accounts' and contacts' `custom_fields` schemas, each as JSON text."""
    out = []
    for record_type in MODEL_OF:
        defs = sorted(
            (await definitions(session, tenant_id, record_type)).values(), key=lambda d: (d.position, d.id)
        )
        texts = {
            kind: json.dumps(custom_fields_schema(defs, kind), ensure_ascii=False, separators=(",", ":"))
            for kind in (OUTPUT, CREATE, UPDATE)
        }
        out.append(pb.CustomFieldSchema(record_type=RECORD_TYPES.number(record_type), **texts))
    return out
