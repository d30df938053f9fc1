"""Async SQLAlchemy for every service: one engine, a unit of work per business operation.

A domain function takes the unit of work, changes rows and records events with `uow.emit(...)`; the unit of
work commits both in one transaction (the transactional outbox). Domain functions never commit themselves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import DateTime, MetaData, String, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from crm_kit.context import caller
from crm_kit.errors import AlreadyExists, InvalidArgument, VersionMismatch, not_found
from crm_kit.ids import is_uuid

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Timestamped:
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class TenantOwned:
    """Every business row carries its tenant; every query filters on it (see `crm_kit.db.for_tenant`)."""

    tenant_id: Mapped[str] = mapped_column(String(36), index=True)


def expect_version(row: Any, expected: int) -> None:
    """Optimistic concurrency: the caller's If-Match (expected_version) must be the row's version; 0 skips."""
    if expected and row.version != expected:
        raise VersionMismatch(
            f"the object changed since version {expected} (now {row.version}); reload and retry",
            reason="version_mismatch",
        )


def for_tenant(stmt: Any, model: Any, tenant_id: str) -> Any:
    return stmt.where(model.tenant_id == tenant_id)


class Database:
    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False):
        if not url:
            raise ValueError("no database URL: set CRM_DATABASE_URL")
        self.url = url
        # No pre-ping (a round trip per checkout): connections are recycled hourly and a dead one fails its
        # statement, which is retried by the caller's own retry policy or surfaces as 503.
        self.engine: AsyncEngine = create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=3600, echo=echo
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # Reads run in autocommit: no BEGIN/ROLLBACK round trips for a single SELECT.
        self.read_sessions = async_sessionmaker(
            self.engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
        )
        # Called after every commit that wrote events, so the outbox relay publishes at once, not at its next poll.
        self.after_commit_hooks: list[Callable[[], None]] = []

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        async with self.sessions() as session:
            uow = UnitOfWork(session)
            try:
                async with session.begin():
                    yield uow
                    await session.flush()
                    await _mark_idempotent_request(session)
            except IntegrityError as exc:
                raise integrity_error(exc) from exc
            except DBAPIError as exc:
                raise data_error(exc) or exc from exc
            if uow.events_recorded:
                for hook in self.after_commit_hooks:
                    hook()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads: each statement sees committed data as of its start (autocommit)."""
        async with self.read_sessions() as session:
            try:
                yield session
            except DBAPIError as exc:
                raise data_error(exc) or exc from exc

    async def dispose(self) -> None:
        await self.engine.dispose()


async def _mark_idempotent_request(session: AsyncSession) -> None:
    """When the call carries an idempotency key, the first unit of work that commits records it, in the same
    transaction as the write (see crm_kit.idempotency)."""
    from crm_kit import context, idempotency

    extra = context.current().extra
    key = extra.get("idempotency_key")
    if key and not extra.get("idempotency_marked"):
        await idempotency.mark(session, key, extra.get("rpc_method", ""))
        extra["idempotency_marked"] = "1"


class UnitOfWork:
    """One business transaction: the session plus the events to commit with it."""

    def __init__(self, session: AsyncSession):
        self.session = session
        self.events_recorded = 0

    def emit(self, payload: Any, **kwargs: Any) -> None:
        """Record an event in the outbox, in this transaction. See `crm_kit.events.outbox.record` for arguments."""
        from crm_kit.events.outbox import record

        record(self.session, payload, **kwargs)
        self.events_recorded += 1


# Values PostgreSQL cannot store or compare: the caller's input, not our fault (e.g. a NUL character).
BAD_INPUT_SQLSTATES = {
    "22001": "a value is too long",
    "22003": "a number is out of range",
    "22007": "a date or time is not valid",
    "22008": "a date or time is out of range",
    "22021": "text contains a character that cannot be stored (e.g. NUL)",
    "22P02": "a value has the wrong form",
    "22P05": "text contains a character that cannot be stored",
}


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)


def data_error(exc: DBAPIError) -> Exception | None:
    """A database error caused by bad input, as a 422; None for anything else (a real fault)."""
    message = BAD_INPUT_SQLSTATES.get(_sqlstate(exc) or "")
    return InvalidArgument(f"invalid input: {message}", reason="invalid_value") if message else None


def integrity_error(exc: IntegrityError) -> Exception:
    """Unique violations are a caller's conflict (409), other integrity errors a bad request (422)."""
    orig = getattr(exc, "orig", None)
    sqlstate = _sqlstate(exc)
    detail = str(orig).split("DETAIL:")[-1].strip() if orig else str(exc)
    if sqlstate == "23505":
        return AlreadyExists(f"already exists: {detail}")
    return InvalidArgument(f"rejected by a constraint: {detail}")


__all__ = [
    "Base",
    "DBAPIError",
    "Database",
    "TenantOwned",
    "Timestamped",
    "UnitOfWork",
    "expect_version",
    "for_tenant",
    "integrity_error",
    "utcnow",
]


async def get_owned(
    session: AsyncSession,
    model: Any,
    object_type: str,
    object_id: str,
    *,
    lock: bool = False,
    visible: Any = None,
) -> Any:
    """A row of the caller's tenant by id, inside `visible` (a WHERE clause, e.g. the caller's data scope) when
    given. Another tenant's id, a malformed id, a missing id and a row outside `visible` are the same 404."""
    if not object_id or not is_uuid(object_id):
        raise not_found(object_type, object_id)
    stmt = select(model).where(model.id == object_id, model.tenant_id == caller().tenant_id)
    if visible is not None:
        stmt = stmt.where(visible)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None:
        raise not_found(object_type, object_id)
    return row
