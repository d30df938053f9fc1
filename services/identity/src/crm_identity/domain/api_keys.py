"""Partner API keys: scoped by roles, stored only as a hash, shown once, revocable, rate-limited."""

from __future__ import annotations

import secrets

from crm.identity.v1 import events_pb2, identity_pb2
from crm_kit.db import UnitOfWork, utcnow
from crm_kit.ids import new_id
from crm_kit.paging import Page, SortKey
from crm_kit.validation import Check
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_identity import models
from crm_identity.domain.common import api_key_pb, api_key_snapshot, caller, get_owned, sha256
from crm_identity.domain.grants import check_grant
from crm_identity.domain.users import _check_references

MAX_RATE = 100_000


def new_secret() -> tuple[str, str]:
    """`crm_<prefix>_<secret>`: the prefix identifies the key in lists and logs; only the hash is stored."""
    prefix = secrets.token_hex(4)
    return f"crm_{prefix}_{secrets.token_urlsafe(32)}", f"crm_{prefix}"


async def create(
    uow: UnitOfWork, request: identity_pb2.CreateApiKeyRequest, *, default_rate: int
) -> tuple[models.ApiKey, str]:
    principal = caller()
    check = Check()
    check.required("name", request.name)
    check.length("name", request.name.strip(), max_len=100)
    if not 0 <= request.rate_limit_per_minute <= MAX_RATE:
        check.fail("rate_limit_per_minute", f"must be between 1 and {MAX_RATE} (0 for the default)")
    if request.HasField("expires_at") and request.expires_at.ToDatetime(tzinfo=utcnow().tzinfo) <= utcnow():
        check.fail("expires_at", "must be in the future")
    await _check_references(uow.session, check, principal.tenant_id, "", list(request.role_ids))
    check.done()
    await check_grant(uow.session, role_ids=request.role_ids)
    secret, prefix = new_secret()
    key = models.ApiKey(
        id=new_id(),
        tenant_id=principal.tenant_id,
        name=request.name.strip(),
        prefix=prefix,
        secret_hash=sha256(secret),
        role_ids=list(request.role_ids),
        rate_limit_per_minute=request.rate_limit_per_minute or default_rate,
        expires_at=request.expires_at.ToDatetime(tzinfo=utcnow().tzinfo)
        if request.HasField("expires_at")
        else None,
        created_by=principal.actor_id,
    )
    uow.session.add(key)
    await uow.session.flush()
    await uow.session.refresh(key)
    uow.emit(
        events_pb2.ApiKeyCreated(api_key=api_key_pb(key)),
        aggregate_type="api_key",
        aggregate_id=key.id,
        aggregate_version=1,
        action="created",
        after=api_key_snapshot(key),
    )
    return key, secret


async def get(session: AsyncSession, key_id: str) -> models.ApiKey:
    return await get_owned(session, models.ApiKey, "api_key", key_id)


async def list_keys(
    session: AsyncSession, request: identity_pb2.ListApiKeysRequest
) -> tuple[list[models.ApiKey], str]:
    keys = [SortKey(models.ApiKey.id)]
    page = Page.of(request.page, len(keys))
    stmt = select(models.ApiKey).where(models.ApiKey.tenant_id == caller().tenant_id)
    rows = (await session.scalars(page.apply(stmt, keys))).all()
    return page.split(rows, lambda k: [k.id])


async def revoke(uow: UnitOfWork, key_id: str) -> models.ApiKey:
    key = await get_owned(uow.session, models.ApiKey, "api_key", key_id, lock=True)
    if key.revoked_at is None:
        _revoke(uow, key)
    return key


async def revoke_created_by(uow: UnitOfWork, user: models.User) -> None:
    """A deactivated user's keys stop working with them, and the keys those keys made (each revoked with its
    event, which the gateway follows to drop the key from its cache)."""
    creators = [user.id]
    while creators:
        keys = (
            await uow.session.scalars(
                select(models.ApiKey)
                .where(
                    models.ApiKey.tenant_id == user.tenant_id,
                    models.ApiKey.created_by.in_(creators),
                    models.ApiKey.revoked_at.is_(None),
                )
                .order_by(models.ApiKey.id)
                .with_for_update()
            )
        ).all()
        for key in keys:
            _revoke(uow, key)
        creators = [k.id for k in keys]


def _revoke(uow: UnitOfWork, key: models.ApiKey) -> None:
    before = api_key_snapshot(key)
    key.revoked_at = utcnow()
    uow.emit(
        events_pb2.ApiKeyRevoked(api_key=api_key_pb(key)),
        aggregate_type="api_key",
        aggregate_id=key.id,
        aggregate_version=2,
        action="revoked",
        before=before,
        after=api_key_snapshot(key),
    )
