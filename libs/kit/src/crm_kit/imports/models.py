"""The tables of a service's imports: jobs (with their checkpoint, lease and the importer's choices), the
uploaded file in chunks, and the error report. Every service that imports owns these three tables in its own
database; its migration creates them with `crm_kit.imports.schema.create_tables(op)`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from crm_kit.db import Base, TenantOwned
from crm_kit.ids import new_id


class ImportJob(TenantOwned, Base):
    __tablename__ = "import_jobs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # What the rows become, the service's word for it: "accounts", "contacts", "leads", ...
    target: Mapped[str] = mapped_column(String(20))
    # "uploaded" | "queued" | "running" | "succeeded" | "failed" | "cancelled"
    status: Mapped[str] = mapped_column(String(10))
    file_name: Mapped[str] = mapped_column(String(300))
    # "csv" | "xlsx"
    format: Mapped[str] = mapped_column(String(4))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    columns: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    # [{"column": ..., "field": ...}]
    mapping: Mapped[list[dict[str, str]]] = mapped_column(JSONB, default=list)
    rows_total: Mapped[int] = mapped_column(BigInteger, default=0)
    # The checkpoint: data rows handled and committed (the next run starts after them).
    rows_done: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_created: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_updated: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    owner_id: Mapped[str] = mapped_column(String(36), default="")
    department_id: Mapped[str] = mapped_column(String(36), default="")
    created_by: Mapped[str] = mapped_column(String(36), default="")
    # The starter's roles, so the worker applies their field rules (read-only fields are not imported).
    role_ids: Mapped[list[str]] = mapped_column(ARRAY(String(36)), default=list)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # A running job's worker renews its lease; a job whose lease ran out is resumed by another worker.
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # What the worker needs beyond the mapping (encoding, the starter's data scope, the importer's own data).
    stats: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # What the person chose beside the mapping (e.g. leads: the pool, what to do with duplicates), as shown.
    options: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict, server_default=text("'{}'::jsonb"))

    __table_args__ = (
        Index("ix_import_jobs_tenant", "tenant_id", "id"),
        Index("ix_import_jobs_pending", "status", postgresql_where=text("status IN ('queued', 'running')")),
    )


class ImportFileChunk(TenantOwned, Base):
    """The uploaded file, in PostgreSQL (1 MiB bytea chunks): every replica can read it, it is in the backups,
    and it goes with its job."""

    __tablename__ = "import_file_chunks"
    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ImportErrorRow(TenantOwned, Base):
    __tablename__ = "import_errors"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(36))
    row: Mapped[int] = mapped_column(BigInteger)
    column: Mapped[str] = mapped_column(Text, default="")
    value: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_import_errors_job", "job_id", "row", "id"),)
