"""Async SQLAlchemy for every service: one engine, a unit of work per business operation.

A domain function takes the unit of work, changes rows and records events with `uow.emit(...)`; the unit of
work commits both in one transaction (the transactional outbox). Domain functions never commit themselves.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import DateTime, MetaData, String, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from crm_kit.context import caller
from crm_kit.errors import AlreadyExists, Conflict, InvalidArgument, VersionMismatch, not_found
from crm_kit.ids import is_uuid
from crm_kit.leader import asyncpg_dsn

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


@retry(
    stop=stop_after_delay(60),
    wait=wait_exponential(multiplier=0.2, max=5),
    retry=retry_if_exception_type((OSError, asyncpg.CannotConnectNowError)),
    reraise=True,
)
async def wait_for_database(url: str) -> None:
    """Wait, up to a minute, until the database at `url` (a SQLAlchemy URL) takes connections: a process
    starting next to its database, or while the database restarts or is still starting up."""
    conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    await conn.close()


class Database:
    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False):
        if not url:
            raise ValueError("no database URL: set CRM_DATABASE_URL")
        self.url = url
        # No pre-ping (a round trip per checkout): connections are recycled hourly and a dead one fails its
        # statement, which is retried by the caller's own retry policy or surfaces as 503.
        # hide_parameters: an error's text never carries the statement's values (personal data); see also
        # crm_kit.errors.describe.
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_recycle=3600,
            echo=echo,
            hide_parameters=True,
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLAlchemy in AUTOCOMMIT mode, so it issues no transaction statements of its own: reads need no
        # BEGIN/ROLLBACK for a single SELECT, and units of work begin and commit on the driver (`transaction`).
        self.autocommit_sessions = async_sessionmaker(
            self.engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
        )
        # Called after every commit that wrote events, so the outbox relay publishes at once, not at its next poll.
        self.after_commit_hooks: list[Callable[[], None]] = []

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        async with self.autocommit_sessions() as session:
            uow = UnitOfWork(session)
            try:
                async with session.begin():
                    async with transaction(await session.connection()) as (driver, _):
                        yield uow
                        await session.flush()
                        await _mark_idempotent_request(session)
                        await uow.write_events(driver)
            except (DBAPIError, asyncpg.PostgresError) as exc:
                raise caller_error(exc) or exc from exc
            uow.committed(self.after_commit_hooks)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads: each statement sees committed data as of its start (autocommit)."""
        async with self.autocommit_sessions() as session:
            try:
                yield session
            except DBAPIError as exc:
                raise data_error(exc) or exc from exc

    async def dispose(self) -> None:
        await self.engine.dispose()


def driver_of(connection: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under a checked-out SQLAlchemy connection, for statements that skip SQLAlchemy
    (the kit's transaction statements, COPY). It is live once checked out, so no greenlet hop is needed."""
    return connection.sync_connection.connection.driver_connection  # type: ignore[union-attr]


@asynccontextmanager
async def transaction(
    connection: AsyncConnection, *, then: str = ""
) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    """BEGIN and COMMIT on the driver, under a SQLAlchemy connection in AUTOCOMMIT mode (whose statements then
    run inside this transaction). Yields the driver connection, for statements that skip SQLAlchemy, and the
    status of `then`: a first statement sent in the same round trip as BEGIN (plain SQL without parameters).

    Why: SQLAlchemy's own begin and commit cost about half a millisecond of Python per transaction on top of
    their round trips, on the path of every write and of every event a consumer handles. On failure (or
    cancellation) it rolls back; a connection whose rollback fails is invalidated, so no connection goes back
    to the pool inside a transaction.
    """
    driver = driver_of(connection)
    status = await driver.execute(f"BEGIN; {then}" if then else "BEGIN")
    try:
        yield driver, status
    except BaseException:
        try:
            await driver.execute("ROLLBACK")
        except BaseException:
            await connection.invalidate()
        raise
    await driver.execute("COMMIT")


async def _mark_idempotent_request(session: AsyncSession) -> None:
    """When the call carries an idempotency key, the first unit of work that commits records it, in the same
    transaction as the write (see crm_kit.idempotency)."""
    from crm_kit import context, idempotency

    extra = context.current().extra
    key = extra.get("idempotency_key")
    if key and not extra.get("idempotency_marked"):
        ttl = float(extra.get("idempotency_ttl") or idempotency.DEFAULT_TTL_SECONDS)
        await idempotency.mark(session, key, extra.get("rpc_method", ""), ttl)
        extra["idempotency_marked"] = "1"


class UnitOfWork:
    """One business transaction: the session plus the events to commit with it."""

    def __init__(self, session: AsyncSession):
        self.session = session
        # The transaction's events, as outbox rows: written together at its end (`write_events`).
        self.events: list[tuple[str, str, str, str, bytes, str]] = []
        self._written = 0
        self._on_commit: list[Callable[[], None]] = []

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the transaction has committed (not at all if it rolls back): for what must not
        happen before the change is durable and visible, such as telling someone else about it."""
        self._on_commit.append(callback)

    def committed(self, after_commit_hooks: list[Callable[[], None]]) -> None:
        """Run by whoever committed the transaction: the callbacks, then the database's hooks if events were
        recorded (which wake the outbox relay)."""
        for callback in self._on_commit:
            callback()
        if self.events:
            for hook in after_commit_hooks:
                hook()

    def emit(self, payload: Any, **kwargs: Any) -> Any:
        """Record an event in the outbox, in this transaction; returns its envelope. Arguments as for
        `crm_kit.events.outbox.build_envelope`. The envelope is built now (with the caller, time and trace of
        this moment); the row is written with the transaction's other events when the unit of work ends."""
        from crm_kit.events import outbox

        envelope = outbox.build_envelope(payload, **kwargs)
        self.events.append(outbox.outbox_row(envelope))
        return envelope

    async def write_events(self, driver: asyncpg.Connection) -> None:
        """Insert the events emitted so far into the outbox, on the transaction's driver connection."""
        if self._written < len(self.events):
            from crm_kit.events import outbox

            await outbox.write(driver, self.events[self._written :])
            self._written = len(self.events)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A part of the transaction that can fail alone (SAVEPOINT): when it raises, its changes and the events
        it emitted are undone and the rest of the transaction goes on. Use this, not `session.begin_nested()`,
        which would keep the failed part's events."""
        emitted, written = len(self.events), self._written
        try:
            async with self.session.begin_nested():
                yield
        except BaseException:
            # Rows written inside the savepoint are gone with it, earlier events among them.
            del self.events[emitted:]
            self._written = min(self._written, written)
            raise

    async def flush(self) -> None:
        """Send everything pending now rather than at the end: the session's changes and the events emitted so
        far (for a constraint error to surface at this point, or for the rows to be seen by a raw query)."""
        await self.session.flush()
        await self.write_events(driver_of(await self.session.connection()))


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


def _sqlstate(exc: Exception) -> str | None:
    if isinstance(exc, asyncpg.PostgresError):
        return exc.sqlstate
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)


# SQLSTATEs of a database that cannot be reached or is refusing work right now (connection exceptions,
# operator intervention, too many connections, "database is not currently accepting connections").
_UNAVAILABLE_SQLSTATES = ("08", "57P", "53300", "55000")


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what lies under it: a SQLAlchemy error's driver error (`orig`), causes and contexts."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__


def database_unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or an error under it) says the database cannot be reached or refuses all work right now,
    rather than that it refused this statement: worth waiting for, never the caller's fault. (A bare socket
    error is not counted: it may come from anything; callers that know it is the database's add it.)"""
    for current in error_chain(exc):
        if isinstance(current, asyncpg.InterfaceError | asyncpg.PostgresConnectionError):
            return True
        if isinstance(current, asyncpg.PostgresError) and (current.sqlstate or "").startswith(
            _UNAVAILABLE_SQLSTATES
        ):
            return True
        if getattr(current, "connection_invalidated", False):  # SQLAlchemy: the connection was lost
            return True
    return False


def data_error(exc: DBAPIError | asyncpg.PostgresError) -> Exception | None:
    """A database error caused by bad input, as a 422; None for anything else (a real fault)."""
    message = BAD_INPUT_SQLSTATES.get(_sqlstate(exc) or "")
    return InvalidArgument(f"invalid input: {message}", reason="invalid_value") if message else None


# A row lock taken with NOWAIT (`get_owned(..., lock="nowait")`) that another transaction holds.
LOCK_NOT_AVAILABLE = "55P03"


def caller_error(exc: BaseException) -> Exception | None:
    """A database error the caller's input caused, as the domain error to answer with (409 or 422); None for
    anything else (a real fault). Takes SQLAlchemy's wrapped errors and the driver's own (raised by statements
    the kit sends on the driver, COMMIT among them)."""
    if isinstance(exc, IntegrityError | asyncpg.IntegrityConstraintViolationError):
        return integrity_error(exc)
    if isinstance(exc, DBAPIError | asyncpg.PostgresError) and _sqlstate(exc) == LOCK_NOT_AVAILABLE:
        return Conflict("another request is changing this object right now; try again", reason="locked")
    if isinstance(exc, DBAPIError | asyncpg.PostgresError):
        return data_error(exc)
    return None


_KEY_COLUMNS = re.compile(r"Key \((.+?)\)=\(")


def integrity_error(exc: IntegrityError | asyncpg.IntegrityConstraintViolationError) -> Exception:
    """Unique violations are a caller's conflict (409), other integrity errors a bad request (422).

    The message names the columns or the constraint, never the values: the database's DETAIL line echoes them
    (`Key (email)=(x@y) already exists`, `Failing row contains (...)`), and an error's text travels on to
    logs, dead letters and other people's screens."""
    orig = exc if isinstance(exc, asyncpg.PostgresError) else getattr(exc, "orig", None)
    sqlstate = _sqlstate(exc)
    # SQLAlchemy's asyncpg adapter keeps the driver's error as the cause of its own.
    driver = orig if isinstance(orig, asyncpg.PostgresError) else getattr(orig, "__cause__", None)
    detail = getattr(driver, "detail", None) or ""
    columns = _KEY_COLUMNS.search(detail)
    column = getattr(driver, "column_name", None)
    constraint = getattr(driver, "constraint_name", None)
    what = columns.group(1) if columns else column or constraint or "a constraint"
    if sqlstate == "23505":
        return AlreadyExists(f"already exists: the same {what}")
    return InvalidArgument(f"rejected by a constraint: {what}")


__all__ = [
    "Base",
    "DBAPIError",
    "Database",
    "TenantOwned",
    "Timestamped",
    "UnitOfWork",
    "caller_error",
    "driver_of",
    "expect_version",
    "for_tenant",
    "integrity_error",
    "transaction",
    "utcnow",
]


async def get_owned(
    session: AsyncSession,
    model: Any,
    object_type: str,
    object_id: str,
    *,
    lock: bool | str = False,
    visible: Any = None,
) -> Any:
    """A row of the caller's tenant by id, inside `visible` (a WHERE clause, e.g. the caller's data scope) when
    given. Another tenant's id, a malformed id, a missing id and a row outside `visible` are the same 404.

    `lock=True` takes the row lock (`FOR UPDATE`), waiting for a holder; `lock="nowait"` does not wait, and a
    lock held by another transaction ends the unit of work with a 409 (reason `locked`, see `caller_error`)."""
    if not object_id or not is_uuid(object_id):
        raise not_found(object_type, object_id)
    stmt = select(model).where(model.id == object_id, model.tenant_id == caller().tenant_id)
    if visible is not None:
        stmt = stmt.where(visible)
    if lock:
        stmt = stmt.with_for_update(nowait=lock == "nowait")
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None:
        raise not_found(object_type, object_id)
    return row
