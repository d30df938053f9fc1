"""The identity service's tables. Every business table carries tenant_id; ids are UUIDv7 strings."""

from __future__ import annotations

import datetime as dt
from typing import Any

from crm_kit.db import Base, TenantOwned, Timestamped

# Kit tables (outbox, inbox) live on the same metadata.
from crm_kit.events import outbox as _outbox
from crm_kit.ids import new_id
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column


def _id() -> Mapped[str]:
    return mapped_column(String(36), primary_key=True, default=new_id)


class Versioned:
    version: Mapped[int] = mapped_column(BigInteger, default=1)


class Tenant(Timestamped, Base):
    __tablename__ = "tenants"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(200))
    # The company's language, chosen at sign-up: its default roles, pipeline and rules are named in it.
    locale: Mapped[str] = mapped_column(String(10), default="zh-CN", server_default="zh-CN")


class User(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "users"
    id: Mapped[str] = _id()
    # Held by one signed-up or joined user across tenants (signing in names no tenant); invitations of several
    # companies and pending sign-ups may wait beside it (see the unique index below).
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    department_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    role_ids: Mapped[list[str]] = mapped_column(ARRAY(String(36)), default=list)
    title: Mapped[str] = mapped_column(String(200), default="")
    phone: Mapped[str] = mapped_column(String(50), default="")
    locale: Mapped[str] = mapped_column(String(10), default="zh-CN")
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    totp_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    totp_pending_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    totp_last_step: Mapped[int] = mapped_column(BigInteger, default=0)
    invitation_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    invitation_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Set when the address is proven: the emailed link followed, or an invitation accepted.
    email_verified_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    email_verification_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    email_verification_expires_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )

    __table_args__ = (
        Index("ix_users_tenant_department", "tenant_id", "department_id"),
        Index("ix_users_email", "email"),
        Index(
            "uq_users_email_holder",
            "email",
            unique=True,
            postgresql_where=text("status NOT IN ('invited', 'pending')"),
        ),
    )


class LoginThrottle(Base):
    """Failed sign-ins counted per account, per client address and per both (keys are hashes)."""

    __tablename__ = "login_throttles"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    # Indexed: each failure also clears a few counts older than a day, so the table holds about a day of them.
    last_failure_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


class Department(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "departments"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(200))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("departments.id"), nullable=True)
    manager_user_id: Mapped[str | None] = mapped_column(String(36), nullable=True)

    __table_args__ = (
        # Sibling names are unique; top-level departments (no parent) too.
        Index(
            "uq_departments_sibling_name",
            "tenant_id",
            text("coalesce(parent_id, '')"),
            "name",
            unique=True,
        ),
    )


class Role(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "roles"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    # [{"object": "account", "actions": ["read"], "data_scope": "DATA_SCOPE_OWN", "field_rules": [...]}]
    permissions: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    built_in: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (UniqueConstraint("tenant_id", "name"),)


class ApiKey(TenantOwned, Timestamped, Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(20))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role_ids: Mapped[list[str]] = mapped_column(ARRAY(String(36)), default=list)
    rate_limit_per_minute: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_by: Mapped[str] = mapped_column(String(36))


class RefreshToken(TenantOwned, Base):
    """One refresh token of a sign-in 'family'; each use rotates it. A used token seen again means theft:
    the whole family is revoked (reuse detection)."""

    __tablename__ = "refresh_tokens"
    id: Mapped[str] = _id()
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    family_id: Mapped[str] = mapped_column(String(36), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# The audit trail's columns that hold an envelope's text, and the envelope field each holds. Their sizes are the
# kit's bounds on those fields (`crm_kit.events.outbox.ENVELOPE_TEXT_LIMITS`), so every event the kit lets
# through fits: a record the trail cannot store would be a gap in it.
AUDIT_ENVELOPE_FIELDS = {
    "tenant_id": "tenant_id",
    "actor_id": "actor.id",
    "actor_name": "actor.name",
    "object_type": "aggregate_type",
    "object_id": "aggregate_id",
    "action": "action",
    "event_type": "type",
    "request_id": "request_id",
    "trace_id": "trace_id",
}


def _envelope_text(column: str, **kwargs: Any) -> Mapped[str]:
    return mapped_column(String(_outbox.ENVELOPE_TEXT_LIMITS[AUDIT_ENVELOPE_FIELDS[column]]), **kwargs)


class AuditRecord(Base):
    """The system-wide audit trail, fed by every service's events. Append-only: a trigger refuses UPDATE and
    DELETE (see the migration)."""

    __tablename__ = "audit_events"
    id: Mapped[str] = mapped_column(
        String(36), primary_key=True
    )  # the event id: a redelivery cannot duplicate
    tenant_id: Mapped[str] = _envelope_text("tenant_id")
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    actor_type: Mapped[str] = mapped_column(String(20))
    actor_id: Mapped[str] = _envelope_text("actor_id")
    actor_name: Mapped[str] = _envelope_text("actor_name", default="")
    object_type: Mapped[str] = _envelope_text("object_type")
    object_id: Mapped[str] = _envelope_text("object_id")
    action: Mapped[str] = _envelope_text("action")
    changes: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    event_type: Mapped[str] = _envelope_text("event_type")
    service: Mapped[str] = mapped_column(String(50))
    request_id: Mapped[str] = _envelope_text("request_id", default="")
    trace_id: Mapped[str] = _envelope_text("trace_id", default="")

    __table_args__ = (
        Index("ix_audit_tenant_id", "tenant_id", "id"),
        Index("ix_audit_tenant_actor", "tenant_id", "actor_id", "id"),
        Index("ix_audit_tenant_object", "tenant_id", "object_type", "object_id", "id"),
    )
