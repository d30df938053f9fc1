"""Sign-up: a new company (tenant), its built-in administrator role and its first user."""

from __future__ import annotations

from crm.common.v1 import event_pb2
from crm.identity.v1 import events_pb2
from crm_kit.db import UnitOfWork, utcnow
from crm_kit.errors import TooManyRequests
from crm_kit.ids import new_id
from crm_kit.validation import LOCALES, Check

from crm_identity import models
from crm_identity.domain import throttles, verification
from crm_identity.domain.common import (
    ADMIN_PERMISSIONS,
    role_pb,
    role_snapshot,
    tenant_pb,
    user_pb,
    user_snapshot,
)
from crm_identity.domain.passwords import Passwords, check_password
from crm_identity.settings import IdentitySettings

ADMIN_ROLE_NAME = "Administrator"


async def sign_up(
    uow: UnitOfWork,
    *,
    tenant_name: str,
    email: str,
    password: str,
    name: str,
    locale: str,
    passwords: Passwords,
    settings: IdentitySettings,
) -> tuple[models.Tenant, models.User, str]:
    """Returns the tenant, its first user and the user's email verification token (to be mailed). When an
    unproven sign-up holds the address, the new one is pending: it becomes active (and the other is released)
    when it verifies the address."""
    check = Check()
    check.required("tenant_name", tenant_name)
    check.length("tenant_name", tenant_name.strip(), max_len=200)
    email = check.email("email", email.strip()).lower()
    check.required("name", name)
    check.length("name", name.strip(), max_len=200)
    check_password(check, "password", password)
    check.one_of("locale", locale, LOCALES)
    check.done()

    session = uow.session
    verification_days = settings.email_verification_days
    free = await verification.claim(uow, email, release_fresh=False, days=verification_days)
    if not free and await throttles.claim(uow.session, verification.mail_throttle(settings, email), utcnow()):
        # Each pending sign-up mails the address: as many as verification mails asked for again.
        raise TooManyRequests(
            "a verification mail was sent to this address a moment ago: wait a few minutes",
            reason="too_many_mails",
        )
    tenant = models.Tenant(id=new_id(), name=tenant_name.strip())
    admin = models.Role(
        id=new_id(),
        tenant_id=tenant.id,
        name=ADMIN_ROLE_NAME,
        description="Everything, everywhere in this company",
        permissions=ADMIN_PERMISSIONS,
        built_in=True,
        version=1,
    )
    user = models.User(
        id=new_id(),
        tenant_id=tenant.id,
        email=email,
        name=name.strip(),
        status="active" if free else verification.PENDING,
        role_ids=[admin.id],
        locale=locale or "zh-CN",
        password_hash=await passwords.hash(password),
        version=1,
    )
    token = verification.start(user, days=verification_days)
    session.add_all([tenant, admin])
    await session.flush()
    session.add(user)
    await session.flush()
    await session.refresh(tenant)
    await session.refresh(user)
    await session.refresh(admin)

    actor = event_pb2.Actor(type=event_pb2.ACTOR_TYPE_USER, id=user.id, name=user.name)
    common = {"tenant_id": tenant.id, "actor": actor}
    uow.emit(
        events_pb2.TenantCreated(tenant=tenant_pb(tenant)),
        aggregate_type="tenant",
        aggregate_id=tenant.id,
        aggregate_version=1,
        action="created",
        after={"name": tenant.name},
        **common,
    )
    uow.emit(
        events_pb2.RoleCreated(role=role_pb(admin)),
        aggregate_type="role",
        aggregate_id=admin.id,
        aggregate_version=1,
        action="created",
        after=role_snapshot(admin),
        **common,
    )
    uow.emit(
        events_pb2.UserActivated(user=user_pb(user)),
        aggregate_type="user",
        aggregate_id=user.id,
        aggregate_version=1,
        action="created",
        after=user_snapshot(user),
        **common,
    )
    return tenant, user, token
