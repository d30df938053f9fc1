"""Users of a tenant: invite, read, list, update, activate, deactivate."""

from __future__ import annotations

import datetime as dt

from crm.identity.v1 import events_pb2, identity_pb2
from crm_kit.db import UnitOfWork, expect_version, utcnow
from crm_kit.errors import AlreadyExists, Conflict, PermissionDenied
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.validation import LOCALES, Check, updatable
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_identity import models
from crm_identity.domain.common import (
    caller,
    get_owned,
    random_token,
    sha256,
    user_pb,
    user_snapshot,
)
from crm_identity.domain.grants import check_grant

UPDATABLE = ("name", "department_id", "role_ids", "title", "phone", "locale")
STATUS_NAMES = {v: k for k, v in {"invited": 1, "active": 2, "deactivated": 3, "pending": 4}.items()}


async def _check_references(
    session: AsyncSession, check: Check, tenant_id: str, department_id: str, role_ids: list[str]
) -> None:
    if department_id:
        check.uuid("department_id", department_id)
        if not check.errors and not await session.scalar(
            select(models.Department.id).where(
                models.Department.id == department_id, models.Department.tenant_id == tenant_id
            )
        ):
            check.fail("department_id", "no such department")
    for i, rid in enumerate(role_ids):
        check.uuid(f"role_ids[{i}]", rid)
    wanted = {r for r in role_ids if len(r) <= 36}
    if wanted and len(wanted) == len(role_ids):
        found = set(
            (
                await session.scalars(
                    select(models.Role.id).where(
                        models.Role.id.in_(wanted), models.Role.tenant_id == tenant_id
                    )
                )
            ).all()
        )
        for rid in sorted(wanted - found):
            check.fail("role_ids", f"no such role: {rid}")
    if len(set(role_ids)) != len(role_ids):
        check.fail("role_ids", "contains duplicates")


def _check_profile(check: Check, *, name: str, title: str, phone: str, locale: str) -> None:
    check.length("name", name, max_len=200)
    check.length("title", title, max_len=200)
    check.length("phone", phone, max_len=50)
    check.one_of("locale", locale, LOCALES)


async def invite(
    uow: UnitOfWork, request: identity_pb2.CreateUserRequest, *, ttl_days: int
) -> tuple[models.User, str]:
    principal = caller()
    check = Check()
    email = check.email("email", request.email.strip()).lower()
    check.required("name", request.name)
    _check_profile(
        check, name=request.name.strip(), title=request.title, phone=request.phone, locale=request.locale
    )
    await _check_references(
        uow.session, check, principal.tenant_id, request.department_id, list(request.role_ids)
    )
    check.done()
    await check_grant(uow.session, role_ids=request.role_ids)
    # A verified holder keeps the address, and so does anyone of this company; an unverified sign-up elsewhere
    # does not stop the invitation (accepting it proves the mailbox and releases that sign-up), nor do other
    # companies' pending invitations.
    if await uow.session.scalar(
        select(models.User.id).where(
            models.User.email == email,
            or_(
                (models.User.status != "invited") & models.User.email_verified_at.is_not(None),
                models.User.tenant_id == principal.tenant_id,
            ),
        )
    ):
        raise AlreadyExists("a user with this email already exists", reason="email_taken")
    token = random_token()
    user = models.User(
        id=new_id(),
        tenant_id=principal.tenant_id,
        email=email,
        name=request.name.strip(),
        status="invited",
        department_id=request.department_id or None,
        role_ids=list(request.role_ids),
        title=request.title.strip(),
        phone=request.phone.strip(),
        locale=request.locale or "zh-CN",
        invitation_hash=sha256(token),
        invitation_expires_at=utcnow() + dt.timedelta(days=ttl_days),
        version=1,
    )
    uow.session.add(user)
    await uow.session.flush()
    await uow.session.refresh(user)
    uow.emit(
        events_pb2.UserInvited(user=user_pb(user), email=user.email),
        aggregate_type="user",
        aggregate_id=user.id,
        aggregate_version=1,
        action="invited",
        after=user_snapshot(user),
    )
    return user, token


async def get(session: AsyncSession, user_id: str) -> models.User:
    return await get_owned(session, models.User, "user", user_id)


async def list_users(
    session: AsyncSession, request: identity_pb2.ListUsersRequest
) -> tuple[list[models.User], str]:
    principal = caller()
    keys = [SortKey(models.User.id)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.User).where(models.User.tenant_id == principal.tenant_id)
    if request.department_id:
        stmt = stmt.where(models.User.department_id == request.department_id)
    if request.status:
        stmt = stmt.where(models.User.status == STATUS_NAMES.get(request.status, ""))
    if request.q:
        like = request.q.strip().lower().replace("%", r"\%").replace("_", r"\_") + "%"
        stmt = stmt.where(or_(func.lower(models.User.name).like(like), models.User.email.like(like)))
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda u: [u.id])


async def update(uow: UnitOfWork, request: identity_pb2.UpdateUserRequest) -> models.User:
    principal = caller()
    paths = updatable(request.update_mask.paths, UPDATABLE)
    user = await get_owned(uow.session, models.User, "user", request.id, lock=True)
    expect_version(user, request.expected_version)
    new = request.user
    check = Check()
    if "name" in paths:
        check.required("name", new.name)
    _check_profile(
        check,
        name=new.name.strip() if "name" in paths else "",
        title=new.title if "title" in paths else "",
        phone=new.phone if "phone" in paths else "",
        locale=new.locale if "locale" in paths else "",
    )
    await _check_references(
        uow.session,
        check,
        principal.tenant_id,
        new.department_id if "department_id" in paths else "",
        list(new.role_ids) if "role_ids" in paths else [],
    )
    check.done()
    if "role_ids" in paths:
        old, wanted = list(user.role_ids or []), list(new.role_ids)
        if set(old) != set(wanted):
            if user.id == principal.actor_id:
                raise PermissionDenied("you cannot change your own roles", reason="own_roles")
            await check_grant(
                uow.session,
                role_ids=[r for r in wanted if r not in old],
                removed_role_ids=[r for r in old if r not in wanted],
            )
    before = user_snapshot(user)
    for path in paths:
        value = getattr(new, path)
        if path == "role_ids":
            value = list(value)
        elif path == "department_id":
            value = value or None
        elif isinstance(value, str):
            value = value.strip()
        setattr(user, path, value)
    after = user_snapshot(user)
    if after == before:
        return user
    user.version += 1
    await uow.session.flush()
    await uow.session.refresh(user)
    uow.emit(
        events_pb2.UserUpdated(user=user_pb(user)),
        aggregate_type="user",
        aggregate_id=user.id,
        aggregate_version=user.version,
        action="updated",
        before=before,
        after=after,
    )
    return user


async def set_active(uow: UnitOfWork, user_id: str, *, active: bool) -> models.User:
    principal = caller()
    user = await get_owned(uow.session, models.User, "user", user_id, lock=True)
    if not active and user.id == principal.actor_id:
        raise Conflict("you cannot deactivate yourself", reason="self_deactivation")
    if active and user.status == "invited":
        raise Conflict("an invited user becomes active by accepting the invitation", reason="still_invited")
    if active and user.status == "pending":
        raise Conflict(
            "a pending sign-up becomes active by verifying its address", reason="pending_verification"
        )
    target = "active" if active else "deactivated"
    if user.status == target:
        return user
    before = user_snapshot(user)
    user.status = target
    user.version += 1
    await uow.session.flush()
    await uow.session.refresh(user)
    event = (
        events_pb2.UserActivated(user=user_pb(user))
        if active
        else events_pb2.UserDeactivated(user=user_pb(user))
    )
    uow.emit(
        event,
        aggregate_type="user",
        aggregate_id=user.id,
        aggregate_version=user.version,
        action="activated" if active else "deactivated",
        before=before,
        after=user_snapshot(user),
    )
    return user
