"""Alembic for every service: each service keeps its own migrations folder; this runs them.

A service's `migrations/env.py` is two lines: import its metadata, call `run_env(metadata)`. Several replicas
starting at once are safe: migrations run under a PostgreSQL advisory lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, Table, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.schema import CreateIndex, CreateTable, DropTable

MIGRATION_LOCK = 0x43524D  # "CRM"


def alembic_config(migrations_dir: Path, database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


async def upgrade(migrations_dir: Path, database_url: str, revision: str = "head") -> None:
    """Run from async code: alembic itself is synchronous and runs its env.py in a worker thread."""
    await asyncio.to_thread(command.upgrade, alembic_config(migrations_dir, database_url), revision)


def create_tables(op: Any, tables: Iterable[Table]) -> None:
    """Create kit-owned tables and their indexes from their SQLAlchemy models, from a service's migration.
    Rendered through `op.execute`, so offline (`--sql`) mode works too and the DDL cannot drift from the models;
    `IF NOT EXISTS` makes a re-run harmless."""
    for table in tables:
        op.execute(CreateTable(table, if_not_exists=True))
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            op.execute(CreateIndex(index, if_not_exists=True))


def drop_tables(op: Any, tables: Iterable[Table]) -> None:
    for table in reversed(list(tables)):
        op.execute(DropTable(table, if_exists=True))


def _run(connection: Connection, metadata: MetaData) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        # Held until this transaction ends, so a failed migration cannot leave it behind.
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        context.run_migrations()


async def _online(metadata: MetaData) -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    engine = create_async_engine(url, poolclass=pool.NullPool, hide_parameters=True)
    async with engine.connect() as connection:
        await connection.run_sync(_run, metadata)
        await connection.commit()
    await engine.dispose()


def run_env(metadata: MetaData) -> None:
    """The body of every service's migrations/env.py."""
    if context.is_offline_mode():
        context.configure(
            url=context.config.get_main_option("sqlalchemy.url"), target_metadata=metadata, literal_binds=True
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_online(metadata))
