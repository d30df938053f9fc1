"""Departments as a tree (集团 → 事业部 → 销售一部 …): create, move, rename, delete."""

from __future__ import annotations

from crm.identity.v1 import events_pb2, identity_pb2
from crm_kit.db import UnitOfWork, expect_version
from crm_kit.errors import Conflict
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.validation import Check, updatable
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_identity import models
from crm_identity.domain.common import (
    caller,
    department_pb,
    department_snapshot,
    get_owned,
)

UPDATABLE = ("name", "parent_id", "manager_user_id")


async def _check(
    session: AsyncSession, check: Check, *, name: str | None, parent_id: str, manager_user_id: str
) -> None:
    tenant_id = caller().tenant_id
    if name is not None:
        check.required("name", name)
        check.length("name", name.strip(), max_len=200)
    if parent_id:
        check.uuid("parent_id", parent_id)
        if not check.errors and not await session.scalar(
            select(models.Department.id).where(
                models.Department.id == parent_id, models.Department.tenant_id == tenant_id
            )
        ):
            check.fail("parent_id", "no such department")
    if manager_user_id:
        check.uuid("manager_user_id", manager_user_id)
        if not check.errors and not await session.scalar(
            select(models.User.id).where(
                models.User.id == manager_user_id, models.User.tenant_id == tenant_id
            )
        ):
            check.fail("manager_user_id", "no such user")


async def create(uow: UnitOfWork, request: identity_pb2.CreateDepartmentRequest) -> models.Department:
    check = Check()
    await _check(
        uow.session,
        check,
        name=request.name,
        parent_id=request.parent_id,
        manager_user_id=request.manager_user_id,
    )
    check.done()
    dept = models.Department(
        id=new_id(),
        tenant_id=caller().tenant_id,
        name=request.name.strip(),
        parent_id=request.parent_id or None,
        manager_user_id=request.manager_user_id or None,
        version=1,
    )
    uow.session.add(dept)
    await uow.session.flush()
    await uow.session.refresh(dept)
    uow.emit(
        events_pb2.DepartmentCreated(department=department_pb(dept)),
        aggregate_type="department",
        aggregate_id=dept.id,
        aggregate_version=1,
        action="created",
        after=department_snapshot(dept),
    )
    return dept


async def get(session: AsyncSession, department_id: str) -> models.Department:
    return await get_owned(session, models.Department, "department", department_id)


async def list_departments(
    session: AsyncSession, request: identity_pb2.ListDepartmentsRequest
) -> tuple[list[models.Department], str]:
    keys = [SortKey(models.Department.id)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.Department).where(models.Department.tenant_id == caller().tenant_id)
    if request.parent_id:
        stmt = stmt.where(models.Department.parent_id == request.parent_id)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda d: [d.id])


async def all_departments(session: AsyncSession, tenant_id: str) -> list[models.Department]:
    return list(
        (
            await session.scalars(select(models.Department).where(models.Department.tenant_id == tenant_id))
        ).all()
    )


async def _ancestors(session: AsyncSession, tenant_id: str, start: str) -> set[str]:
    parents = {d.id: d.parent_id for d in await all_departments(session, tenant_id)}
    seen: set[str] = set()
    node: str | None = start
    while node and node not in seen:
        seen.add(node)
        node = parents.get(node)
    return seen


async def update(uow: UnitOfWork, request: identity_pb2.UpdateDepartmentRequest) -> models.Department:
    paths = updatable(request.update_mask.paths, UPDATABLE)
    dept = await get_owned(uow.session, models.Department, "department", request.id, lock=True)
    expect_version(dept, request.expected_version)
    new = request.department
    check = Check()
    await _check(
        uow.session,
        check,
        name=new.name if "name" in paths else None,
        parent_id=new.parent_id if "parent_id" in paths else "",
        manager_user_id=new.manager_user_id if "manager_user_id" in paths else "",
    )
    if "parent_id" in paths and new.parent_id and not check.errors:
        # Moving under itself or one of its own sub-departments would make a cycle.
        if dept.id in await _ancestors(uow.session, dept.tenant_id, new.parent_id):
            check.fail("parent_id", "cannot move a department under itself or its sub-departments")
    check.done()
    before = department_snapshot(dept)
    if "name" in paths:
        dept.name = new.name.strip()
    if "parent_id" in paths:
        dept.parent_id = new.parent_id or None
    if "manager_user_id" in paths:
        dept.manager_user_id = new.manager_user_id or None
    after = department_snapshot(dept)
    if after == before:
        return dept
    dept.version += 1
    await uow.session.flush()
    await uow.session.refresh(dept)
    uow.emit(
        events_pb2.DepartmentUpdated(department=department_pb(dept)),
        aggregate_type="department",
        aggregate_id=dept.id,
        aggregate_version=dept.version,
        action="updated",
        before=before,
        after=after,
    )
    return dept


async def delete(uow: UnitOfWork, department_id: str, *, expected_version: int = 0) -> None:
    dept = await get_owned(uow.session, models.Department, "department", department_id, lock=True)
    expect_version(dept, expected_version)
    session = uow.session
    if await session.scalar(
        select(models.Department.id).where(models.Department.parent_id == dept.id).limit(1)
    ):
        raise Conflict(
            "the department has sub-departments; move or delete them first", reason="department_not_empty"
        )
    if await session.scalar(select(models.User.id).where(models.User.department_id == dept.id).limit(1)):
        raise Conflict("the department has members; move them first", reason="department_not_empty")
    before = department_snapshot(dept)
    snapshot = department_pb(dept)
    await session.delete(dept)
    uow.emit(
        events_pb2.DepartmentDeleted(department=snapshot),
        aggregate_type="department",
        aggregate_id=dept.id,
        aggregate_version=dept.version + 1,
        action="deleted",
        before=before,
    )
