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

from crm_kit.db import Database, UnitOfWork
from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from crm_identity import models

FORGET_FAILURES_AFTER = dt.timedelta(days=1)
TABLE = models.LoginThrottle.__table__
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
    """A row the claim needed was removed meanwhile (a success, a clean-up): roll back and claim again."""


async def in_transaction(db: Database, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
    """`work(uow)` in a unit of work that claims, run again if its claim raced a removal (`Raced`)."""
    while True:
        try:
            async with db.unit_of_work() as uow:
                return await work(uow)
        except Raced:
            continue


async def lock(session: AsyncSession, keys: Sequence[str]) -> dict[str, tuple[int, dt.datetime]]:
    """Lock the counters of `keys`, always in key order (no deadlock between attempts sharing some keys).
    A transaction that changes counters in more than one step locks all of them first."""
    rows = await session.execute(
        select(TABLE.c.key, TABLE.c.failures, TABLE.c.last_failure_at)
        .where(TABLE.c.key.in_(keys))
        .order_by(TABLE.c.key)
        .with_for_update()
    )
    return {r.key: (r.failures, r.last_failure_at) for r in rows}


async def claim(session: AsyncSession, keyed: Keyed, now: dt.datetime) -> dt.datetime | None:
    """Count one attempt under every key and return None; or, when a key is still waiting, count nothing and
    return when that key last counted an attempt (the attempt is refused without being looked at). Atomic:
    call it in a transaction of its own and commit before the work it guards, so the locks are held for
    milliseconds, not for the work."""
    keys = sorted({k for _, k in keyed})
    # Rows exist (at zero) before they are locked, so a first attempt and its twins queue on the same row.
    await session.execute(
        pg_insert(TABLE)
        .values([{"key": k, "failures": 0, "last_failure_at": now} for k in keys])
        .on_conflict_do_nothing(index_elements=[TABLE.c.key])
    )
    counted = await lock(session, keys)
    if len(counted) < len(keys):
        # A row was removed (a success, a clean-up) between the insert and the lock: start again in a new
        # transaction (making it again here, with other rows locked, could deadlock with a twin doing the same).
        raise Raced()
    waiting = [c[1] for t, k in keyed if t.waiting(*(c := counted[k]), now)]
    if waiting:
        # This attempt counts nothing: rows still at zero (made for it) go, the table holds only failures.
        await session.execute(delete(TABLE).where(TABLE.c.key.in_(keys), TABLE.c.failures == 0))
        return max(waiting)
    await session.execute(
        update(TABLE)
        .where(TABLE.c.key.in_(keys))
        .values(
            # Failures long past are forgotten: the count starts again.
            failures=case(
                (TABLE.c.last_failure_at < now - FORGET_FAILURES_AFTER, 1),
                else_=TABLE.c.failures + 1,
            ),
            last_failure_at=now,
        )
    )
    # A few counts older than a day go with each attempt (rows another attempt holds are left for later).
    forgotten = (
        select(TABLE.c.key)
        .where(TABLE.c.last_failure_at < now - FORGET_FAILURES_AFTER)
        .limit(100)
        .with_for_update(skip_locked=True)
    )
    await session.execute(delete(TABLE).where(TABLE.c.key.in_(forgotten)))
    return None


async def settle(session: AsyncSession, *, give_back: Sequence[str] = (), clear: Sequence[str] = ()) -> None:
    """After a claimed attempt: `give_back` uncounts it (it was no failure, e.g. the right password of an
    inactive account), `clear` starts a count again (a success clears the account's). Counts at zero go: the
    table holds only keys with failures. Locks all the rows at once, in key order, and changes only the rows it
    locked (a row made again meanwhile by another attempt is that attempt's)."""
    held = list(await lock(session, sorted({*give_back, *clear})))
    if back := [k for k in held if k in give_back and k not in clear]:
        await session.execute(
            update(TABLE).where(TABLE.c.key.in_(back)).values(failures=func.greatest(TABLE.c.failures - 1, 0))
        )
    if held:
        gone = TABLE.c.key.in_([k for k in held if k in clear]) | (
            TABLE.c.key.in_(back) & (TABLE.c.failures == 0)
        )
        await session.execute(delete(TABLE).where(gone))
