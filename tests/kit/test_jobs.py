"""Periodic jobs run on one replica at a time (a PostgreSQL advisory lock), and a dead holder never blocks them."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from crm_kit.db import Database
from crm_kit.jobs import LOCK_PREFIX, PeriodicJob, exclusive


@pytest.fixture(scope="module")
async def replicas(test_infra):
    """Two replicas' databases (each its own engine and pool) on one PostgreSQL database."""
    url = await test_infra.database("jobs")
    dbs = [Database(url, pool_size=2), Database(url, pool_size=2)]
    yield dbs
    for db in dbs:
        await db.dispose()


async def test_only_one_replica_runs_a_job_at_a_time(replicas):
    first, second = replicas
    started, release = asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    async def slow() -> str:
        runs.append("first")
        started.set()
        await release.wait()
        return "done"

    async def quick() -> str:
        runs.append("second")
        return "done"

    a = PeriodicJob(first, "test.purge", slow, interval=3600)
    b = PeriodicJob(second, "test.purge", quick, interval=3600)
    running = asyncio.create_task(a.run_once())
    await started.wait()
    assert await b.run_once() == (False, None)  # the other replica skips the tick
    assert (b.skipped, b.runs) == (1, 0)
    other = PeriodicJob(second, "test.another-job", quick, interval=3600)
    assert await other.run_once() == (True, "done")  # another job's lock is another lock
    release.set()
    assert await running == (True, "done")
    assert await b.run_once() == (True, "done")  # free again once the run is over
    assert runs == ["first", "second", "second"]


async def test_the_lock_dies_with_the_holders_connection(replicas, test_infra):
    first, second = replicas
    async with exclusive(first, "test.crash") as mine:
        assert mine
        async with exclusive(second, "test.crash") as theirs:
            assert not theirs
    async with exclusive(second, "test.crash") as theirs:
        assert theirs  # released after the block

    # A replica that dies mid-run: PostgreSQL ends its session, and the lock with it.
    conn = await asyncpg.connect(test_infra.asyncpg_dsn(first.url))
    try:
        assert await conn.fetchval(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", LOCK_PREFIX + "test.crash"
        )
        async with exclusive(second, "test.crash") as theirs:
            assert not theirs
    finally:
        conn.terminate()
    for _ in range(50):
        async with exclusive(second, "test.crash") as theirs:
            if theirs:
                break
        await asyncio.sleep(0.1)
    assert theirs


async def test_a_failing_run_does_not_stop_the_timer_and_releases_the_lock(replicas):
    first, second = replicas
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database hiccup")
        return calls

    job = PeriodicJob(first, "test.flaky", flaky, interval=0.05, first_delay=0)
    job.start()
    try:
        for _ in range(100):
            if job.runs >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await job.stop()
    assert calls >= 3 and job.runs >= 2
    async with exclusive(second, "test.flaky") as mine:
        assert mine
