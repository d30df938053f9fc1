"""Lists over accounts and contacts: filter expressions, sorts and keyset pages on any field, custom fields
included.

- A filter is `field:op:value`; all filters must hold. Fields are the record's built-in fields and
  `custom_fields.<key>`. Ops: eq, ne, lt, lte, gt, gte, in (values separated by `|`), contains, prefix,
  exists, empty. Which ops a field takes follows from its type.
- A sort is `field,-other` (`-` descending); the id always breaks ties, in the direction of the last key, so
  a single-key sort pages with a row comparison `(key, id) > (:k, :id)` that the (tenant, key, id) indexes
  answer directly: page 10,000 costs what page 1 costs.
- NULLs sort as the largest value (PostgreSQL's default and that of its indexes), both ways.
- Filtering or sorting on a field hidden from the caller is refused: the answer would reveal its values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from types import SimpleNamespace
from typing import Any

from crm_kit import paging
from crm_kit.errors import InvalidArgument
from crm_kit.paging import clamp_limit
from crm_kit.policy import Decision
from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Numeric,
    String,
    and_,
    cast,
    false,
    func,
    literal,
    or_,
    select,
    tuple_,
)

from crm_customers.domain.common import EnumNames, check_hidden
from crm_customers.normalize import InvalidValue, normalize_email, normalize_phone

OPS = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "contains", "prefix", "exists", "empty")
MAX_FILTERS = 20
MAX_SORT_KEYS = 3
COUNT_CAP = 10000


@dataclass(frozen=True)
class Field:
    """A field a list can filter or sort on."""

    name: str
    # text, int, decimal, enum, bool, date, datetime, array, id
    kind: str
    column: Any
    enum: EnumNames | None = None
    sortable: bool = False
    nullable: bool = False
    # Array fields: filter values are normalised like the stored column (phones → E.164).
    normalize: Callable[[str], str] | None = None
    # For custom fields: the stored JSON form of a filter value.
    custom_key: str = ""
    custom_type: str = ""
    # For custom fields: the JSONB column holding them.
    column_base: Any = None


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")


def _fail(expr: str, message: str) -> InvalidArgument:
    return InvalidArgument.for_field("filter", f"{expr}: {message}")


def _scalar(f: Field, raw: str, expr: str) -> Any:
    """A filter value as the column's Python type."""
    try:
        if f.kind == "int":
            return int(raw)
        if f.kind == "decimal":
            value = Decimal(raw)
            if not value.is_finite():
                raise InvalidOperation
            return value
        if f.kind == "date":
            return dt.date.fromisoformat(raw)
        if f.kind == "datetime":
            moment = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
            return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        if f.kind == "bool":
            if raw.lower() not in ("true", "false"):
                raise ValueError
            return raw.lower() == "true"
        if f.kind == "enum":
            assert f.enum is not None
            parsed = f.enum.parse(raw)
            if parsed is None:
                raise _fail(expr, f"must be one of: {', '.join(f.enum.names)}")
            return parsed
        if f.normalize is not None:
            return f.normalize(raw)
    except (ValueError, InvalidOperation, InvalidValue) as exc:
        raise _fail(expr, f"{raw!r} is not a valid {f.kind} value") from exc
    return raw


def _custom_json(f: Field, raw: str, expr: str) -> Any:
    """A filter value in the stored JSON form of a custom field (for `@>` containment)."""
    t = f.custom_type
    try:
        if t == "number":
            number = Decimal(raw)
            return int(number) if number == number.to_integral_value() else float(number)
        if t == "currency":
            return format(Decimal(raw), "f")
        if t == "boolean":
            if raw.lower() not in ("true", "false"):
                raise ValueError
            return raw.lower() == "true"
        if t == "email":
            return normalize_email(raw)
        if t == "phone":
            return normalize_phone(raw)
        if t == "datetime":
            from crm_customers.domain.custom_fields import _parse_datetime, format_datetime

            moment = _parse_datetime(raw)
            if moment is None:
                raise ValueError
            return format_datetime(moment)
    except (ValueError, InvalidOperation, InvalidValue) as exc:
        raise _fail(expr, f"{raw!r} is not a valid {t} value") from exc
    return raw


def _condition(f: Field, op: str, raw: str, expr: str) -> Any:
    col = f.column
    if op in ("exists", "empty"):
        if f.kind == "array":
            present = func.cardinality(col) > 0
        elif f.custom_key:
            present = f.column_base.has_key(f.custom_key)
        elif f.nullable:
            present = col.is_not(None)
        elif f.kind == "bool":
            raise _fail(expr, "a yes/no field is always set")
        else:
            present = col != ""
        return present if op == "exists" else ~present
    if not raw and op != "eq":
        raise _fail(expr, "needs a value")
    values = raw.split("|") if op == "in" else [raw]
    if op == "in" and len(values) > 100:
        raise _fail(expr, "at most 100 values")

    if f.custom_key:
        base = f.column_base
        if op in ("eq", "in", "ne") or (op == "contains" and f.custom_type == "multi_select"):
            wrap = (lambda v: [v]) if f.custom_type == "multi_select" else (lambda v: v)
            either = or_(*(base.contains({f.custom_key: wrap(_custom_json(f, v, expr))}) for v in values))
            return ~either if op == "ne" else either
        if op in ("contains", "prefix"):
            if f.custom_type not in ("text", "long_text", "url", "email", "phone", "single_select"):
                raise _fail(expr, f"{op} needs a text field")
            like = f"%{_escape_like(raw)}%" if op == "contains" else f"{_escape_like(raw)}%"
            return col.ilike(like)
        if f.custom_type in ("number", "currency"):
            try:
                bound = Decimal(raw)
            except InvalidOperation as exc:
                raise _fail(expr, f"{raw!r} is not a number") from exc
            return _compare(col, op, cast(literal(str(bound)), Numeric), expr)
        if f.custom_type in ("date", "datetime", "text", "single_select"):
            return _compare(col, op, _custom_json(f, raw, expr), expr)
        raise _fail(expr, f"{op} does not apply to a {f.custom_type} field")

    if f.kind == "array":
        if op in ("eq", "contains"):
            return col.contains([_scalar(f, raw, expr)])
        if op == "in":
            return col.overlap([_scalar(f, v, expr) for v in values])
        if op == "ne":
            return ~col.contains([_scalar(f, raw, expr)])
        raise _fail(expr, f"{op} does not apply to a list field")
    if op == "eq":
        if f.nullable and raw == "":
            return col.is_(None)
        return col == _scalar(f, raw, expr)
    if op == "ne":
        return (
            or_(col != _scalar(f, raw, expr), col.is_(None)) if f.nullable else col != _scalar(f, raw, expr)
        )
    if op == "in":
        return col.in_([_scalar(f, v, expr) for v in values])
    if op in ("contains", "prefix"):
        if f.kind != "text":
            raise _fail(expr, f"{op} needs a text field")
        like = f"%{_escape_like(raw)}%" if op == "contains" else f"{_escape_like(raw)}%"
        return col.ilike(like)
    if f.kind in ("text", "enum", "bool", "id"):
        if f.kind != "text":
            raise _fail(expr, f"{op} does not apply to this field")
    return _compare(col, op, _scalar(f, raw, expr), expr)


def _compare(col: Any, op: str, value: Any, expr: str) -> Any:
    if op == "lt":
        return col < value
    if op == "lte":
        return col <= value
    if op == "gt":
        return col > value
    if op == "gte":
        return col >= value
    raise _fail(expr, f"unknown op {op}")


class Fields:
    """The fields of one record type, built-in plus the tenant's custom ones."""

    def __init__(self, model: Any, builtin: Sequence[Field], custom_defs: dict[str, Any] | None = None):
        self.model = model
        self.by_name = {f.name: f for f in builtin}
        self.custom_defs = custom_defs or {}

    def get(self, name: str, expr: str) -> Field:
        if name.startswith("custom_fields."):
            key = name.split(".", 1)[1]
            definition = self.custom_defs.get(key)
            if definition is None:
                raise _fail(expr, f"no custom field {key}")
            base = self.model.custom_fields
            text_value = base[key].astext
            if definition.type in ("number", "currency"):
                column = cast(text_value, Numeric)
                kind = "decimal"
            else:
                column = text_value
                kind = "text"
            return Field(
                name,
                kind,
                column,
                sortable=True,
                nullable=True,
                custom_key=key,
                custom_type=definition.type,
                column_base=base,
            )
        f = self.by_name.get(name)
        if f is None:
            raise _fail(expr, f"unknown field {name}")
        return f


def parse_filters(fields: Fields, filters: Sequence[str], decision: Decision) -> list[Any]:
    if len(filters) > MAX_FILTERS:
        raise InvalidArgument.for_field("filter", f"at most {MAX_FILTERS} filters")
    clauses = []
    for expr in filters:
        parts = expr.split(":", 2)
        if len(parts) < 2:
            raise _fail(expr, "must be field:op:value")
        name, op = parts[0].strip(), parts[1].strip().lower()
        raw = parts[2].strip() if len(parts) == 3 else ""
        if op not in OPS:
            raise _fail(expr, f"op must be one of: {', '.join(OPS)}")
        f = fields.get(name, expr)
        check_hidden(decision, [name])
        clauses.append(_condition(f, op, raw, expr))
    return clauses


# ---------------------------------------------------------------- sort and keyset


@dataclass(frozen=True)
class Key:
    field: Field
    descending: bool


@dataclass
class Ordering:
    keys: list[Key]
    id_column: Any
    id_descending: bool
    encode: list[Callable[[Any], Any]] = field(default_factory=list)

    def tag(self) -> str:
        """Names this sort in its cursors: a cursor of another sort is refused, not misread."""
        keys = ",".join(f"{'-' if k.descending else ''}{k.field.name}" for k in self.keys)
        return paging.list_tag(f"{self.id_column.table.name}:{keys}:{'-' if self.id_descending else ''}id")

    def order_by(self) -> list[Any]:
        out = [k.field.column.desc() if k.descending else k.field.column.asc() for k in self.keys]
        out.append(self.id_column.desc() if self.id_descending else self.id_column.asc())
        return out

    def columns(self) -> list[Any]:
        return [k.field.column.label(f"_k{i}") for i, k in enumerate(self.keys)]

    def after(self, values: list[Any]) -> Any:
        """Rows strictly after the cursor, NULL being the largest value."""
        *key_values, last_id = values
        decoded = [_decode(k.field, v) for k, v in zip(self.keys, key_values, strict=True)]
        same_way = all(k.descending == self.id_descending for k in self.keys)
        if same_way and all(v is not None for v in decoded) and not any(k.field.nullable for k in self.keys):
            left = tuple_(*(k.field.column for k in self.keys), self.id_column)
            right = tuple_(*(_bind(k.field, v) for k, v in zip(self.keys, decoded, strict=True)), last_id)
            return left < right if self.id_descending else left > right
        clauses = []
        equal: list[Any] = []
        for k, v in zip(self.keys, decoded, strict=True):
            col = k.field.column
            if v is None:
                step = col.is_not(None) if k.descending else false()
                same = col.is_(None)
            else:
                bound = _bind(k.field, v)
                step = col < bound if k.descending else or_(col > bound, col.is_(None))
                same = col == bound
            clauses.append(and_(*equal, step))
            equal.append(same)
        step = self.id_column < last_id if self.id_descending else self.id_column > last_id
        clauses.append(and_(*equal, step))
        return or_(*clauses)


def _bind(f: Field, value: Any) -> Any:
    if f.custom_key and f.kind == "decimal":
        return cast(literal(str(value)), Numeric)
    return value


def _decode(f: Field, value: Any) -> Any:
    if value is None:
        return None
    kind = {"datetime": DateTime(timezone=True), "date": Date(), "decimal": Numeric(), "int": BigInteger()}
    kind.update(bool=Boolean())
    return paging.coerce(literal(None, type_=kind.get(f.kind, String())), value)


def _encode(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def parse_sort(fields: Fields, sort: str, decision: Decision, default: str = "-id") -> Ordering:
    text = (sort or default).strip()
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) > MAX_SORT_KEYS + 1:
        raise InvalidArgument.for_field("sort", f"at most {MAX_SORT_KEYS} keys")
    keys: list[Key] = []
    id_desc: bool | None = None
    for part in parts:
        descending = part.startswith("-")
        name = part.lstrip("+-")
        if name == "id":
            id_desc = descending
            break
        try:
            f = fields.get(name, f"sort {part}")
        except InvalidArgument as exc:
            raise InvalidArgument.for_field("sort", f"unknown field {name}") from exc
        if not f.sortable:
            raise InvalidArgument.for_field("sort", f"cannot sort on {name}")
        check_hidden(decision, [name])
        keys.append(Key(f, descending))
    if id_desc is None:
        id_desc = keys[-1].descending if keys else True
    return Ordering(keys, fields.model.id, id_desc)


@dataclass
class PageOf:
    limit: int
    cursor: list[Any] | None


def page_of(request_page: Any, ordering: Ordering) -> PageOf:
    """The page asked for; its cursor must be one this list gave out for this sort (crm_kit.paging), its
    values of the sort fields' kinds (checked when the page is run, `Ordering.after`)."""
    limit = clamp_limit(request_page.limit)
    if not request_page.cursor:
        return PageOf(limit, None)
    values = paging.decode_cursor(request_page.cursor, len(ordering.keys) + 1, ordering.tag())
    values[-1] = paging.coerce(ordering.id_column, values[-1])
    return PageOf(limit, values)


def encode_cursor(values: list[Any], ordering: Ordering) -> str:
    return paging.encode_cursor(values, ordering.tag())


def run_page(stmt: Any, ordering: Ordering, page: PageOf, extra: Sequence[Any] = ()) -> Any:
    """The page's statement: selects the row entity, the sort keys' values (for the next cursor), then any
    `extra` columns."""
    if page.cursor is not None:
        stmt = stmt.where(ordering.after(page.cursor))
    stmt = stmt.add_columns(*ordering.columns(), *extra)
    return stmt.order_by(*ordering.order_by()).limit(page.limit + 1)


async def fetch_page(
    session: Any, stmt: Any, ordering: Ordering, page: PageOf, extra: Sequence[Any] = ()
) -> tuple[list[Any], str]:
    """A page as plain rows, not ORM objects: the listed model's columns by name (its `search_*` columns left
    out: they only serve WHERE clauses), then the `_k*` sort keys and `extra`. Building fifty ORM objects
    costs more than the query itself, and the rows convert to messages the same way (by attribute name).
    `stmt` selects one model (`select(Model).where(...)`)."""
    table = stmt.column_descriptions[0]["entity"].__table__
    columns = [c for c in table.c if not c.key.startswith("search_")]
    connection = await session.connection()  # Core execution: no ORM result machinery for plain columns
    result = await connection.execute(run_page(stmt.with_only_columns(*columns), ordering, page, extra))
    keys = list(result.keys())
    # A namespace per row: attribute reads on it are ten times cheaper than on a Row, and a row converts to
    # its message through some thirty of them.
    rows = [SimpleNamespace(**dict(zip(keys, row, strict=True))) for row in result.all()]
    more = len(rows) > page.limit
    rows = rows[: page.limit]
    cursor = ""
    if more and rows:
        last = rows[-1]
        cursor = encode_cursor(
            [*(getattr(last, f"_k{i}") for i in range(len(ordering.keys))), last.id], ordering
        )
    return rows, cursor


def split(rows: Sequence[Any], ordering: Ordering, page: PageOf) -> tuple[list[Any], str]:
    """`rows` are (entity, key values...) tuples from `run_page`."""
    rows = list(rows)
    more = len(rows) > page.limit
    rows = rows[: page.limit]
    cursor = ""
    if more and rows:
        last = rows[-1]
        cursor = encode_cursor([*last[1 : 1 + len(ordering.keys)], last[0].id], ordering)
    return [r[0] for r in rows], cursor


async def capped_count(session: Any, stmt: Any, cap: int = COUNT_CAP) -> tuple[int, bool]:
    inner = stmt.with_only_columns(literal(1)).order_by(None).limit(cap + 1).subquery()
    n = await session.scalar(select(func.count()).select_from(inner))
    return (cap, False) if n > cap else (n, True)


__all__ = [
    "COUNT_CAP",
    "Field",
    "Fields",
    "Ordering",
    "PageOf",
    "capped_count",
    "encode_cursor",
    "fetch_page",
    "page_of",
    "parse_filters",
    "parse_sort",
    "run_page",
    "split",
]
