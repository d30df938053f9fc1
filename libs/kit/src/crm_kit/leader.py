"""One leader per database for a task: a PostgreSQL session advisory lock held on a dedicated connection.

Every replica runs a `Leader` for the task; the one holding the lock leads (its `lead(conn)` runs), the others
wait on that lock (`pg_advisory_lock`, blocking) on their own connection. A session lock dies with its session,
so when the leader crashes, is killed or loses its connection, PostgreSQL releases the lock and a standby
acquires it at once: no lease to tune, never two leaders at the same time. `lead` gets the very connection that
holds the lock, so a leader that lost its lock also fails its next statement on it and steps down.

Used by the outbox relay (one publisher per database, `crm_kit.events.relay`) and by `PeriodicJob`: a service's
periodic jobs run in one replica at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg
from sqlalchemy.engine import make_url

log = logging.getLogger("crm.leader")

Lead = Callable[[asyncpg.Connection], Awaitable[None]]

# Connection trouble: the leader steps down, backs off and waits for the lock again.
CONNECTION_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """`postgresql+asyncpg://…` -> `postgresql://…` (query, e.g. a unix socket `?host=`, kept)."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


def lock_key(name: str) -> int:
    """A stable advisory-lock key (a signed 64-bit number) for a task's name, e.g. "crm.sales.jobs"."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


class Leader:
    """Runs `lead(conn)` while this process holds advisory lock `key` of the database at `dsn`.

    `start()`, then `stop()`; several per database are safe (one leads). `lead` should return soon after
    `stopping` is set (`pause` returns False then). When `lead` returns or raises, the lock is released (the
    connection closed); after a failure the leader backs off and competes for the lock again.
    """

    def __init__(
        self,
        dsn: str,
        key: int,
        lead: Lead,
        *,
        name: str,
        server_settings: dict[str, str] | None = None,
        max_backoff: float = 10.0,
        wake: Callable[[], None] | None = None,
    ):
        self.dsn = dsn
        self.key = key
        self.lead = lead
        self.name = name
        self.server_settings = {
            "application_name": name,
            # Notice a dead peer within ~30 s over TCP, so its lock is freed for a standby.
            "tcp_keepalives_idle": "10",
            "tcp_keepalives_interval": "5",
            "tcp_keepalives_count": "3",
            **(server_settings or {}),
        }
        self.max_backoff = max_backoff
        # Called by stop(), to interrupt whatever `lead` waits for.
        self.wake = wake
        # Set while this process holds the lock and leads; for health checks and tests.
        self.active = asyncio.Event()
        self.stopping = asyncio.Event()
        self.backend_pid: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is not None:
            return
        self.stopping.clear()
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Let `lead` finish what it is doing, release the lock, return."""
        if self._task is None:
            return
        self.stopping.set()
        if self.wake is not None:
            self.wake()
        try:
            await self._task
        finally:
            self._task = None

    def backoff(self, failures: int) -> float:
        return min(self.max_backoff, 0.05 * 2 ** min(failures, 16))

    async def pause(self, seconds: float, *events: asyncio.Event) -> bool:
        """Sleep until `seconds` pass, stop() is called, or one of `events` is set; False when stopping."""
        waiters = [asyncio.ensure_future(e.wait()) for e in (self.stopping, *events)]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return not self.stopping.is_set()

    async def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                conn = await asyncpg.connect(self.dsn, server_settings=self.server_settings)
            except CONNECTION_ERRORS as exc:
                failures += 1
                log.warning("%s cannot reach PostgreSQL (attempt %s): %s", self.name, failures, exc)
                if not await self.pause(self.backoff(failures)):
                    return
                continue
            self.backend_pid = conn.get_server_pid()
            try:
                if not await self._acquire(conn):
                    return
                failures = 0
                self.active.set()
                log.info("%s is now the leader of its database", self.name)
                await self.lead(conn)
                if self.stopping.is_set():
                    return
            except Exception as exc:
                if self.stopping.is_set():
                    return
                failures += 1
                if isinstance(exc, CONNECTION_ERRORS):
                    log.warning("%s lost its PostgreSQL connection, stepping down: %s", self.name, exc)
                else:
                    log.exception("%s failed unexpectedly, stepping down", self.name)
            finally:
                # Closing the session releases the lock, so a standby takes over while this one backs off.
                self.active.clear()
                await _close(conn)
            if not await self.pause(self.backoff(failures)):
                return

    async def _acquire(self, conn: asyncpg.Connection) -> bool:
        """Block until this process holds the lock (True) or stop() is called (False)."""
        lock = asyncio.ensure_future(conn.execute("SELECT pg_advisory_lock($1)", self.key))
        stopped = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({lock, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not lock.done():
            lock.cancel()
            conn.terminate()
            return False
        lock.result()
        return not self.stopping.is_set()


async def _close(conn: asyncpg.Connection) -> None:
    try:
        async with asyncio.timeout(2):
            await conn.close()
    except Exception:
        conn.terminate()


class PeriodicJob:
    """`job()` every `interval` seconds, in one replica at a time: the leader of lock `name` on the database.

    A standby takes over when the leading replica stops or dies. The leader checks that it still holds its lock
    (its session is alive) before every run. A failed run is logged; the next one runs on time.
    """

    def __init__(
        self,
        database_url: str,
        name: str,
        job: Callable[[], Awaitable[object]],
        *,
        interval: float,
        key: int | None = None,
    ):
        self.job = job
        self.interval = interval
        self.runs = 0
        self.failures = 0
        self.leader = Leader(
            asyncpg_dsn(database_url), lock_key(name) if key is None else key, self._lead, name=name
        )

    @property
    def active(self) -> asyncio.Event:
        return self.leader.active

    async def start(self) -> None:
        await self.leader.start()

    async def stop(self) -> None:
        await self.leader.stop()

    async def _lead(self, conn: asyncpg.Connection) -> None:
        while await self.leader.pause(self.interval):
            await conn.execute("SELECT 1")  # still the holder: a lost session fails here and steps down
            try:
                await self.job()
            except Exception:  # the next run tries again; one bad run must not stop the job
                self.failures += 1
                log.exception("%s: run failed", self.leader.name)
            else:
                self.runs += 1


__all__ = ["Leader", "PeriodicJob", "asyncpg_dsn", "lock_key"]
