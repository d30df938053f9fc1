"""Keyset pagination: a page deep in a list costs the same as the first one; cursors are opaque to clients.

A cursor is `[tag, *sort key values]` as base64 JSON; the tag names the list's sort (`keys_tag`). Reading one
back (`Page.apply`) checks its form, its tag and each value against the type of its sort column (`coerce`), so
a crafted, tampered or foreign cursor is a 422 on the field "cursor" and never reaches the database as a value
it cannot take. Cursors need no signature: a caller who forges one only pages through rows their own query
already allows.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from crm.common.v1 import paging_pb2
from sqlalchemy import Table, and_, or_
from sqlalchemy.sql import ColumnElement, sqltypes

from crm_kit.errors import InvalidArgument

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def clamp_limit(limit: int) -> int:
    if limit == 0:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument.for_field("limit", f"must be between 1 and {MAX_LIMIT}")
    return limit


# What a cursor may be: longer, deeper or other than a list of short scalars is not one this kit gave out.
MAX_CURSOR_CHARS = 2048
MAX_CURSOR_TEXT = 1000
NOT_OURS = "is not a cursor this list gave out"


def _not_ours(detail: str = "") -> InvalidArgument:
    return InvalidArgument.for_field("cursor", NOT_OURS + (f" ({detail})" if detail else ""))


def list_tag(description: str) -> str:
    """A short tag naming a list and its sort, carried in its cursors: a cursor of another list or sort is
    refused (422) rather than read as this one's."""
    return hashlib.sha256(description.encode()).hexdigest()[:10]


def keys_tag(keys: Sequence[SortKey]) -> str:
    """The tag of a keyset: each key's table (when it is one), column and direction."""
    parts = []
    for key in keys:
        table = getattr(key.column, "table", None)
        name = table.name if isinstance(table, Table) else ""
        parts.append(f"{name}.{getattr(key.column, 'key', '?')}:{'desc' if key.descending else 'asc'}")
    return list_tag(",".join(parts))


def encode_cursor(values: Sequence[Any], tag: str = "") -> str:
    data = json.dumps([tag, *(_plain(v) for v in values)], separators=(",", ":"), default=str)
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    return value


def decode_cursor(cursor: str, width: int, tag: str = "") -> list[Any]:
    """The values of a cursor `encode_cursor` made with the same `tag` and `width`; anything else (not base64,
    not JSON, another list's, too long, values that are not short scalars) is a 422 on the field "cursor",
    never an error further down. The values still need `coerce` to the sort columns' types."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise _not_ours("too long")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, RecursionError) as exc:
        raise _not_ours() from exc
    if not isinstance(decoded, list) or len(decoded) != width + 1 or decoded[0] != tag:
        raise _not_ours("another list's, or the sort changed")
    values = decoded[1:]
    for value in values:
        if isinstance(value, str):
            if len(value) > MAX_CURSOR_TEXT or "\x00" in value:
                raise _not_ours()
        elif value is not None and not isinstance(value, bool | int | float):
            raise _not_ours()
    return values


# The ranges of PostgreSQL's integer types: a larger number would fail in the driver, not in our check.
_INT_BITS = ((sqltypes.SmallInteger, 15), (sqltypes.BigInteger, 63), (sqltypes.Integer, 31))


def coerce(column: Any, value: Any) -> Any:
    """A cursor value as the Python value of `column`'s type (a 422 when it is not one): what reaches the
    query is always what the driver can send for that column."""
    if value is None:
        return None
    sql_type = getattr(column, "type", None)
    try:
        python_type = sql_type.python_type if sql_type is not None else None
    except NotImplementedError:
        python_type = None
    try:
        if python_type is bool:
            if isinstance(value, bool):
                return value
        elif python_type is int:
            if isinstance(value, int) and not isinstance(value, bool):
                bits = next((b for t, b in _INT_BITS if isinstance(sql_type, t)), 63)
                if -(2**bits) <= value < 2**bits:
                    return value
        elif python_type is float:
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                return float(value)
        elif python_type is Decimal:
            if isinstance(value, str | int) and not isinstance(value, bool):
                number = Decimal(value)
                if number.is_finite():
                    return number
        elif python_type is dt.datetime:
            if isinstance(value, dt.datetime):
                return value
            if isinstance(value, str):
                moment = dt.datetime.fromisoformat(value)
                if (moment.tzinfo is not None) == bool(getattr(sql_type, "timezone", False)):
                    return moment
        elif python_type is dt.date:
            if isinstance(value, str):
                return dt.date.fromisoformat(value)
        elif python_type is uuid.UUID:
            if isinstance(value, str):
                return uuid.UUID(value)
        elif python_type is str or python_type is None:
            if isinstance(value, str) or (python_type is None and not isinstance(value, list | dict)):
                return value
    except (ValueError, ArithmeticError) as exc:
        raise _not_ours() from exc
    raise _not_ours()


@dataclass(frozen=True)
class SortKey:
    column: Any
    descending: bool = False


def after(keys: Sequence[SortKey], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after `values` in the order of `keys` (the last key must be unique, e.g. the id)."""
    clauses = []
    for i, key in enumerate(keys):
        equal_prefix = [keys[j].column == values[j] for j in range(i)]
        step = key.column < values[i] if key.descending else key.column > values[i]
        clauses.append(and_(*equal_prefix, step))
    return or_(*clauses)


def order_by(keys: Sequence[SortKey]) -> list[Any]:
    return [k.column.desc() if k.descending else k.column.asc() for k in keys]


@dataclass
class Page:
    limit: int
    cursor_values: list[Any] | None
    cursor: str = ""
    width: int = 0
    tag: str = ""

    @classmethod
    def of(cls, request: paging_pb2.PageRequest, width: int) -> Page:
        """The page a request asks for; its cursor is read against the sort keys in `apply`."""
        limit = clamp_limit(request.limit)
        if len(request.cursor) > MAX_CURSOR_CHARS:
            raise _not_ours("too long")
        return cls(limit, None, request.cursor, width)

    def apply(self, stmt: Any, keys: Sequence[SortKey]) -> Any:
        """The statement for this page of a list sorted by `keys`: a cursor of another list or sort, or with
        values that are not of the keys' types, is a 422 here."""
        self.tag = keys_tag(keys)
        if self.cursor:
            if len(keys) != self.width:
                raise ValueError(f"the page was made for {self.width} sort keys, the list has {len(keys)}")
            raw = decode_cursor(self.cursor, len(keys), self.tag)
            self.cursor_values = [coerce(k.column, v) for k, v in zip(keys, raw, strict=True)]
        if self.cursor_values is not None:
            stmt = stmt.where(after(keys, self.cursor_values))
        return stmt.order_by(*order_by(keys)).limit(self.limit + 1)

    def split(self, rows: Sequence[Any], key_of: Any) -> tuple[list[Any], str]:
        """The rows of this page and the cursor of the next ("" when this is the last page)."""
        rows = list(rows)
        if len(rows) <= self.limit:
            return rows, ""
        rows = rows[: self.limit]
        return rows, encode_cursor(key_of(rows[-1]), self.tag)
