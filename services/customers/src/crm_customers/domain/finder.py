"""The global keyword search (/search?q=): accounts and contacts in one ranked list, paged like every list.

Each record type is asked for at most CANDIDATES matches (the search indexes answer that without touching
the rest of the table), which are then ranked: names that start with the keyword first, then by word
similarity to the names, then shorter names, accounts before contacts, then the id. Bounded work per query,
however common the keyword.

Pages are keyset pages over that order: the cursor (crm_kit.paging, tagged with the keyword and the types) holds
the last hit's rank, name length, record type and id, and each record type's query continues strictly after it,
so a page costs what the first one costs and two record types merge without counting offsets.
"""

from __future__ import annotations

from typing import Any

from crm.customers.v1 import customers_pb2 as pb
from crm_kit import paging
from crm_kit.errors import InvalidArgument
from crm_kit.policy import Decision
from sqlalchemy import Float, Integer, and_, case, false, func, literal, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from crm_customers import models
from crm_customers.domain import custom_fields as cf
from crm_customers.domain import search
from crm_customers.domain.accounts import keyword, searchable_names
from crm_customers.domain.common import RECORD_TYPES, caller, is_hidden, visible

CANDIDATES = 200
KINDS = ("account", "contact")  # the order of record types among hits of the same rank and name length
_RANK = literal(None, type_=Float())
_LENGTH = literal(None, type_=Integer())


def _tag(q: str, kinds: list[str]) -> str:
    """Cursors belong to one keyword and one set of record types: another search's is a 422."""
    return paging.list_tag(f"search:{q}:{','.join(kinds)}:rank-,length,type,id")


def _cursor(cursor: str, tag: str) -> tuple[float, int, int, str] | None:
    if not cursor:
        return None
    rank, length, kind, rid = paging.decode_cursor(cursor, 4, tag)
    kind = paging.coerce(_LENGTH, kind)
    if kind is None or not 0 <= kind < len(KINDS):
        raise InvalidArgument.for_field("cursor", paging.NOT_OURS)
    values = (
        paging.coerce(_RANK, rank),
        paging.coerce(_LENGTH, length),
        kind,
        paging.coerce(models.Account.id, rid),
    )
    if any(v is None for v in values):
        raise InvalidArgument.for_field("cursor", paging.NOT_OURS)
    return values  # type: ignore[return-value]


async def find(
    session: AsyncSession, request: pb.SearchRequest, decisions: dict[str, Decision]
) -> tuple[list[pb.SearchHit], str]:
    q = search.normalize_query(request.q)
    if not q:
        raise InvalidArgument.for_field("q", "is required")
    limit = paging.clamp_limit(request.page.limit)
    asked = {RECORD_TYPES.name(t) for t in request.types}
    if "" in asked:
        raise InvalidArgument.for_field("types", "must be account or contact")
    kinds = [k for k in KINDS if k in asked] if asked else list(KINDS)
    tag = _tag(q, kinds)
    after = _cursor(request.page.cursor, tag)
    tenant_id = caller().tenant_id
    found: list[tuple[tuple[float, int, int], pb.SearchHit]] = []
    await search.prepare(session, request.q)
    for order, kind in enumerate(KINDS):
        decision = decisions.get(kind)
        if kind not in kinds or decision is None or not decision.allowed:
            continue
        model = models.Account if kind == "account" else models.Contact
        defs = await cf.definitions(session, tenant_id, kind)
        matches = (
            select(model.id)
            .where(
                model.tenant_id == tenant_id,
                model.deleted_at.is_(None),
                visible(decision, model),
                keyword(decision, defs, model, request.q),
            )
            .limit(CANDIDATES)
            .subquery()
        )
        detail_fields = ("city", "industry") if kind == "account" else ("titles",)
        rank = _rank(model, q, searchable_names(decision, model))
        name_hidden = is_hidden(decision, "name")
        # The order may not tell anything of a hidden name either (its likeness to the keyword, its length).
        length = literal(0) if name_hidden else func.length(model.name)
        stmt = select(model.id, model.name, rank, length, *(getattr(model, f) for f in detail_fields)).where(
            model.id.in_(select(matches.c.id))
        )
        if after is not None:
            stmt = stmt.where(_after(rank, length, order, model.id, after))
        rows = await session.execute(
            stmt.order_by(rank.desc(), length.asc(), model.id.asc()).limit(limit + 1)
        )
        for rid, name, score, size, *details in rows:
            shown = []
            for f, value in zip(detail_fields, details, strict=True):
                if not is_hidden(decision, f) and value:
                    shown.append(" / ".join(value) if isinstance(value, list) else value)
            hit = pb.SearchHit(
                type=RECORD_TYPES.number(kind),
                id=rid,
                name="" if name_hidden else name,
                detail=" · ".join(shown),
                score=round(min(float(score) / 2, 1.0), 4),
            )
            found.append(((float(score), int(size), order), hit))
    # Each record type's rows come in the database's order; a stable sort on (rank, length, type) merges them
    # without comparing ids outside the database (whose collation orders them).
    found.sort(key=lambda item: (-item[0][0], item[0][1], item[0][2]))
    page = found[:limit]
    cursor = ""
    if len(found) > limit:
        (score, size, order), last = page[-1]
        cursor = paging.encode_cursor([score, size, order, last.id], tag)
    return [hit for _, hit in page], cursor


def _after(rank: Any, length: Any, order: int, id_column: Any, after: tuple[float, int, int, str]) -> Any:
    """Rows of the record type `order` strictly after the cursor in (rank desc, length, type, id)."""
    rank_c, length_c, order_c, id_c = after
    if order > order_c:
        tie = true()
    elif order < order_c:
        tie = false()
    else:
        tie = id_column > id_c
    return or_(
        rank < rank_c,
        and_(rank == rank_c, length > length_c),
        and_(rank == rank_c, length == length_c, tie),
    )


def _rank(model: Any, q: str, names: list[Any] | None) -> Any:
    """Names that start with the keyword first, then word similarity: over the names the caller sees only."""
    if names is None:
        prefix = case((model.search_name.startswith(q), 1.0), else_=0.0)
        return prefix + func.word_similarity(q, model.search_name)
    if not names:
        return literal(0.0)
    parts = [
        case((search.folded(c).startswith(q), 1.0), else_=0.0) + func.word_similarity(q, search.folded(c))
        for c in names
    ]
    return parts[0] if len(parts) == 1 else func.greatest(*parts)
