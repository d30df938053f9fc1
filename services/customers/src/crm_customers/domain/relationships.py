"""Typed relationships between accounts and contacts, their types (built-in and the tenant's own), and the
graph: neighbours to depth N, the shortest path between two records, and the group tree (accounts.tree).

The graph has three kinds of edges: typed relationships, `parent_of` (the account hierarchy) and `works_at`
(a contact's linked accounts). Walks are breadth first, one query per edge kind per level, over the records
the caller may see: a record outside the caller's data scope is neither shown nor walked through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import events_pb2
from crm_kit.db import UnitOfWork
from crm_kit.errors import AlreadyExists, Conflict, FieldError, InvalidArgument, not_found
from crm_kit.ids import is_uuid, new_id
from crm_kit.paging import Page, SortKey
from crm_kit.policy import Decision
from crm_kit.validation import Check
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_customers import models
from crm_customers.domain.common import (
    RECORD_TYPES,
    caller,
    expect_version,
    get_owned,
    soft_delete,
    ts,
    visible,
)
from crm_customers.domain.custom_fields import KEY

MAX_NODES = 500
MAX_DEPTH = 4
MAX_PATH_DEPTH = 6
STRUCTURAL = ("parent_of", "works_at")


@dataclass(frozen=True)
class BuiltIn:
    key: str
    name_zh: str
    name_en: str
    inverse_zh: str
    inverse_en: str
    source: str
    target: str
    symmetric: bool = False


BUILT_IN = [
    BuiltIn("reports_to", "汇报给", "reports to", "管理", "manages", "contact", "contact"),
    BuiltIn("influences", "影响", "influences", "受影响于", "is influenced by", "contact", ""),
    BuiltIn("partner_of", "合作伙伴", "partner of", "", "", "account", "account", symmetric=True),
    BuiltIn("supplier_of", "供应商", "supplier of", "客户", "customer of", "account", "account"),
    BuiltIn("competitor_of", "竞争对手", "competitor of", "", "", "account", "account", symmetric=True),
    BuiltIn(
        "former_employee_of",
        "前雇员",
        "former employee of",
        "前雇主",
        "former employer of",
        "contact",
        "account",
    ),
    BuiltIn("knows", "认识", "knows", "", "", "contact", "contact", symmetric=True),
]
BUILT_IN_BY_KEY = {b.key: b for b in BUILT_IN}
TYPE_UPDATABLE = ("name_zh", "name_en", "inverse_name_zh", "inverse_name_en")


def built_in_pb(b: BuiltIn) -> pb.RelationshipType:
    return pb.RelationshipType(
        id=f"builtin:{b.key}",
        key=b.key,
        name_zh=b.name_zh,
        name_en=b.name_en,
        inverse_name_zh=b.inverse_zh,
        inverse_name_en=b.inverse_en,
        source_type=RECORD_TYPES.number(b.source),
        target_type=RECORD_TYPES.number(b.target),
        symmetric=b.symmetric,
        built_in=True,
        version=1,
    )


def type_pb(t: models.RelationshipType) -> pb.RelationshipType:
    return pb.RelationshipType(
        id=t.id,
        key=t.key,
        name_zh=t.name_zh,
        name_en=t.name_en,
        inverse_name_zh=t.inverse_name_zh,
        inverse_name_en=t.inverse_name_en,
        source_type=RECORD_TYPES.number(t.source_type),
        target_type=RECORD_TYPES.number(t.target_type),
        symmetric=t.symmetric,
        built_in=False,
        created_at=ts(t.created_at),
        version=t.version,
    )


def type_snapshot(t: models.RelationshipType) -> dict[str, Any]:
    return {k: getattr(t, k) for k in ("key", "source_type", "target_type", "symmetric", *TYPE_UPDATABLE)}


async def all_types(session: AsyncSession, tenant_id: str) -> dict[str, pb.RelationshipType]:
    out = {b.key: built_in_pb(b) for b in BUILT_IN}
    rows = await session.scalars(
        select(models.RelationshipType).where(
            models.RelationshipType.tenant_id == tenant_id, models.RelationshipType.deleted_at.is_(None)
        )
    )
    for t in rows:
        out[t.key] = type_pb(t)
    return out


async def create_type(uow: UnitOfWork, src: pb.RelationshipType) -> models.RelationshipType:
    principal = caller()
    check = Check()
    if not KEY.match(src.key):
        check.fail("key", "must be 1 to 40 lower-case letters, digits or underscores, starting with a letter")
    if src.key in BUILT_IN_BY_KEY or src.key in STRUCTURAL:
        check.fail("key", "is a built-in type")
    check.required("name_zh", src.name_zh or src.name_en, "a name (name_zh or name_en) is required")
    for f in TYPE_UPDATABLE:
        check.length(f, getattr(src, f), max_len=100)
    check.done()
    row = models.RelationshipType(
        id=new_id(),
        tenant_id=principal.tenant_id,
        key=src.key,
        source_type=RECORD_TYPES.name(src.source_type),
        target_type=RECORD_TYPES.name(src.target_type),
        symmetric=src.symmetric,
        version=1,
        **{f: getattr(src, f).strip() for f in TYPE_UPDATABLE},
    )
    exists = await uow.session.scalar(
        select(models.RelationshipType.id).where(
            models.RelationshipType.tenant_id == principal.tenant_id,
            models.RelationshipType.key == src.key,
            models.RelationshipType.deleted_at.is_(None),
        )
    )
    if exists:
        raise AlreadyExists(
            f"a relationship type {src.key} already exists", reason="relationship_type_exists"
        )
    uow.session.add(row)
    await uow.session.flush()
    await uow.session.refresh(row)
    uow.emit(
        events_pb2.RelationshipTypeCreated(relationship_type=type_pb(row)),
        aggregate_type="relationship_type",
        aggregate_id=row.id,
        aggregate_version=1,
        action="created",
        after=type_snapshot(row),
    )
    return row


async def list_types(session: AsyncSession, page_request: Any) -> tuple[list[pb.RelationshipType], str]:
    """Built-in types first (on the first page), then the tenant's own by id."""
    page = Page.of(page_request, 1)
    out: list[pb.RelationshipType] = []
    if not page.cursor:
        out = [built_in_pb(b) for b in BUILT_IN]
    stmt = select(models.RelationshipType).where(
        models.RelationshipType.tenant_id == caller().tenant_id, models.RelationshipType.deleted_at.is_(None)
    )
    rows = (await session.scalars(page.apply(stmt, [SortKey(models.RelationshipType.id)]))).all()
    rows, cursor = page.split(rows, lambda r: [r.id])
    return out + [type_pb(r) for r in rows], cursor


async def _own_type(session: AsyncSession, type_id: str) -> models.RelationshipType:
    if type_id.startswith("builtin:"):
        raise Conflict("built-in relationship types cannot be changed", reason="built_in_type")
    return await get_owned(
        session, models.RelationshipType, "relationship_type", type_id, lock=True, deleted=False
    )


async def update_type(uow: UnitOfWork, request: pb.UpdateRelationshipTypeRequest) -> models.RelationshipType:
    paths = list(request.update_mask.paths)
    unknown = [p for p in paths if p not in TYPE_UPDATABLE]
    if unknown or not paths:
        raise InvalidArgument(
            f"these fields cannot be changed: {', '.join(unknown) or '(none named)'}",
            field_errors=[FieldError(p, "cannot be changed") for p in unknown],
        )
    row = await _own_type(uow.session, request.id)
    expect_version(row, request.expected_version)
    before = type_snapshot(row)
    check = Check()
    for p in paths:
        value = getattr(request.relationship_type, p).strip()
        check.length(p, value, max_len=100)
        setattr(row, p, value)
    check.required("name_zh", row.name_zh or row.name_en, "a name (name_zh or name_en) is required")
    check.done()
    if type_snapshot(row) == before:
        return row
    row.version += 1
    await uow.session.flush()
    await uow.session.refresh(row)
    uow.emit(
        events_pb2.RelationshipTypeUpdated(relationship_type=type_pb(row)),
        aggregate_type="relationship_type",
        aggregate_id=row.id,
        aggregate_version=row.version,
        action="updated",
        before=before,
        after=type_snapshot(row),
    )
    return row


async def delete_type(uow: UnitOfWork, type_id: str, expected_version: int) -> None:
    row = await _own_type(uow.session, type_id)
    expect_version(row, expected_version)
    used = await uow.session.scalar(
        select(models.Relationship.id)
        .where(
            models.Relationship.tenant_id == row.tenant_id,
            models.Relationship.type_key == row.key,
            models.Relationship.deleted_at.is_(None),
        )
        .limit(1)
    )
    if used:
        raise Conflict(
            "relationships of this type exist: delete them first", reason="relationship_type_in_use"
        )
    await soft_delete(
        uow,
        row,
        before=type_snapshot(row),
        event_of=lambda r: events_pb2.RelationshipTypeDeleted(relationship_type=type_pb(r)),
        aggregate_type="relationship_type",
    )


# ---------------------------------------------------------------- relationships


def relationship_pb(r: models.Relationship) -> pb.Relationship:
    return pb.Relationship(
        id=r.id,
        type=r.type_key,
        source=pb.RecordRef(type=RECORD_TYPES.number(r.source_type), id=r.source_id),
        target=pb.RecordRef(type=RECORD_TYPES.number(r.target_type), id=r.target_id),
        note=r.note,
        created_by=r.created_by,
        created_at=ts(r.created_at),
        version=r.version,
    )


def relationship_snapshot(r: models.Relationship) -> dict[str, Any]:
    return {
        "type": r.type_key,
        "source": f"{r.source_type}:{r.source_id}",
        "target": f"{r.target_type}:{r.target_id}",
        "note": r.note,
    }


MODELS = {"account": models.Account, "contact": models.Contact}


async def _record(
    session: AsyncSession, ref: pb.RecordRef, field: str, decisions: dict[str, Decision]
) -> str:
    kind = RECORD_TYPES.name(ref.type)
    if kind not in MODELS:
        raise InvalidArgument.for_field(f"{field}.type", "must be account or contact")
    await get_owned(session, MODELS[kind], kind, ref.id, decision=decisions[kind])
    return kind


async def create(
    uow: UnitOfWork, request: pb.CreateRelationshipRequest, decisions: dict[str, Decision]
) -> models.Relationship:
    principal = caller()
    types = await all_types(uow.session, principal.tenant_id)
    t = types.get(request.type)
    if t is None:
        raise InvalidArgument.for_field("type", "no such relationship type")
    source = await _record(uow.session, request.source, "source", decisions)
    target = await _record(uow.session, request.target, "target", decisions)
    check = Check()
    if t.source_type and RECORD_TYPES.number(source) != t.source_type:
        check.fail("source.type", f"{t.key} starts at a {RECORD_TYPES.name(t.source_type)}")
    if t.target_type and RECORD_TYPES.number(target) != t.target_type:
        check.fail("target.type", f"{t.key} ends at a {RECORD_TYPES.name(t.target_type)}")
    if request.source.id == request.target.id:
        check.fail("target.id", "a record cannot be related to itself")
    check.length("note", request.note, max_len=2000)
    check.done()
    source_id, target_id = request.source.id, request.target.id
    if t.symmetric and (source, source_id) > (target, target_id):  # one row per symmetric pair
        source, source_id, target, target_id = target, target_id, source, source_id
    row = models.Relationship(
        id=new_id(),
        tenant_id=principal.tenant_id,
        type_key=t.key,
        source_type=source,
        source_id=source_id,
        target_type=target,
        target_id=target_id,
        note=request.note.strip(),
        created_by=principal.actor_id,
        version=1,
    )
    uow.session.add(row)
    await uow.session.flush()
    await uow.session.refresh(row)
    uow.emit(
        events_pb2.RelationshipCreated(relationship=relationship_pb(row)),
        aggregate_type="relationship",
        aggregate_id=row.id,
        aggregate_version=1,
        action="created",
        after=relationship_snapshot(row),
    )
    return row


async def _both_ends_visible(
    session: AsyncSession, r: models.Relationship, decisions: dict[str, Decision]
) -> bool:
    for kind, rid in ((r.source_type, r.source_id), (r.target_type, r.target_id)):
        model = MODELS[kind]
        ok = await session.scalar(
            select(model.id).where(
                model.tenant_id == r.tenant_id,
                model.id == rid,
                model.deleted_at.is_(None),
                visible(decisions[kind], model),
            )
        )
        if not ok:
            return False
    return True


async def get(
    session: AsyncSession, relationship_id: str, decisions: dict[str, Decision], *, lock: bool = False
) -> models.Relationship:
    row = await get_owned(session, models.Relationship, "relationship", relationship_id, lock=lock)
    if not await _both_ends_visible(session, row, decisions):
        raise not_found("relationship", relationship_id)
    return row


async def list_relationships(
    session: AsyncSession, request: pb.ListRelationshipsRequest, decisions: dict[str, Decision]
) -> tuple[list[models.Relationship], str]:
    R = models.Relationship
    page = Page.of(request.page, 1)
    stmt = select(R).where(R.tenant_id == caller().tenant_id, R.deleted_at.is_(None))
    if request.record_id:
        kind = RECORD_TYPES.name(request.record_type) or None
        if kind:
            await get_owned(session, MODELS[kind], kind, request.record_id, decision=decisions[kind])
        stmt = stmt.where(or_(R.source_id == request.record_id, R.target_id == request.record_id))
    if request.type:
        stmt = stmt.where(R.type_key == request.type)
    # Both ends inside the caller's data scope.
    for side in ("source", "target"):
        kind_col, id_col = getattr(R, f"{side}_type"), getattr(R, f"{side}_id")
        clauses = []
        for kind, model in MODELS.items():
            sub = select(model.id).where(
                model.tenant_id == caller().tenant_id,
                model.deleted_at.is_(None),
                visible(decisions[kind], model),
            )
            clauses.append(and_(kind_col == kind, id_col.in_(sub)))
        stmt = stmt.where(or_(*clauses))
    rows = (await session.scalars(page.apply(stmt, [SortKey(R.id)]))).all()
    return page.split(rows, lambda r: [r.id])


async def delete(
    uow: UnitOfWork, relationship_id: str, expected_version: int, decisions: dict[str, Decision]
) -> None:
    row = await get(uow.session, relationship_id, decisions, lock=True)
    expect_version(row, expected_version)
    await soft_delete(
        uow,
        row,
        before=relationship_snapshot(row),
        event_of=lambda r: events_pb2.RelationshipDeleted(relationship=relationship_pb(r)),
        aggregate_type="relationship",
    )


# ---------------------------------------------------------------- the graph

Node = tuple[str, str]  # (record type, id)


@dataclass(frozen=True)
class Edge:
    type: str
    source: Node
    target: Node
    relationship_id: str = ""

    def pb(self) -> pb.GraphEdge:
        return pb.GraphEdge(
            type=self.type,
            source=pb.RecordRef(type=RECORD_TYPES.number(self.source[0]), id=self.source[1]),
            target=pb.RecordRef(type=RECORD_TYPES.number(self.target[0]), id=self.target[1]),
            relationship_id=self.relationship_id,
        )


class Graph:
    """Neighbour lookups over the caller's visible records, a level at a time."""

    def __init__(self, session: AsyncSession, decisions: dict[str, Decision], types: list[str]):
        self.session = session
        self.decisions = decisions
        self.types = set(types)
        self.tenant_id = caller().tenant_id
        self.names: dict[Node, str] = {}

    def wants(self, edge_type: str) -> bool:
        return not self.types or edge_type in self.types

    async def visible(self, nodes: set[Node]) -> set[Node]:
        out: set[Node] = set()
        for kind, model in MODELS.items():
            ids = [i for k, i in nodes if k == kind and is_uuid(i)]
            if not ids or not self.decisions[kind].allowed:
                continue
            rows = await self.session.execute(
                select(model.id, model.name).where(
                    model.tenant_id == self.tenant_id,
                    model.id.in_(ids),
                    model.deleted_at.is_(None),
                    visible(self.decisions[kind], model),
                )
            )
            for rid, name in rows:
                out.add((kind, rid))
                if "name" not in self.decisions[kind].hidden:
                    self.names[(kind, rid)] = name
        return out

    async def edges(self, frontier: set[Node]) -> list[Edge]:
        ids = [i for _, i in frontier]
        accounts = [i for k, i in frontier if k == "account"]
        contacts = [i for k, i in frontier if k == "contact"]
        found: list[Edge] = []
        R = models.Relationship
        rows = await self.session.scalars(
            select(R).where(
                R.tenant_id == self.tenant_id,
                R.deleted_at.is_(None),
                or_(R.source_id.in_(ids), R.target_id.in_(ids)),
            )
        )
        for r in rows:
            if self.wants(r.type_key):
                found.append(
                    Edge(r.type_key, (r.source_type, r.source_id), (r.target_type, r.target_id), r.id)
                )
        A, C = models.Account, models.Contact
        if accounts and self.wants("parent_of"):
            rows2 = await self.session.execute(
                select(A.id, A.parent_id).where(
                    A.tenant_id == self.tenant_id,
                    A.deleted_at.is_(None),
                    or_(A.parent_id.in_(accounts), A.id.in_(accounts)),
                    A.parent_id.is_not(None),
                )
            )
            found.extend(Edge("parent_of", ("account", p), ("account", c)) for c, p in rows2)
        if self.wants("works_at"):
            if contacts:
                rows3 = await self.session.execute(
                    select(C.id, C.account_ids).where(
                        C.tenant_id == self.tenant_id, C.deleted_at.is_(None), C.id.in_(contacts)
                    )
                )
                found.extend(
                    Edge("works_at", ("contact", c), ("account", a)) for c, ids_ in rows3 for a in ids_
                )
            if accounts:
                rows4 = await self.session.execute(
                    select(C.id, C.account_ids)
                    .where(
                        C.tenant_id == self.tenant_id, C.deleted_at.is_(None), C.account_ids.overlap(accounts)
                    )
                    .limit(MAX_NODES)
                )
                found.extend(
                    Edge("works_at", ("contact", c), ("account", a))
                    for c, ids_ in rows4
                    for a in ids_
                    if a in accounts
                )
        return list(dict.fromkeys(found))


async def neighbourhood(
    session: AsyncSession, root: Node, depth: int, types: list[str], decisions: dict[str, Decision]
) -> tuple[list[pb.GraphNode], list[pb.GraphEdge], bool]:
    depth = depth or 1
    if not 1 <= depth <= MAX_DEPTH:
        raise InvalidArgument.for_field("depth", f"must be 1 to {MAX_DEPTH}")
    graph = Graph(session, decisions, types)
    if root not in await graph.visible({root}):
        raise not_found(root[0], root[1])
    level = {root: 0}
    frontier = {root}
    edges: set[Edge] = set()
    truncated = False
    for d in range(1, depth + 1):
        found = await graph.edges(frontier)
        candidates = {n for e in found for n in (e.source, e.target)} - set(level)
        seen = await graph.visible(candidates)
        allowed = set(level) | seen
        for e in found:
            if e.source in allowed and e.target in allowed:
                edges.add(e)
        frontier = set()
        for n in sorted(seen):
            if len(level) >= MAX_NODES:
                truncated = True
                break
            level[n] = d
            frontier.add(n)
        if not frontier:
            break
    edges = {e for e in edges if e.source in level and e.target in level}
    nodes = [
        pb.GraphNode(type=RECORD_TYPES.number(k), id=i, name=graph.names.get((k, i), ""), depth=d)
        for (k, i), d in sorted(level.items(), key=lambda x: (x[1], x[0]))
    ]
    return nodes, [e.pb() for e in sorted(edges, key=lambda e: (e.type, e.source, e.target))], truncated


async def shortest_path(
    session: AsyncSession,
    start: Node,
    goal: Node,
    max_depth: int,
    types: list[str],
    decisions: dict[str, Decision],
) -> tuple[list[pb.GraphNode], list[pb.GraphEdge]]:
    max_depth = max_depth or MAX_PATH_DEPTH
    if not 1 <= max_depth <= MAX_PATH_DEPTH:
        raise InvalidArgument.for_field("max_depth", f"must be 1 to {MAX_PATH_DEPTH}")
    graph = Graph(session, decisions, types)
    ends = await graph.visible({start, goal})
    for n in (start, goal):
        if n not in ends:
            raise not_found(n[0], n[1])
    if start == goal:
        return [
            pb.GraphNode(type=RECORD_TYPES.number(start[0]), id=start[1], name=graph.names.get(start, ""))
        ], []
    came_from: dict[Node, tuple[Node, Edge] | None] = {start: None}
    frontier = {start}
    for _ in range(max_depth):
        found = await graph.edges(frontier)
        step: dict[Node, tuple[Node, Edge]] = {}
        for e in found:
            for a, b in ((e.source, e.target), (e.target, e.source)):
                if a in frontier and b not in came_from and b not in step:
                    step[b] = (a, e)
        seen = await graph.visible(set(step))
        frontier = set()
        for n in seen:
            came_from[n] = step[n]
            frontier.add(n)
            if len(came_from) > 20 * MAX_NODES:
                break
        if goal in came_from:
            break
        if not frontier:
            return [], []
    if goal not in came_from:
        return [], []
    path_nodes: list[Node] = [goal]
    path_edges: list[Edge] = []
    while (prev := came_from[path_nodes[-1]]) is not None:
        path_nodes.append(prev[0])
        path_edges.append(prev[1])
    path_nodes.reverse()
    path_edges.reverse()
    nodes = [
        pb.GraphNode(type=RECORD_TYPES.number(k), id=i, name=graph.names.get((k, i), ""), depth=d)
        for d, (k, i) in enumerate(path_nodes)
    ]
    return nodes, [e.pb() for e in path_edges]
