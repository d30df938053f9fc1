"""The kit tables come out the same from a service's Alembic migration as from metadata.create_all."""

from __future__ import annotations

import io
import uuid

from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from crm_kit.events.schema import add_event_parking, create_tables, drop_event_parking, drop_tables
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine


def _schema(sync_conn) -> dict:
    insp = inspect(sync_conn)
    tables = {}
    for name in ("outbox_events", "inbox"):
        columns = {c["name"]: (str(c["type"]), c["nullable"]) for c in insp.get_columns(name)}
        indexes = {i["name"]: tuple(i["column_names"]) for i in insp.get_indexes(name)}
        tables[name] = (columns, indexes, insp.get_pk_constraint(name)["name"])
    triggers = (
        sync_conn.execute(
            text(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'outbox_events'::regclass AND NOT tgisinternal"
            )
        )
        .scalars()
        .all()
    )
    return {"tables": tables, "triggers": sorted(triggers)}


def _migrate(sync_conn, step) -> None:
    step(Operations(MigrationContext.configure(sync_conn)))


async def test_alembic_helper_creates_the_same_tables_as_create_all(database, test_infra):
    async with database.engine.connect() as conn:
        expected = await conn.run_sync(_schema)
    assert expected["triggers"] == ["outbox_events_notify"]

    url = await test_infra.database(f"mig{uuid.uuid4().hex[:8]}")
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, create_tables)
            await conn.run_sync(_migrate, create_tables)  # a second run changes nothing
        async with engine.connect() as conn:
            assert await conn.run_sync(_schema) == expected
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, drop_tables)
        async with engine.connect() as conn:
            assert await conn.run_sync(lambda c: inspect(c).get_table_names()) == []
    finally:
        await engine.dispose()


def test_alembic_helper_renders_sql_offline():
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer}
    )
    create_tables(Operations(context))
    sql = buffer.getvalue()
    assert "CREATE TABLE IF NOT EXISTS outbox_events" in sql
    assert "GENERATED ALWAYS AS IDENTITY" in sql
    assert "CREATE TABLE IF NOT EXISTS inbox" in sql
    assert "WHERE published_at IS NULL" in sql
    assert "CREATE TRIGGER outbox_events_notify" in sql


async def test_parking_helper_brings_an_older_outbox_to_the_same_schema(database, test_infra):
    async with database.engine.connect() as conn:
        expected = await conn.run_sync(_schema)
    url = await test_infra.database(f"mig{uuid.uuid4().hex[:8]}")
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, create_tables)
            await conn.run_sync(_migrate, drop_event_parking)  # an outbox made before parking existed
        async with engine.connect() as conn:
            assert await conn.run_sync(_schema) != expected
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, add_event_parking)
            await conn.run_sync(_migrate, add_event_parking)  # a second run changes nothing
        async with engine.connect() as conn:
            assert await conn.run_sync(_schema) == expected
    finally:
        await engine.dispose()
