"""What the identity domains share: conversions to the contract's messages, authorization, lookups."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from crm.identity.v1 import identity_pb2
from crm_kit.context import caller as caller  # re-exported, like the two below
from crm_kit.db import get_owned as get_owned
from crm_kit.policy import authorize as authorize
from crm_kit.timestamps import ts
from google.protobuf import json_format

from crm_identity import models

ADMIN_PERMISSIONS = [{"object": "*", "actions": ["*"], "data_scope": "DATA_SCOPE_ALL"}]


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def random_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


# ---------------------------------------------------------------- messages


USER_STATUS = {
    "invited": identity_pb2.USER_STATUS_INVITED,
    "active": identity_pb2.USER_STATUS_ACTIVE,
    "deactivated": identity_pb2.USER_STATUS_DEACTIVATED,
    "pending": identity_pb2.USER_STATUS_PENDING,
}


def tenant_pb(t: models.Tenant) -> identity_pb2.Tenant:
    return identity_pb2.Tenant(id=t.id, name=t.name, created_at=ts(t.created_at))


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
        email_verified=u.email_verified_at is not None,
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
        "email_verified": u.email_verified_at is not None,
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
