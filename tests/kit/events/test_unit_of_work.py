"""The unit of work begins and commits on the driver: what fails or is cancelled leaves nothing written and no
connection inside a transaction."""

from __future__ import annotations

import asyncio

import pytest
from crm_kit.db import Database
from crm_kit.errors import AlreadyExists
from crm_kit.events.outbox import OutboxEvent
from eventsupport import emit_invite
from sqlalchemy import func, select, text


async def outbox_count(db: Database) -> int:
    async with db.read() as session:
        return await session.scalar(select(func.count()).select_from(OutboxEvent))


async def assert_no_transaction_left_open(db: Database) -> None:
    async with db.read() as session:
        driver = (await (await session.connection()).get_raw_connection()).driver_connection
        assert not driver.is_in_transaction()
        idle_in_transaction = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
            )
        )
        assert idle_in_transaction == 0


async def test_a_unit_of_work_commits_its_rows_and_events_together(db_url):
    db = Database(db_url, pool_size=1)
    try:
        async with db.unit_of_work() as uow:
            emit_invite(uow, version=1)
            await uow.session.execute(text("CREATE TABLE uow_rows (id int PRIMARY KEY)"))
            await uow.session.execute(text("INSERT INTO uow_rows VALUES (1)"))
        async with db.read() as session:
            assert await session.scalar(text("SELECT count(*) FROM uow_rows")) == 1
        assert await outbox_count(db) == 1
    finally:
        await db.dispose()


async def test_a_failed_unit_of_work_writes_nothing_and_leaves_its_connection_clean(db_url):
    db = Database(db_url, pool_size=1)  # one connection, so the next unit of work gets the same one
    try:
        with pytest.raises(RuntimeError):
            async with db.unit_of_work() as uow:
                emit_invite(uow, version=1)
                await uow.session.flush()
                raise RuntimeError("the domain refused")
        with pytest.raises(AlreadyExists):
            async with db.unit_of_work() as uow:
                emit_invite(uow, version=2)
                await uow.session.execute(text("CREATE TEMP TABLE t (id int PRIMARY KEY)"))
                await uow.session.execute(text("INSERT INTO t VALUES (1), (1)"))
        assert await outbox_count(db) == 0
        await assert_no_transaction_left_open(db)
    finally:
        await db.dispose()


async def test_a_cancelled_unit_of_work_writes_nothing_and_leaves_its_connection_clean(db_url):
    db = Database(db_url, pool_size=1)
    started = asyncio.Event()

    async def slow_write() -> None:
        async with db.unit_of_work() as uow:
            emit_invite(uow, version=1)
            await uow.session.flush()
            started.set()
            await uow.session.execute(text("SELECT pg_sleep(30)"))

    try:
        task = asyncio.create_task(slow_write())
        await started.wait()
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await outbox_count(db) == 0
        async with db.unit_of_work() as uow:
            emit_invite(uow, version=2)
        assert await outbox_count(db) == 1
        await assert_no_transaction_left_open(db)
    finally:
        await db.dispose()


async def test_a_failed_savepoint_takes_its_events_with_it(db_url):
    db = Database(db_url, pool_size=1)
    try:
        async with db.unit_of_work() as uow:
            emit_invite(uow, aggregate_id="kept-before", version=1)
            with pytest.raises(RuntimeError):
                async with uow.savepoint():
                    emit_invite(uow, aggregate_id="refused", version=1)
                    await uow.flush()
                    raise RuntimeError("this row is refused")
            async with uow.savepoint():
                emit_invite(uow, aggregate_id="kept-after", version=1)
        async with db.read() as session:
            written = set(await session.scalars(select(OutboxEvent.aggregate_id)))
        assert written == {"kept-before", "kept-after"}
    finally:
        await db.dispose()
