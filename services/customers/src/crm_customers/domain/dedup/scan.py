"""Duplicate scans: every candidate group among a tenant's existing records, with scores.

Set-based where it can be: exact rules group on the normalised columns in SQL (unnest the phone and e-mail
arrays, group by value); the company-name rule pairs accounts whose name keys are equal or trigram-similar (GIN
index on accounts.name_key, `%` operator) and scores each pair in Python; the person rule groups contacts by
(account, name key). Pairs become groups with a union-find. A scan runs in the background worker.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from crm.customers.v1 import data_quality_pb2 as pb
from crm_kit.db import UnitOfWork
from crm_kit.errors import InvalidArgument
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from crm_customers import models, normalize
from crm_customers.domain.dedup.common import (
    JOB_STATUS_PB,
    MATCH_PB,
    RECORD_TYPE_PB,
    RECORD_TYPES,
    caller,
    get_owned,
    ts,
    utcnow,
)
from crm_customers.domain.dedup.matching import Candidate
from crm_customers.domain.dedup.models import DuplicateGroup, DuplicateRule, DuplicateScan
from crm_customers.domain.dedup.rules import active_rules

# A group larger than this is a value shared by design (a switchboard number), not a duplicate.
MAX_GROUP = 50
FUZZY_PAIR_LIMIT = 200_000


def scan_pb(s: DuplicateScan) -> pb.DuplicateScan:
    return pb.DuplicateScan(
        id=s.id,
        record_type=RECORD_TYPE_PB[s.record_type],
        status=JOB_STATUS_PB[s.status],
        records_scanned=s.records_scanned,
        groups_found=s.groups_found,
        error=s.error,
        created_by=s.created_by,
        created_at=ts(s.created_at),
        finished_at=ts(s.finished_at),
    )


def group_pb(g: DuplicateGroup) -> pb.DuplicateGroup:
    from crm.customers.v1 import duplicates_pb2

    return pb.DuplicateGroup(
        id=g.id,
        scan_id=g.scan_id,
        record_type=RECORD_TYPE_PB[g.record_type],
        score=g.score,
        members=[
            duplicates_pb2.DuplicateCandidate(
                record_type=g.record_type,
                id=m["id"],
                name=m["name"],
                score=m["score"],
                rule_ids=m["rule_ids"],
                matches=[MATCH_PB[x] for x in m["matches"]],
                matched_values=m["matched_values"],
            )
            for m in g.members
        ],
    )


async def start(uow: UnitOfWork, *, record_type: int) -> DuplicateScan:
    kind = RECORD_TYPES.get(record_type)
    if kind is None:
        raise InvalidArgument.for_field("record_type", "must be account or contact")
    principal = caller()
    scan = DuplicateScan(
        id=new_id(),
        tenant_id=principal.tenant_id,
        record_type=kind,
        status="queued",
        records_scanned=0,
        groups_found=0,
        error="",
        created_by=principal.actor_id,
        created_at=utcnow(),
    )
    uow.session.add(scan)
    await uow.session.flush()
    return scan


async def get(session: AsyncSession, scan_id: str) -> DuplicateScan:
    return await get_owned(session, DuplicateScan, "duplicate_scan", scan_id)


async def list_scans(session: AsyncSession, *, page_request: Any) -> tuple[list[DuplicateScan], str]:
    keys = [SortKey(DuplicateScan.id, descending=True)]
    page = Page.of(page_request, len(keys))
    stmt = select(DuplicateScan).where(DuplicateScan.tenant_id == caller().tenant_id)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda s: [s.id])


async def list_groups(
    session: AsyncSession, *, page_request: Any, scan_id: str, record_types: list[str]
) -> tuple[list[DuplicateGroup], str]:
    """The groups of a scan, or of the latest finished scan of each of `record_types`, best score first."""
    tenant = caller().tenant_id
    if scan_id:
        scan_ids = [(await get(session, scan_id)).id]
    else:
        scan_ids = []
        for kind in record_types:
            latest = await session.scalar(
                select(DuplicateScan.id)
                .where(
                    DuplicateScan.tenant_id == tenant,
                    DuplicateScan.record_type == kind,
                    DuplicateScan.status == "succeeded",
                )
                .order_by(DuplicateScan.id.desc())
                .limit(1)
            )
            if latest is not None:
                scan_ids.append(latest)
    keys = [SortKey(DuplicateGroup.score, descending=True), SortKey(DuplicateGroup.id)]
    page = Page.of(page_request, len(keys))
    if not scan_ids:
        page.apply(select(DuplicateGroup), keys)  # a cursor is still checked: a foreign one is a 422
        return [], ""
    stmt = select(DuplicateGroup).where(
        DuplicateGroup.tenant_id == tenant, DuplicateGroup.scan_id.in_(scan_ids)
    )
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda g: [g.score, g.id])


# ---------------------------------------------------------------- running a scan


class _Pairs:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.members: dict[str, Candidate] = {}
        self.names: dict[str, str] = {}

    def find(self, x: str) -> str:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(x, x) != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def link(
        self, kind: str, ids_names: list[tuple[str, str]], rule: DuplicateRule, score: float, value: str
    ) -> None:
        first = None
        for row_id, name in ids_names:
            self.parent.setdefault(row_id, row_id)
            self.members.setdefault(row_id, Candidate(kind, row_id, name)).add(rule, score, value)
            if first is None:
                first = row_id
            else:
                a, b = self.find(first), self.find(row_id)
                if a != b:
                    self.parent[b] = a

    def groups(self) -> list[list[Candidate]]:
        by_root: dict[str, list[Candidate]] = defaultdict(list)
        for row_id, cand in self.members.items():
            by_root[self.find(row_id)].append(cand)
        return [sorted(g, key=lambda c: c.id) for g in by_root.values() if len(g) > 1]


async def run(session: AsyncSession, scan: DuplicateScan) -> None:
    """Find the groups and store them (the caller commits)."""
    kind = scan.record_type
    tenant = scan.tenant_id
    model = models.Account if kind == "account" else models.Contact
    live = [model.tenant_id == tenant, model.deleted_at.is_(None)]
    rules = await active_rules(session, tenant, kind)
    pairs = _Pairs()
    for rule in rules:
        if rule.match in ("phone", "email"):
            column = model.phones_normalized if rule.match == "phone" else model.emails_normalized
            value = func.unnest(column).label("value")
            inner = select(model.id, model.name, value).where(*live).subquery()
            stmt = (
                select(inner.c.value, func.array_agg(func.json_build_array(inner.c.id, inner.c.name)))
                .group_by(inner.c.value)
                .having(func.count() > 1)
                .having(func.count() <= MAX_GROUP)
            )
            for v, members in (await session.execute(stmt)).all():
                pairs.link(kind, [tuple(m) for m in members], rule, 1.0, v)
        elif rule.match == "credit_code" and kind == "account":
            stmt = (
                select(model.credit_code, func.array_agg(func.json_build_array(model.id, model.name)))
                .where(*live, model.credit_code.is_not(None), model.credit_code != "")
                .group_by(model.credit_code)
                .having(func.count() > 1)
                .having(func.count() <= MAX_GROUP)
            )
            for v, members in (await session.execute(stmt)).all():
                pairs.link(kind, [tuple(m) for m in members], rule, 1.0, v)
        elif rule.match == "company_name" and kind == "account":
            await session.execute(text("SET LOCAL pg_trgm.similarity_threshold = 0.5"))
            a, b = models.Account.__table__.alias("a"), models.Account.__table__.alias("b")
            stmt = (
                select(a.c.id, a.c.name, a.c.alt_name, b.c.id, b.c.name, b.c.alt_name, a.c.name_key)
                .select_from(a.join(b, (a.c.tenant_id == b.c.tenant_id) & (a.c.id < b.c.id)))
                .where(
                    a.c.tenant_id == tenant,
                    a.c.deleted_at.is_(None),
                    b.c.deleted_at.is_(None),
                    a.c.name_key != "",
                    (a.c.name_key == b.c.name_key) | a.c.name_key.op("%")(b.c.name_key),
                )
                .limit(FUZZY_PAIR_LIMIT)
            )
            for a_id, a_name, a_alt, b_id, b_name, b_alt, key in (await session.execute(stmt)).all():
                score = max(
                    normalize.company_name_score(x, y)
                    for x in (a_name, a_alt)
                    for y in (b_name, b_alt)
                    if x and y
                )
                if score >= rule.threshold:
                    pairs.link(kind, [(a_id, a_name), (b_id, b_name)], rule, score, key)
        elif rule.match == "person_name_and_company" and kind == "contact":
            account = func.unnest(model.account_ids).label("account_id")
            inner = (
                select(model.id, model.name, model.name_key, account)
                .where(*live, model.name_key != "")
                .subquery()
            )
            stmt = (
                select(inner.c.name_key, func.array_agg(func.json_build_array(inner.c.id, inner.c.name)))
                .group_by(inner.c.account_id, inner.c.name_key)
                .having(func.count() > 1)
                .having(func.count() <= MAX_GROUP)
            )
            for key, members in (await session.execute(stmt)).all():
                members = [tuple(m) for m in members]
                first = members[0][1]
                scored = [
                    (i, n) for i, n in members if normalize.person_name_score(first, n) >= rule.threshold
                ]
                if len(scored) > 1:
                    best = min(normalize.person_name_score(first, n) for _, n in scored[1:])
                    pairs.link(kind, scored, rule, best, key)
    scan.records_scanned = int(
        await session.scalar(select(func.count()).select_from(model).where(*live)) or 0
    )
    found = 0
    for group in pairs.groups():
        session.add(
            DuplicateGroup(
                id=new_id(),
                tenant_id=tenant,
                scan_id=scan.id,
                record_type=kind,
                score=round(max(c.score for c in group), 3),
                members=[
                    {
                        "id": c.id,
                        "name": c.name,
                        "score": round(c.score, 3),
                        "rule_ids": c.rule_ids,
                        "matches": c.matches,
                        "matched_values": c.matched_values,
                    }
                    for c in group
                ],
            )
        )
        found += 1
    scan.groups_found = found
    scan.status = "succeeded"
    scan.finished_at = utcnow()
    await session.flush()
