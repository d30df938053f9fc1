"""The customers service's tables. Every business table carries tenant_id; ids are UUIDv7 strings.

Accounts and contacts keep, next to what people typed, the normal forms that matching and search use
(`crm_customers.normalize`): E.164 phones, lower-case e-mails, the checked credit code, the company/person name
key, and the search columns (`search_*`, see `crm_customers.domain.search`). All of them are written by the
domain on every create and update, never by hand.

Soft delete: `deleted_at` set = in the recycle bin. Every list and lookup filters on it; the partial indexes
below cover only live rows, so a large recycle bin costs lists nothing.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from crm_kit.db import Base, TenantOwned, Timestamped

# Kit tables (outbox, inbox) live on the same metadata.
from crm_kit.events import outbox as _outbox  # noqa: F401
from crm_kit.ids import new_id
from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

LIVE = text("deleted_at IS NULL")


def _id() -> Mapped[str]:
    return mapped_column(String(36), primary_key=True, default=new_id)


class TextList(TypeDecorator[list[str]]):
    """text[] read as the list asyncpg already returns, without SQLAlchemy walking every item again (a
    measurable share of a list page's time)."""

    impl = ARRAY(Text)
    cache_ok = True

    class comparator_factory(ARRAY.Comparator):  # SQLAlchemy's hook: keeps contains() and overlap()
        pass

    def result_processor(self, dialect: Any, coltype: Any) -> None:
        return None


def _texts() -> Mapped[list[str]]:
    return mapped_column(TextList(), default=list, server_default="{}")


def _str(length: int) -> Mapped[str]:
    return mapped_column(String(length), default="", server_default="")


class Versioned:
    version: Mapped[int] = mapped_column(BigInteger, default=1)


class SoftDeleted:
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    deleted_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # Set when a merge folded this record into another (the data-quality domain); it is then also deleted.
    merged_into_id: Mapped[str | None] = mapped_column(String(36), nullable=True)


class Searchable:
    # Lower-cased, NFKC-folded names (name, alternative/Latin names, their pinyin): trigram GIN.
    search_name: Mapped[str] = mapped_column(Text, default="", server_default="")
    # Short (1–2 character) CJK queries: every 1- and 2-character piece of the names, GIN on the array.
    search_grams: Mapped[list[str]] = _texts()
    # Phones (digits), e-mails and searchable custom field values: trigram GIN; left out for callers that may
    # not see phones, e-mails or a searchable custom field.
    search_extra: Mapped[str] = mapped_column(Text, default="", server_default="")


class Account(TenantOwned, Timestamped, Versioned, SoftDeleted, Searchable, Base):
    __tablename__ = "accounts"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(300))
    alt_name: Mapped[str] = _str(300)
    # company_name_key(name): the matching key of duplicate rules.
    name_key: Mapped[str] = _str(300)
    credit_code: Mapped[str | None] = mapped_column(String(18), nullable=True)
    legal_representative: Mapped[str] = _str(100)
    registered_capital: Mapped[Decimal | None] = mapped_column(Numeric(20, 2), nullable=True)
    registered_capital_currency: Mapped[str] = mapped_column(String(3), default="CNY", server_default="CNY")
    industry: Mapped[str] = _str(100)
    size: Mapped[str] = _str(20)
    region: Mapped[str] = _str(100)
    province: Mapped[str] = _str(50)
    city: Mapped[str] = _str(50)
    district: Mapped[str] = _str(50)
    address: Mapped[str] = _str(500)
    website: Mapped[str] = _str(300)
    phones: Mapped[list[str]] = _texts()
    # E.164 ("+8613800138000"), in the order of `phones` (values that are no phone number are left out).
    phones_normalized: Mapped[list[str]] = _texts()
    emails: Mapped[list[str]] = _texts()
    # Lower-cased.
    emails_normalized: Mapped[list[str]] = _texts()
    source: Mapped[str] = _str(50)
    tier: Mapped[str] = _str(50)
    # True when a person set the tier; tier rules then leave it alone.
    tier_manual: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    lifecycle_stage: Mapped[str] = _str(20)
    owner_id: Mapped[str] = mapped_column(String(36))
    department_id: Mapped[str] = _str(36)
    team_member_ids: Mapped[list[str]] = _texts()
    tags: Mapped[list[str]] = _texts()
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")
    satisfaction: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    competitors: Mapped[list[str]] = _texts()
    parent_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    custom_fields: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    created_by: Mapped[str] = _str(36)

    __table_args__ = (
        # Lists: the default order (newest first) and the common sorts, live rows only.
        Index("ix_accounts_tenant_id_live", "tenant_id", "id", postgresql_where=LIVE),
        Index("ix_accounts_tenant_name", "tenant_id", "name", "id", postgresql_where=LIVE),
        Index("ix_accounts_tenant_updated", "tenant_id", "updated_at", "id", postgresql_where=LIVE),
        Index("ix_accounts_tenant_created", "tenant_id", "created_at", "id", postgresql_where=LIVE),
        Index("ix_accounts_tenant_capital", "tenant_id", "registered_capital", "id", postgresql_where=LIVE),
        Index("ix_accounts_tenant_owner", "tenant_id", "owner_id", "id", postgresql_where=LIVE),
        Index("ix_accounts_tenant_department", "tenant_id", "department_id", "id", postgresql_where=LIVE),
        Index(
            "ix_accounts_tenant_province_city", "tenant_id", "province", "city", "id", postgresql_where=LIVE
        ),
        Index("ix_accounts_tenant_stage", "tenant_id", "lifecycle_stage", "id", postgresql_where=LIVE),
        Index(
            "ix_accounts_tenant_parent",
            "tenant_id",
            "parent_id",
            postgresql_where=text("parent_id IS NOT NULL"),
        ),
        Index(
            "ix_accounts_tenant_deleted",
            "tenant_id",
            "deleted_at",
            "id",
            postgresql_where=text("deleted_at IS NOT NULL"),
        ),
        # Matching (duplicate rules) and lookups.
        Index("ix_accounts_tenant_name_key", "tenant_id", "name_key"),
        Index(
            "ix_accounts_tenant_credit_code",
            "tenant_id",
            "credit_code",
            postgresql_where=text("credit_code IS NOT NULL"),
        ),
        Index("ix_accounts_phones", "phones_normalized", postgresql_using="gin"),
        Index("ix_accounts_emails", "emails_normalized", postgresql_using="gin"),
        Index("ix_accounts_tags", "tags", postgresql_using="gin"),
        Index(
            "ix_accounts_custom_fields",
            "custom_fields",
            postgresql_using="gin",
            postgresql_ops={"custom_fields": "jsonb_path_ops"},
        ),
        # Keyword search.
        Index(
            "ix_accounts_search_name",
            "search_name",
            postgresql_using="gin",
            postgresql_ops={"search_name": "gin_trgm_ops"},
        ),
        Index(
            "ix_accounts_search_extra",
            "search_extra",
            postgresql_using="gin",
            postgresql_ops={"search_extra": "gin_trgm_ops"},
        ),
        Index("ix_accounts_search_grams", "search_grams", postgresql_using="gin"),
    )


class AccountStageChange(TenantOwned, Base):
    """The lifecycle history of an account: one row per change of stage."""

    __tablename__ = "account_stage_changes"
    id: Mapped[str] = _id()
    account_id: Mapped[str] = mapped_column(String(36))
    from_stage: Mapped[str] = _str(20)
    to_stage: Mapped[str] = _str(20)
    changed_by: Mapped[str] = _str(36)
    changed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))

    __table_args__ = (Index("ix_account_stage_changes_account", "tenant_id", "account_id", "id"),)


class TenantSettings(Base):
    """Per-tenant settings of this service (tier rules, the recycle bin's retention)."""

    __tablename__ = "tenant_settings"
    tenant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # {"rules": [{"tier": "vip", "filter": ["registered_capital:gte:10000000"]}], "default_tier": "normal"}
    tier_rules: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    # The tier rules' version.
    version: Mapped[int] = mapped_column(BigInteger, default=1)
    # Days a deleted account or contact stays restorable; NULL: the default (domain/recycle_bin.py).
    recycle_bin_retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    recycle_bin_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Contact(TenantOwned, Timestamped, Versioned, SoftDeleted, Searchable, Base):
    __tablename__ = "contacts"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(200))
    name_latin: Mapped[str] = _str(200)
    # person_name_key(name): 王小明 = Wang Xiaoming = "wangxiaoming".
    name_key: Mapped[str] = _str(200)
    titles: Mapped[list[str]] = _texts()
    phones: Mapped[list[str]] = _texts()
    phones_normalized: Mapped[list[str]] = _texts()
    emails: Mapped[list[str]] = _texts()
    emails_normalized: Mapped[list[str]] = _texts()
    # [{"kind": "wechat", "handle": "wxid_..."}]
    im_handles: Mapped[list[dict[str, str]]] = mapped_column(JSONB, default=list, server_default="[]")
    birthday: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    buying_role: Mapped[str] = _str(20)
    consent_email: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    consent_sms: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    consent_phone: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    consent_wechat: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    consent_updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    account_ids: Mapped[list[str]] = _texts()
    primary_account_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    owner_id: Mapped[str] = mapped_column(String(36))
    department_id: Mapped[str] = _str(36)
    tags: Mapped[list[str]] = _texts()
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")
    custom_fields: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    created_by: Mapped[str] = _str(36)

    __table_args__ = (
        Index("ix_contacts_tenant_id_live", "tenant_id", "id", postgresql_where=LIVE),
        Index("ix_contacts_tenant_name", "tenant_id", "name", "id", postgresql_where=LIVE),
        Index("ix_contacts_tenant_updated", "tenant_id", "updated_at", "id", postgresql_where=LIVE),
        Index("ix_contacts_tenant_owner", "tenant_id", "owner_id", "id", postgresql_where=LIVE),
        Index("ix_contacts_tenant_department", "tenant_id", "department_id", "id", postgresql_where=LIVE),
        Index(
            "ix_contacts_tenant_deleted",
            "tenant_id",
            "deleted_at",
            "id",
            postgresql_where=text("deleted_at IS NOT NULL"),
        ),
        Index("ix_contacts_tenant_name_key", "tenant_id", "name_key"),
        Index("ix_contacts_accounts", "account_ids", postgresql_using="gin"),
        Index("ix_contacts_phones", "phones_normalized", postgresql_using="gin"),
        Index("ix_contacts_emails", "emails_normalized", postgresql_using="gin"),
        Index("ix_contacts_tags", "tags", postgresql_using="gin"),
        Index(
            "ix_contacts_custom_fields",
            "custom_fields",
            postgresql_using="gin",
            postgresql_ops={"custom_fields": "jsonb_path_ops"},
        ),
        Index(
            "ix_contacts_search_name",
            "search_name",
            postgresql_using="gin",
            postgresql_ops={"search_name": "gin_trgm_ops"},
        ),
        Index(
            "ix_contacts_search_extra",
            "search_extra",
            postgresql_using="gin",
            postgresql_ops={"search_extra": "gin_trgm_ops"},
        ),
        Index("ix_contacts_search_grams", "search_grams", postgresql_using="gin"),
    )


class Interaction(TenantOwned, Timestamped, Versioned, Base):
    """A call, meeting, visit, e-mail or note on accounts and contacts: the timeline."""

    __tablename__ = "interactions"
    id: Mapped[str] = _id()
    kind: Mapped[str] = mapped_column(String(20))
    subject: Mapped[str] = _str(300)
    body: Mapped[str] = mapped_column(Text, default="", server_default="")
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    duration_minutes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    outcome: Mapped[str] = mapped_column(Text, default="", server_default="")
    location: Mapped[str] = _str(300)
    account_ids: Mapped[list[str]] = _texts()
    contact_ids: Mapped[list[str]] = _texts()
    # [{"kind": "user"|"contact"|"external", "id": "...", "name": "...", "email": "..."}]
    participants: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list, server_default="[]")
    # [{"name", "content_type", "size_bytes", "url", "sha256"}]
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list, server_default="[]")
    owner_id: Mapped[str] = mapped_column(String(36))
    department_id: Mapped[str] = _str(36)
    created_by: Mapped[str] = _str(36)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("ix_interactions_tenant_time", "tenant_id", "occurred_at", "id", postgresql_where=LIVE),
        Index("ix_interactions_accounts", "account_ids", postgresql_using="gin"),
        Index("ix_interactions_contacts", "contact_ids", postgresql_using="gin"),
    )


class TimelineEntry(TenantOwned, Base):
    """An entry other services' events put on an account's timeline (sales: opportunities, quotes, contracts,
    orders, payments, converted leads); written by a consumer, one per event (`event_id` is unique)."""

    __tablename__ = "timeline_entries"
    id: Mapped[str] = _id()
    account_id: Mapped[str] = mapped_column(String(36))
    # "sales.opportunity_won", ...
    kind: Mapped[str] = mapped_column(String(60))
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    title_zh: Mapped[str] = _str(300)
    title_en: Mapped[str] = _str(300)
    summary_zh: Mapped[str] = _str(500)
    summary_en: Mapped[str] = _str(500)
    # The permission object whose "read" (and data scope, on owner_id / department_id) shows the entry.
    object_type: Mapped[str] = mapped_column(String(30))
    owner_id: Mapped[str] = _str(36)
    department_id: Mapped[str] = _str(36)
    # What it links to in the other service.
    link_type: Mapped[str] = mapped_column(String(30))
    link_id: Mapped[str] = mapped_column(String(36))
    amount: Mapped[str] = _str(40)
    currency: Mapped[str] = _str(3)
    # Per copied value (title_zh, ..., amount): the `crm_kit.policy.Text` it was made of, or the sales fields
    # it came from, so the sales object's field rules apply when the entry is read (None: written before).
    sources: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    event_type: Mapped[str] = mapped_column(String(100))
    event_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))

    __table_args__ = (
        Index("ix_timeline_entries_account", "tenant_id", "account_id", "occurred_at", "id"),
        Index("ix_timeline_entries_link", "tenant_id", "link_id"),
        Index("uq_timeline_entries_event", "event_id", unique=True),
    )


class RelationshipType(TenantOwned, Timestamped, Versioned, Base):
    """A tenant's own relationship type (the built-in ones live in code: domain/relationships.py)."""

    __tablename__ = "relationship_types"
    id: Mapped[str] = _id()
    key: Mapped[str] = mapped_column(String(50))
    name_zh: Mapped[str] = _str(100)
    name_en: Mapped[str] = _str(100)
    inverse_name_zh: Mapped[str] = _str(100)
    inverse_name_en: Mapped[str] = _str(100)
    source_type: Mapped[str] = _str(10)
    target_type: Mapped[str] = _str(10)
    symmetric: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("uq_relationship_types_key", "tenant_id", "key", unique=True, postgresql_where=LIVE),
    )


class Relationship(TenantOwned, Timestamped, Versioned, Base):
    """A typed edge between two records (account or contact)."""

    __tablename__ = "relationships"
    id: Mapped[str] = _id()
    type_key: Mapped[str] = mapped_column(String(50))
    source_type: Mapped[str] = mapped_column(String(10))
    source_id: Mapped[str] = mapped_column(String(36))
    target_type: Mapped[str] = mapped_column(String(10))
    target_id: Mapped[str] = mapped_column(String(36))
    note: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_by: Mapped[str] = _str(36)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index(
            "uq_relationships_edge",
            "tenant_id",
            "type_key",
            "source_id",
            "target_id",
            unique=True,
            postgresql_where=LIVE,
        ),
        Index("ix_relationships_source", "tenant_id", "source_id", postgresql_where=LIVE),
        Index("ix_relationships_target", "tenant_id", "target_id", postgresql_where=LIVE),
    )


class CustomField(TenantOwned, Timestamped, Versioned, Base):
    """A tenant's custom field definition for accounts or contacts; values live in the records' custom_fields."""

    __tablename__ = "custom_fields"
    id: Mapped[str] = _id()
    record_type: Mapped[str] = mapped_column(String(10))
    key: Mapped[str] = mapped_column(String(40))
    label_zh: Mapped[str] = _str(100)
    label_en: Mapped[str] = _str(100)
    type: Mapped[str] = mapped_column(String(20))
    required: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    unique: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    searchable: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # [{"value": "a", "label_zh": "甲", "label_en": "A"}]
    options: Mapped[list[dict[str, str]]] = mapped_column(JSONB, default=list, server_default="[]")
    pattern: Mapped[str] = _str(500)
    min: Mapped[str] = _str(40)
    max: Mapped[str] = _str(40)
    max_length: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    help_zh: Mapped[str] = _str(500)
    help_en: Mapped[str] = _str(500)
    position: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("uq_custom_fields_key", "tenant_id", "record_type", "key", unique=True, postgresql_where=LIVE),
    )


class SavedView(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "saved_views"
    id: Mapped[str] = _id()
    record_type: Mapped[str] = mapped_column(String(10))
    name: Mapped[str] = mapped_column(String(200))
    filter: Mapped[list[str]] = _texts()
    sort: Mapped[str] = _str(300)
    columns: Mapped[list[str]] = _texts()
    query: Mapped[str] = _str(200)
    shared: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    owner_id: Mapped[str] = mapped_column(String(36))
    department_id: Mapped[str] = _str(36)

    __table_args__ = (Index("ix_saved_views_owner", "tenant_id", "owner_id"),)
