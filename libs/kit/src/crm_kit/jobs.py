"""Periodic jobs that run on one replica at a time, and the lock that makes them so.

    job = PeriodicJob(db, "customers.recycle-bin-purge", purge_expired, interval=3600)
    job.start()                      # in build(); Parts.on_stop gets job.stop

Every replica keeps the timer; at each tick a replica tries the job's PostgreSQL advisory lock on a connection
of its own (`pg_try_advisory_lock`, not waiting): the one that gets it runs the job, the others skip the tick.
The lock is a session lock, held across the whole run (which may commit many transactions) and released
after it — or by PostgreSQL as soon as the holder's connection dies, so a crashed or killed replica never
keeps the job from running. Nothing to configure and no lease to tune; a run must only be safe to repeat
(the next tick, on any replica, picks up what a failed run left).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text

from crm_kit.db import Database

log = logging.getLogger("crm.jobs")

# Lock names live in one 64-bit key space per database with every other advisory lock: prefixed, then hashed.
LOCK_PREFIX = "crm_kit.jobs:"
_TRY_LOCK = text("SELECT pg_try_advisory_lock(hashtextextended(:name, 0))")
_UNLOCK = text("SELECT pg_advisory_unlock(hashtextextended(:name, 0))")


@asynccontextmanager
async def exclusive(db: Database, name: str) -> AsyncIterator[bool]:
    """Hold the lock `name` for the block when no one else holds it; yields whether this caller got it (it
    does not wait). The lock lives on a connection of its own, outside any transaction of the block."""
    key = {"name": LOCK_PREFIX + name}
    async with db.engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        got = bool(await conn.scalar(_TRY_LOCK, key))
        try:
            yield got
        finally:
            if got:
                try:
                    await conn.execute(_UNLOCK, key)
                except BaseException:
                    # Never hand a connection that may still hold the lock back to the pool.
                    await conn.invalidate()
                    raise


class PeriodicJob:
    """`run()` every `interval` seconds, on whichever replica holds the job's lock at that tick."""

    def __init__(
        self,
        db: Database,
        name: str,
        run: Callable[[], Awaitable[Any]],
        *,
        interval: float,
        first_delay: float | None = None,
    ):
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.db = db
        self.name = name
        self.run = run
        self.interval = interval
        self.first_delay = interval if first_delay is None else first_delay
        # For health and tests: runs done here, ticks skipped because another replica held the lock.
        self.runs = 0
        self.skipped = 0
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> tuple[bool, Any]:
        """One tick: (True, what run() returned) when this replica ran the job, (False, None) when another
        replica was running it."""
        async with exclusive(self.db, self.name) as mine:
            if not mine:
                self.skipped += 1
                return False, None
            result = await self.run()
            self.runs += 1
            return True, result

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"job:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        await asyncio.sleep(self.first_delay)
        while True:
            try:
                ran, result = await self.run_once()
                if ran and result:
                    log.info("job %s: %s", self.name, result)
            except asyncio.CancelledError:
                raise
            except Exception:  # the next tick tries again; one bad run must not end the job
                log.exception("job %s failed", self.name)
            await asyncio.sleep(self.interval)


__all__ = ["LOCK_PREFIX", "PeriodicJob", "exclusive"]
