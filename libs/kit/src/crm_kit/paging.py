"""Keyset pagination: a page deep in a list costs the same as the first one; cursors are opaque to clients."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crm.common.v1 import paging_pb2
from sqlalchemy import and_, or_
from sqlalchemy.sql import ColumnElement

from crm_kit.errors import InvalidArgument

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def clamp_limit(limit: int) -> int:
    if limit == 0:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument.for_field("limit", f"must be between 1 and {MAX_LIMIT}")
    return limit


def encode_cursor(values: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values), default=str).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, width: int) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError) as exc:
        raise InvalidArgument.for_field("cursor", "is not a cursor this list gave out") from exc
    if not isinstance(values, list) or len(values) != width:
        raise InvalidArgument.for_field("cursor", "is not a cursor this list gave out")
    return values


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

    @classmethod
    def of(cls, request: paging_pb2.PageRequest, width: int) -> Page:
        limit = clamp_limit(request.limit)
        return cls(limit, decode_cursor(request.cursor, width) if request.cursor else None)

    def apply(self, stmt: Any, keys: Sequence[SortKey]) -> Any:
        if self.cursor_values is not None:
            stmt = stmt.where(after(keys, self.cursor_values))
        return stmt.order_by(*order_by(keys)).limit(self.limit + 1)

    def split(self, rows: Sequence[Any], key_of: Any) -> tuple[list[Any], str]:
        """The rows of this page and the cursor of the next ("" when this is the last page)."""
        rows = list(rows)
        if len(rows) <= self.limit:
            return rows, ""
        rows = rows[: self.limit]
        return rows, encode_cursor(key_of(rows[-1]))
