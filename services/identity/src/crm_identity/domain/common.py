"""What the identity domains share: conversions to the contract's messages, authorization, lookups."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from crm.identity.v1 import identity_pb2
from crm_kit import context
from crm_kit.context import Principal
from crm_kit.errors import Unauthenticated, not_found
from crm_kit.policy import Decision, PolicyCache
from crm_kit.timestamps import ts
from google.protobuf import json_format
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_identity import models

ADMIN_PERMISSIONS = [{"object": "*", "actions": ["*"], "data_scope": "DATA_SCOPE_ALL"}]




def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def random_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def caller() -> Principal:
    principal = context.current().principal
    if principal is None:
        raise Unauthenticated("a credential is required", reason="missing_credential")
    return principal


async def authorize(policies: PolicyCache, obj: str, action: str) -> Decision:
    principal = caller()
    return (await policies.decide(principal, obj, action)).require()


async def get_owned(
    session: AsyncSession, model: Any, object_type: str, object_id: str, *, lock: bool = False
) -> Any:
    """A row of the caller's tenant by id; any other tenant's id (or a malformed one) is simply not found."""
    stmt = select(model).where(model.id == object_id, model.tenant_id == caller().tenant_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).scalar_one_or_none() if len(object_id) <= 36 else None
    if row is None:
        raise not_found(object_type, object_id)
    return row


# ---------------------------------------------------------------- messages


USER_STATUS = {
    "invited": identity_pb2.USER_STATUS_INVITED,
    "active": identity_pb2.USER_STATUS_ACTIVE,
    "deactivated": identity_pb2.USER_STATUS_DEACTIVATED,
}


def user_pb(u: models.User) -> identity_pb2.User:
    return identity_pb2.User(
        id=u.id,
        email=u.email,
        name=u.name,
        status=USER_STATUS[u.status],
        department_id=u.department_id or "",
        role_ids=list(u.role_ids or []),
        title=u.title or "",
        phone=u.phone or "",
        locale=u.locale or "",
        totp_enabled=bool(u.totp_secret),
        last_login_at=ts(u.last_login_at),
        created_at=ts(u.created_at),
        updated_at=ts(u.updated_at),
        version=u.version,
    )


def user_snapshot(u: models.User) -> dict[str, Any]:
    """The audited fields of a user (never secrets)."""
    return {
        "email": u.email,
        "name": u.name,
        "status": u.status,
        "department_id": u.department_id or "",
        "role_ids": list(u.role_ids or []),
        "title": u.title or "",
        "phone": u.phone or "",
        "locale": u.locale or "",
        "totp_enabled": bool(u.totp_secret),
    }


def department_pb(d: models.Department) -> identity_pb2.Department:
    return identity_pb2.Department(
        id=d.id,
        name=d.name,
        parent_id=d.parent_id or "",
        manager_user_id=d.manager_user_id or "",
        created_at=ts(d.created_at),
        updated_at=ts(d.updated_at),
        version=d.version,
    )


def department_snapshot(d: models.Department) -> dict[str, Any]:
    return {"name": d.name, "parent_id": d.parent_id or "", "manager_user_id": d.manager_user_id or ""}


def role_pb(r: models.Role) -> identity_pb2.Role:
    role = identity_pb2.Role(
        id=r.id,
        name=r.name,
        description=r.description or "",
        built_in=r.built_in,
        created_at=ts(r.created_at),
        updated_at=ts(r.updated_at),
        version=r.version,
    )
    for p in r.permissions or []:
        json_format.ParseDict(p, role.permissions.add())
    return role


def role_snapshot(r: models.Role) -> dict[str, Any]:
    return {"name": r.name, "description": r.description or "", "permissions": r.permissions or []}


def api_key_pb(k: models.ApiKey) -> identity_pb2.ApiKey:
    return identity_pb2.ApiKey(
        id=k.id,
        name=k.name,
        prefix=k.prefix,
        role_ids=list(k.role_ids or []),
        rate_limit_per_minute=k.rate_limit_per_minute,
        expires_at=ts(k.expires_at),
        last_used_at=ts(k.last_used_at),
        revoked_at=ts(k.revoked_at),
        created_by=k.created_by,
        created_at=ts(k.created_at),
    )


def api_key_snapshot(k: models.ApiKey) -> dict[str, Any]:
    return {
        "name": k.name,
        "prefix": k.prefix,
        "role_ids": list(k.role_ids or []),
        "rate_limit_per_minute": k.rate_limit_per_minute,
        "revoked": k.revoked_at is not None,
    }
