"""Roles: named sets of permissions per object and action, with a data scope and field rules each."""

from __future__ import annotations

import re
from typing import Any

from crm.identity.v1 import events_pb2, identity_pb2
from crm_kit.db import UnitOfWork, expect_version
from crm_kit.errors import AlreadyExists, Conflict
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.policy import ANY
from crm_kit.validation import Check, updatable
from google.protobuf import json_format
from sqlalchemy import any_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_identity import models
from crm_identity.domain.common import (
    caller,
    department_pb,
    get_owned,
    role_pb,
    role_snapshot,
)
from crm_identity.domain.departments import all_departments

UPDATABLE = ("name", "description", "permissions")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
ACTIONS = ("create", "read", "update", "delete", "export", "import", "assign", "approve", "merge", ANY)


def permissions_json(check: Check, permissions: Any) -> list[dict[str, Any]]:
    """Validate and store permissions as the contract's JSON (enum names), so reading them back is exact."""
    out = []
    seen = set()
    for i, p in enumerate(permissions):
        where = f"permissions[{i}]"
        if p.object != ANY and not NAME.match(p.object):
            check.fail(f"{where}.object", "must be an object name like 'account', or '*'")
        if p.object in seen:
            check.fail(f"{where}.object", "appears twice; put all its actions in one permission")
        seen.add(p.object)
        if not p.actions:
            check.fail(f"{where}.actions", "is required")
        for a in p.actions:
            if a not in ACTIONS:
                check.fail(f"{where}.actions", f"unknown action {a!r}; one of {', '.join(ACTIONS)}")
        for j, rule in enumerate(p.field_rules):
            if not NAME.match(rule.field):
                check.fail(f"{where}.field_rules[{j}].field", "must be a field name")
            if rule.access == identity_pb2.FIELD_ACCESS_UNSPECIFIED:
                check.fail(f"{where}.field_rules[{j}].access", "is required")
        normalised = identity_pb2.Permission()
        normalised.CopyFrom(p)
        if not normalised.data_scope:
            normalised.data_scope = identity_pb2.DATA_SCOPE_OWN
        out.append(json_format.MessageToDict(normalised, preserving_proto_field_name=True))
    return out


async def _check_grant(session: AsyncSession, permissions: Any) -> None:
    from crm_identity.domain.grants import check_grant  # grants reads roles: imported here, not at the top

    await check_grant(session, permissions=permissions)


async def _name_taken(session: AsyncSession, tenant_id: str, name: str, exclude: str = "") -> bool:
    stmt = select(models.Role.id).where(models.Role.tenant_id == tenant_id, models.Role.name == name)
    if exclude:
        stmt = stmt.where(models.Role.id != exclude)
    return bool(await session.scalar(stmt))


async def create(uow: UnitOfWork, request: identity_pb2.CreateRoleRequest) -> models.Role:
    tenant_id = caller().tenant_id
    check = Check()
    check.required("name", request.name)
    check.length("name", request.name.strip(), max_len=100)
    check.length("description", request.description, max_len=2000)
    perms = permissions_json(check, request.permissions)
    check.done()
    await _check_grant(uow.session, request.permissions)
    if await _name_taken(uow.session, tenant_id, request.name.strip()):
        raise AlreadyExists("a role with this name exists", reason="role_name_taken")
    role = models.Role(
        id=new_id(),
        tenant_id=tenant_id,
        name=request.name.strip(),
        description=request.description.strip(),
        permissions=perms,
        version=1,
    )
    uow.session.add(role)
    await uow.session.flush()
    await uow.session.refresh(role)
    uow.emit(
        events_pb2.RoleCreated(role=role_pb(role)),
        aggregate_type="role",
        aggregate_id=role.id,
        aggregate_version=1,
        action="created",
        after=role_snapshot(role),
    )
    return role


async def get(session: AsyncSession, role_id: str) -> models.Role:
    return await get_owned(session, models.Role, "role", role_id)


async def list_roles(
    session: AsyncSession, request: identity_pb2.ListRolesRequest
) -> tuple[list[models.Role], str]:
    keys = [SortKey(models.Role.id)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.Role).where(models.Role.tenant_id == caller().tenant_id)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda r: [r.id])


async def update(uow: UnitOfWork, request: identity_pb2.UpdateRoleRequest) -> models.Role:
    paths = updatable(request.update_mask.paths, UPDATABLE)
    role = await get_owned(uow.session, models.Role, "role", request.id, lock=True)
    expect_version(role, request.expected_version)
    if role.built_in and "permissions" in paths:
        raise Conflict("the built-in administrator role's permissions cannot change", reason="built_in_role")
    new = request.role
    check = Check()
    if "name" in paths:
        check.required("name", new.name)
        check.length("name", new.name.strip(), max_len=100)
    if "description" in paths:
        check.length("description", new.description, max_len=2000)
    perms = permissions_json(check, new.permissions) if "permissions" in paths else role.permissions
    check.done()
    if "permissions" in paths:
        await _check_grant(uow.session, new.permissions)
    if "name" in paths and await _name_taken(uow.session, role.tenant_id, new.name.strip(), exclude=role.id):
        raise AlreadyExists("a role with this name exists", reason="role_name_taken")
    before = role_snapshot(role)
    if "name" in paths:
        role.name = new.name.strip()
    if "description" in paths:
        role.description = new.description.strip()
    role.permissions = perms
    after = role_snapshot(role)
    if after == before:
        return role
    role.version += 1
    await uow.session.flush()
    await uow.session.refresh(role)
    uow.emit(
        events_pb2.RoleUpdated(role=role_pb(role)),
        aggregate_type="role",
        aggregate_id=role.id,
        aggregate_version=role.version,
        action="updated",
        before=before,
        after=after,
    )
    return role


async def delete(uow: UnitOfWork, role_id: str, *, expected_version: int = 0) -> None:
    role = await get_owned(uow.session, models.Role, "role", role_id, lock=True)
    expect_version(role, expected_version)
    if role.built_in:
        raise Conflict("the built-in administrator role cannot be deleted", reason="built_in_role")
    session = uow.session
    in_use = await session.scalar(
        select(models.User.id)
        .where(models.User.tenant_id == role.tenant_id, role.id == any_(models.User.role_ids))
        .limit(1)
    ) or await session.scalar(
        select(models.ApiKey.id)
        .where(
            models.ApiKey.tenant_id == role.tenant_id,
            role.id == any_(models.ApiKey.role_ids),
            models.ApiKey.revoked_at.is_(None),
        )
        .limit(1)
    )
    if in_use:
        raise Conflict("the role is still given to users or API keys", reason="role_in_use")
    before = role_snapshot(role)
    snapshot = role_pb(role)
    await session.delete(role)
    uow.emit(
        events_pb2.RoleDeleted(role=snapshot),
        aggregate_type="role",
        aggregate_id=role.id,
        aggregate_version=role.version + 1,
        action="deleted",
        before=before,
    )


async def load_policy(session: AsyncSession, tenant_id: str) -> identity_pb2.Policy:
    roles = (await session.scalars(select(models.Role).where(models.Role.tenant_id == tenant_id))).all()
    departments = await all_departments(session, tenant_id)
    return identity_pb2.Policy(
        tenant_id=tenant_id,
        roles=[role_pb(r) for r in roles],
        departments=[department_pb(d) for d in departments],
    )
