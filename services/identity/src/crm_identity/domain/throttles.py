"""Progressive delays (OWASP) on anything an outsider can try again and again: sign-in guesses, verification
mails. Counted in `login_throttles` under hashed keys; nothing is ever locked.

An attempt is counted *before* the work it asks for (`claim`), in one short transaction that locks its
counters: attempts made at the same instant queue on the row locks and each sees the ones before it, so a
burst gets no more than the free attempts. An attempt that turns out not to be a failure gives its count back
or clears it (`settle`). Attempts still in flight count, so the attempt after the free ones,
arriving while they run, is refused unless it waits for them (`IN_FLIGHT_PAUSES`): the owner's concurrent
sign-ins wait a moment and go through once one of them has succeeded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
from crm_kit.db import Database, UnitOfWork, driver_of
from sqlalchemy.ext.asyncio import AsyncSession

FORGET_FAILURES_AFTER = dt.timedelta(days=1)
T = TypeVar("T")
# A refusal caused by an attempt counted this recently may be by one still in flight (whose outcome may clear
# the count): try again after each of these pauses (seconds) before giving up. Shorter in all than any first
# delay worth having, so a burst of wrong guesses is still refused.
IN_FLIGHT_PAUSES = (0.05, 0.1, 0.2, 0.4)


@dataclass(frozen=True)
class Throttle:
    """`free_attempts` attempts cost nothing; from then on each one doubles the wait before the next is looked
    at, from `first_delay_seconds` up to `max_delay_seconds`. Nothing is locked."""

    scope: str
    free_attempts: int
    max_delay_seconds: float
    first_delay_seconds: float = 1.0

    def delay(self, failures: int) -> float:
        if failures < self.free_attempts:
            return 0.0
        doubled = self.first_delay_seconds * 2.0 ** min(failures - self.free_attempts, 30)
        return min(doubled, self.max_delay_seconds)

    def waiting(self, failures: int, last_failure_at: dt.datetime, now: dt.datetime) -> bool:
        if now - last_failure_at > FORGET_FAILURES_AFTER:
            return False
        return now < last_failure_at + dt.timedelta(seconds=self.delay(failures))


Keyed = Sequence[tuple[Throttle, str]]


class Raced(Exception):
    """A row the claim needed could not be counted (kept as a safety net: the upsert that makes and locks the
    rows cannot miss one): roll back and claim again."""


async def in_transaction(db: Database, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
    """`work(uow)` in a unit of work that claims, run again if its claim raced a removal (`Raced`)."""
    while True:
        try:
            async with db.unit_of_work() as uow:
                return await work(uow)
        except Raced:
            continue


# The statements of `claim` and `settle`, sent on the transaction's driver connection: a sign-in pays them on
# every attempt, and SQLAlchemy's compile and execute layers cost more CPU than the statements themselves.
#
# Makes the rows of $1 (at zero) that do not exist yet and locks all of them, in key order, in one statement:
# a row made or removed by a twin meanwhile is waited for and then inserted or locked (ON CONFLICT DO UPDATE is
# atomic), so a first attempt and its twins queue on the same row.
UPSERT_AND_LOCK = """
INSERT INTO login_throttles AS t (key, failures, last_failure_at)
SELECT k, 0, $2::timestamptz FROM unnest($1::text[]) AS k ORDER BY k
ON CONFLICT (key) DO UPDATE SET failures = t.failures
RETURNING t.key, t.failures, t.last_failure_at
"""
# Counts one attempt under every key of $1 (failures long past are forgotten: the count starts again), and
# removes a few counts older than a day that nobody holds.
COUNT = """
WITH counted AS (
  UPDATE login_throttles t SET last_failure_at = $2::timestamptz,
    failures = CASE WHEN t.last_failure_at < $2::timestamptz - $3::interval THEN 1 ELSE t.failures + 1 END
  WHERE t.key = any($1::text[])
)
DELETE FROM login_throttles WHERE key IN (
  SELECT key FROM login_throttles
  WHERE last_failure_at < $2::timestamptz - $3::interval AND NOT (key = any($1::text[]))
  LIMIT 100 FOR UPDATE SKIP LOCKED)
"""
DROP_ZEROS = "DELETE FROM login_throttles WHERE key = any($1::text[]) AND failures = 0"
# Locks the rows of $1 in key order; clears the ones in $2; the others (given back) lose one failure, and go
# when that leaves them at zero. A row made again by another attempt after this statement began is not seen.
SETTLE = """
WITH held AS (
  SELECT key, failures FROM login_throttles WHERE key = any($1::text[]) ORDER BY key FOR UPDATE
), gone AS (
  DELETE FROM login_throttles t USING held h
  WHERE t.key = h.key AND (t.key = any($2::text[]) OR h.failures <= 1)
)
UPDATE login_throttles t SET failures = h.failures - 1 FROM held h
WHERE t.key = h.key AND NOT (t.key = any($2::text[])) AND h.failures > 1
"""


async def _driver(session: AsyncSession) -> asyncpg.Connection:
    return driver_of(await session.connection())


async def claim(session: AsyncSession, keyed: Keyed, now: dt.datetime) -> dt.datetime | None:
    """Count one attempt under every key and return None; or, when a key is still waiting, count nothing and
    return when that key last counted an attempt (the attempt is refused without being looked at). Atomic:
    call it in a transaction of its own and commit before the work it guards, so the locks are held for
    milliseconds, not for the work."""
    keys = sorted({k for _, k in keyed})
    driver = await _driver(session)
    counted = {r[0]: (r[1], r[2]) for r in await driver.fetch(UPSERT_AND_LOCK, keys, now)}
    if len(counted) < len(keys):
        raise Raced()
    waiting = [c[1] for t, k in keyed if t.waiting(*(c := counted[k]), now)]
    if waiting:
        # This attempt counts nothing: rows still at zero (made for it) go, the table holds only failures.
        await driver.execute(DROP_ZEROS, keys)
        return max(waiting)
    await driver.execute(COUNT, keys, now, FORGET_FAILURES_AFTER)
    return None


async def settle(session: AsyncSession, *, give_back: Sequence[str] = (), clear: Sequence[str] = ()) -> None:
    """After a claimed attempt: `give_back` uncounts it (it was no failure, e.g. the right password of an
    inactive account), `clear` starts a count again (a success clears the account's). Counts at zero go: the
    table holds only keys with failures. Locks all the rows at once, in key order, and changes only the rows it
    locked (a row made again meanwhile by another attempt is that attempt's)."""
    keys = sorted({*give_back, *clear})
    if keys:
        await (await _driver(session)).execute(SETTLE, keys, sorted(set(clear)))
