"""The import tables in a service's database, from an Alembic migration.

A new service's first migration (or an existing service's next one) says `create_tables(op)`, its downgrade
`drop_tables(op)`; the DDL comes from `crm_kit.imports.models`, so it cannot drift from what the kit queries.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table

from crm_kit import migrations
from crm_kit.imports.models import ImportErrorRow, ImportFileChunk, ImportJob


def import_tables() -> list[Table]:
    return [ImportJob.__table__, ImportFileChunk.__table__, ImportErrorRow.__table__]  # type: ignore[list-item]


def create_tables(op: Any) -> None:
    migrations.create_tables(op, import_tables())
    # Already compressed (xlsx is a zip) or cheap to store: skip TOAST compression work on upload.
    op.execute("ALTER TABLE import_file_chunks ALTER COLUMN data SET STORAGE EXTERNAL")


def drop_tables(op: Any) -> None:
    migrations.drop_tables(op, import_tables())
