"""Lead pools (线索池 / 公海): several per tenant, each with members, managers and its rules (cap, reclaim
deadlines, warning time, cooldown)."""

from __future__ import annotations

from typing import Any

from crm.sales.v1 import events_pb2
from crm.sales.v1 import leads_pb2 as pb
from crm_kit.db import UnitOfWork, expect_version
from crm_kit.errors import Conflict
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.validation import Check, updatable
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_sales import models
from crm_sales.domain.common import (
    People,
    caller,
    get_owned,
    snapshot,
    to_message,
)

SETTINGS = (
    "claim_cap",
    "follow_up_days",
    "conversion_days",
    "warn_hours_before",
    "cooldown_hours",
)
UPDATABLE = ("name", "description", "member_ids", "manager_ids", *SETTINGS)
AUDITED = ("name", "description", "manager_ids", *SETTINGS)


async def member_ids(session: AsyncSession, pool_id: str) -> list[str]:
    return list(
        (
            await session.scalars(
                select(models.PoolMember.user_id)
                .where(models.PoolMember.pool_id == pool_id)
                .order_by(models.PoolMember.user_id)
            )
        ).all()
    )


async def pool_pb(session: AsyncSession, pool: models.LeadPool) -> pb.LeadPool:
    return to_message(pool, pb.LeadPool, member_ids=await member_ids(session, pool.id))


def _check(check: Check, values: dict[str, Any]) -> None:
    if "name" in values:
        check.required("name", values["name"])
        check.length("name", values["name"].strip(), max_len=200)
    if "description" in values:
        check.length("description", values["description"], max_len=2000)
    for name in SETTINGS:
        if name in values and not 0 <= values[name] <= 100_000:
            check.fail(name, "must be between 0 and 100000")
    for name in ("member_ids", "manager_ids"):
        for i, uid in enumerate(values.get(name, [])):
            check.uuid(f"{name}[{i}]", uid)
        if len(values.get(name, [])) > 1000:
            check.fail(name, "at most 1000 people")


async def _people_exist(
    people: People, check: Check, values: dict[str, Any], before: dict[str, list[str]] | None = None
) -> None:
    """The members and managers named (newly) are users of the caller's company."""
    if check.errors:
        return
    for name in ("member_ids", "manager_ids"):
        if name in values:
            known = set((before or {}).get(name, []))
            await people.check_users(check, name, [u if u not in known else "" for u in values[name]])


async def _set_members(session: AsyncSession, pool: models.LeadPool, users: list[str]) -> None:
    await session.execute(delete(models.PoolMember).where(models.PoolMember.pool_id == pool.id))
    for uid in sorted(set(users)):
        session.add(models.PoolMember(tenant_id=pool.tenant_id, pool_id=pool.id, user_id=uid))


async def create(uow: UnitOfWork, request: pb.CreateLeadPoolRequest, *, people: People) -> models.LeadPool:
    values = {
        "name": request.name,
        "description": request.description,
        "member_ids": list(request.member_ids),
        "manager_ids": list(request.manager_ids),
        **{k: getattr(request, k) for k in SETTINGS},
    }
    check = Check()
    check.required("name", request.name)
    _check(check, values)
    await _people_exist(people, check, values)
    check.done()
    pool = models.LeadPool(
        id=new_id(),
        tenant_id=caller().tenant_id,
        name=request.name.strip(),
        description=request.description.strip(),
        manager_ids=sorted(set(request.manager_ids)),
        version=1,
        **{k: getattr(request, k) for k in SETTINGS},
    )
    uow.session.add(pool)
    await uow.session.flush()
    await _set_members(uow.session, pool, list(request.member_ids))
    await uow.session.flush()
    await uow.session.refresh(pool)
    message = await pool_pb(uow.session, pool)
    uow.emit(
        events_pb2.LeadPoolChanged(pool=message),
        aggregate_type="lead_pool",
        aggregate_id=pool.id,
        aggregate_version=1,
        action="created",
        after={**snapshot(pool, AUDITED), "member_ids": list(message.member_ids)},
    )
    return pool


async def get(session: AsyncSession, pool_id: str, *, lock: bool = False) -> models.LeadPool:
    return await get_owned(session, models.LeadPool, "lead_pool", pool_id, lock=lock)


async def list_pools(session: AsyncSession, request: pb.ListLeadPoolsRequest) -> tuple[list[Any], str]:
    keys = [SortKey(models.LeadPool.id)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.LeadPool).where(models.LeadPool.tenant_id == caller().tenant_id)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def update(uow: UnitOfWork, request: pb.UpdateLeadPoolRequest, *, people: People) -> models.LeadPool:
    paths = list(request.update_mask.paths)
    updatable(paths, UPDATABLE)
    pool = await get(uow.session, request.id, lock=True)
    expect_version(pool, request.expected_version)
    new = request.pool
    values = {p: list(getattr(new, p)) if p.endswith("_ids") else getattr(new, p) for p in paths}
    check = Check()
    _check(check, values)
    current = {
        "member_ids": await member_ids(uow.session, pool.id),
        "manager_ids": list(pool.manager_ids or []),
    }
    await _people_exist(people, check, values, current)
    check.done()
    before = {**snapshot(pool, AUDITED), "member_ids": current["member_ids"]}
    for p, v in values.items():
        if p == "member_ids":
            await _set_members(uow.session, pool, v)
        elif p == "manager_ids":
            pool.manager_ids = sorted(set(v))
        else:
            setattr(pool, p, v.strip() if isinstance(v, str) else v)
    await uow.session.flush()
    after = {**snapshot(pool, AUDITED), "member_ids": await member_ids(uow.session, pool.id)}
    if after == before:
        return pool
    pool.version += 1
    await uow.session.flush()
    await uow.session.refresh(pool)
    uow.emit(
        events_pb2.LeadPoolChanged(pool=await pool_pb(uow.session, pool)),
        aggregate_type="lead_pool",
        aggregate_id=pool.id,
        aggregate_version=pool.version,
        action="updated",
        before=before,
        after=after,
    )
    return pool


async def delete_pool(uow: UnitOfWork, pool_id: str, expected_version: int) -> None:
    pool = await get(uow.session, pool_id, lock=True)
    expect_version(pool, expected_version)
    if await uow.session.scalar(select(models.Lead.id).where(models.Lead.pool_id == pool.id).limit(1)):
        raise Conflict("the pool still holds leads; move them first", reason="lead_pool_not_empty")
    message = await pool_pb(uow.session, pool)
    await uow.session.execute(delete(models.PoolMember).where(models.PoolMember.pool_id == pool.id))
    await uow.session.delete(pool)
    uow.emit(
        events_pb2.LeadPoolChanged(pool=message),
        aggregate_type="lead_pool",
        aggregate_id=pool.id,
        aggregate_version=pool.version + 1,
        action="deleted",
        before=snapshot(pool, AUDITED),
    )
