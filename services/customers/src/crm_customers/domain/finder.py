"""The global keyword search (/search?q=): accounts and contacts in one ranked answer.

Each record type is asked for at most CANDIDATES matches (the search indexes answer that without touching
the rest of the table), which are then ranked: names that start with the keyword first, then by word
similarity to the names, then shorter names. Bounded work per query, however common the keyword.
"""

from __future__ import annotations

from typing import Any

from crm.customers.v1 import customers_pb2 as pb
from crm_kit.errors import InvalidArgument
from crm_kit.policy import Decision
from sqlalchemy import case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_customers import models
from crm_customers.domain import custom_fields as cf
from crm_customers.domain import search
from crm_customers.domain.accounts import keyword, searchable_names
from crm_customers.domain.common import RECORD_TYPES, caller, is_hidden, visible

CANDIDATES = 200
DEFAULT_LIMIT = 20
MAX_LIMIT = 50


async def find(
    session: AsyncSession, request: pb.SearchRequest, decisions: dict[str, Decision]
) -> list[pb.SearchHit]:
    q = search.normalize_query(request.q)
    if not q:
        raise InvalidArgument.for_field("query", "is required")
    limit = request.limit or DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument.for_field("limit", f"must be 1 to {MAX_LIMIT}")
    kinds = [RECORD_TYPES.name(t) for t in request.types] or ["account", "contact"]
    tenant_id = caller().tenant_id
    hits: list[pb.SearchHit] = []
    await search.prepare(session, request.q)
    for kind in kinds:
        decision = decisions.get(kind)
        if decision is None or not decision.allowed:
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
        order = [rank.desc()] + ([] if name_hidden else [func.length(model.name)]) + [model.id]
        rows = await session.execute(
            select(model.id, model.name, rank, *(getattr(model, f) for f in detail_fields))
            .where(model.id.in_(select(matches.c.id)))
            .order_by(*order)
            .limit(limit)
        )
        for rid, name, rank, *details in rows:
            shown = []
            for f, value in zip(detail_fields, details, strict=True):
                if not is_hidden(decision, f) and value:
                    shown.append(" / ".join(value) if isinstance(value, list) else value)
            extra = " · ".join(shown)
            hits.append(
                pb.SearchHit(
                    type=RECORD_TYPES.number(kind),
                    id=rid,
                    name="" if name_hidden else name,
                    detail=extra or "",
                    score=round(min(float(rank) / 2, 1.0), 4),
                )
            )
    hits.sort(key=lambda h: -h.score)
    return hits[:limit]


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
