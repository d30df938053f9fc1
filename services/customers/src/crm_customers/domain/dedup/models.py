"""Tables of the duplicate domain: per-tenant rules, scan results, and merges with what undo needs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from crm_kit.db import Base, TenantOwned, Timestamped
from crm_kit.ids import new_id
from sqlalchemy import ARRAY, BigInteger, Boolean, DateTime, Float, Index, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column


class DuplicateRule(TenantOwned, Timestamped, Base):
    __tablename__ = "duplicate_rules"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    # "account" | "contact"
    record_type: Mapped[str] = mapped_column(String(10))
    # "phone" | "email" | "credit_code" | "company_name" | "person_name_and_company"
    match: Mapped[str] = mapped_column(String(30))
    threshold: Mapped[float] = mapped_column(Float, default=0.85)
    # "block" | "warn" | "allow"
    on_create: Mapped[str] = mapped_column(String(10))
    on_update: Mapped[str] = mapped_column(String(10))
    # "skip" | "update" | "create"
    on_import: Mapped[str] = mapped_column(String(10))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    version: Mapped[int] = mapped_column(BigInteger, default=1)

    __table_args__ = (Index("ix_duplicate_rules_tenant_type", "tenant_id", "record_type", "id"),)


class DuplicateScan(TenantOwned, Base):
    """One scan over a tenant's records; a background worker runs it (claimed with a lease)."""

    __tablename__ = "duplicate_scans"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    record_type: Mapped[str] = mapped_column(String(10))
    # "queued" | "running" | "succeeded" | "failed"
    status: Mapped[str] = mapped_column(String(10))
    records_scanned: Mapped[int] = mapped_column(BigInteger, default=0)
    groups_found: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(36), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("ix_duplicate_scans_tenant", "tenant_id", "id"),
        Index("ix_duplicate_scans_pending", "status", postgresql_where="status IN ('queued', 'running')"),
    )


class DuplicateGroup(TenantOwned, Base):
    __tablename__ = "duplicate_groups"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    scan_id: Mapped[str] = mapped_column(String(36))
    record_type: Mapped[str] = mapped_column(String(10))
    score: Mapped[float] = mapped_column(Float)
    # [{"id", "name", "score", "rule_ids": [...], "matches": [...], "matched_values": [...]}]
    members: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)

    __table_args__ = (Index("ix_duplicate_groups_scan", "tenant_id", "scan_id", "score", "id"),)


class Merge(TenantOwned, Base):
    """A merge, and everything needed to undo it: the rows as they were and every reference that moved."""

    __tablename__ = "merges"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    record_type: Mapped[str] = mapped_column(String(10))
    survivor_id: Mapped[str] = mapped_column(String(36))
    merged_ids: Mapped[list[str]] = mapped_column(ARRAY(String(36)))
    field_sources: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    # "merged" | "undone"
    status: Mapped[str] = mapped_column(String(10))
    references_moved: Mapped[int] = mapped_column(BigInteger, default=0)
    merged_by: Mapped[str] = mapped_column(String(36), default="")
    merged_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    undo_until: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    undone_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # {"rows": {id: {column: value}} (survivor and merged, before), "moves": [{"table", "id", "column",
    #  "before"}]}: restored as they were by UndoMerge; dropped when the undo period is over.
    undo_data: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)

    __table_args__ = (
        Index("ix_merges_tenant", "tenant_id", "id"),
        Index("ix_merges_survivor", "tenant_id", "survivor_id"),
    )
