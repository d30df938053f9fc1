"""The sales service's tables. Every business table carries tenant_id; ids are UUIDv7 strings; money is NUMERIC."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from crm_kit.db import Base, TenantOwned, Timestamped

# Kit tables (outbox, inbox) live on the same metadata.
from crm_kit.events import outbox as _outbox  # noqa: F401
from crm_kit.ids import new_id
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

MONEY = Numeric(20, 2)
PRICE = Numeric(20, 4)


def _id() -> Mapped[str]:
    return mapped_column(String(36), primary_key=True, default=new_id)


def _ts(nullable: bool = True) -> Mapped[dt.datetime | None]:
    return mapped_column(DateTime(timezone=True), nullable=nullable)


def _open_with(column: str) -> Any:
    """Open leads (new, working, qualified) with the column filled: what duplicate lookups search."""
    return text(f"{column} <> '' AND status IN ('new', 'working', 'qualified')")


class Versioned:
    version: Mapped[int] = mapped_column(BigInteger, default=1)


# ---------------------------------------------------------------- leads and pools


class LeadPool(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "lead_pools"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    manager_ids: Mapped[list[str]] = mapped_column(ARRAY(String(36)), default=list)
    claim_cap: Mapped[int] = mapped_column(Integer, default=0)
    follow_up_days: Mapped[int] = mapped_column(Integer, default=0)
    conversion_days: Mapped[int] = mapped_column(Integer, default=0)
    warn_hours_before: Mapped[int] = mapped_column(Integer, default=0)
    cooldown_hours: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (UniqueConstraint("tenant_id", "name"),)


class PoolMember(TenantOwned, Base):
    """A rep's membership of a pool. Claims lock this row, so one rep's claims in a pool run one at a time and
    the cap holds under any concurrency."""

    __tablename__ = "lead_pool_members"
    pool_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(36), primary_key=True)


class Lead(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "leads"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(200))
    company: Mapped[str] = mapped_column(String(300), default="")
    title: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(320), default="")
    phone: Mapped[str] = mapped_column(String(50), default="")
    region: Mapped[str] = mapped_column(String(100), default="")
    industry: Mapped[str] = mapped_column(String(100), default="")
    territory: Mapped[str] = mapped_column(String(100), default="")
    source: Mapped[str] = mapped_column(String(20), default="manual")
    source_detail: Mapped[str] = mapped_column(String(300), default="")
    campaign_id: Mapped[str] = mapped_column(String(36), default="")
    form_id: Mapped[str] = mapped_column(String(36), default="")
    channel: Mapped[str] = mapped_column(String(100), default="")
    status: Mapped[str] = mapped_column(String(20), default="new")
    score: Mapped[int] = mapped_column(Integer, default=0)
    owner_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    department_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    pool_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    attributes: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    claimed_at: Mapped[dt.datetime | None] = _ts()
    last_follow_up_at: Mapped[dt.datetime | None] = _ts()
    # The reclaim deadline the holder was last warned about (a new deadline warns again).
    warned_for: Mapped[dt.datetime | None] = _ts()
    converted_account_id: Mapped[str] = mapped_column(String(36), default="")
    converted_contact_id: Mapped[str] = mapped_column(String(36), default="")
    converted_opportunity_id: Mapped[str] = mapped_column(String(36), default="")
    converted_at: Mapped[dt.datetime | None] = _ts()
    # The phone (E.164) and e-mail (lower case) in their normal forms ("" when absent or not valid), written
    # with the lead: an import finds the open leads a row duplicates by them.
    phone_key: Mapped[str] = mapped_column(String(50), default="", server_default="")
    email_key: Mapped[str] = mapped_column(String(320), default="", server_default="")

    __table_args__ = (
        Index("ix_leads_tenant_owner", "tenant_id", "owner_id", "id"),
        # The pool's waiting leads, and the reclaim job's scan of held pool leads.
        Index("ix_leads_tenant_pool_owner", "tenant_id", "pool_id", "owner_id"),
        Index("ix_leads_open_phone", "tenant_id", "phone_key", postgresql_where=_open_with("phone_key")),
        Index("ix_leads_open_email", "tenant_id", "email_key", postgresql_where=_open_with("email_key")),
    )


class LeadMove(TenantOwned, Base):
    """Who held a lead and why it moved: the full history (append-only)."""

    __tablename__ = "lead_moves"
    id: Mapped[str] = _id()
    lead_id: Mapped[str] = mapped_column(String(36))
    action: Mapped[str] = mapped_column(String(20))
    from_owner_id: Mapped[str] = mapped_column(String(36), default="")
    to_owner_id: Mapped[str] = mapped_column(String(36), default="")
    pool_id: Mapped[str] = mapped_column(String(36), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    actor_id: Mapped[str] = mapped_column(String(64), default="")
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_lead_moves_lead", "lead_id", "id"),)


class LeadFollowUp(TenantOwned, Base):
    __tablename__ = "lead_follow_ups"
    id: Mapped[str] = _id()
    lead_id: Mapped[str] = mapped_column(String(36))
    author_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text, default="")
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    next_follow_up_at: Mapped[dt.datetime | None] = _ts()

    __table_args__ = (Index("ix_lead_follow_ups_lead", "lead_id", "id"),)


class ScoringRule(TenantOwned, Timestamped, Base):
    __tablename__ = "lead_scoring_rules"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(200))
    field: Mapped[str] = mapped_column(String(100))
    operator: Mapped[str] = mapped_column(String(20))
    value: Mapped[str] = mapped_column(Text, default="")
    points: Mapped[int] = mapped_column(Integer)


class AssignmentRule(TenantOwned, Timestamped, Base):
    __tablename__ = "lead_assignment_rules"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(200))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    regions: Mapped[list[str]] = mapped_column(ARRAY(String(100)), default=list)
    industries: Mapped[list[str]] = mapped_column(ARRAY(String(100)), default=list)
    territories: Mapped[list[str]] = mapped_column(ARRAY(String(100)), default=list)
    sources: Mapped[list[str]] = mapped_column(ARRAY(String(20)), default=list)
    strategy: Mapped[str] = mapped_column(String(20))
    assignee_ids: Mapped[list[str]] = mapped_column(ARRAY(String(36)), default=list)
    pool_id: Mapped[str] = mapped_column(String(36), default="")
    # Round robin: how many leads this rule handed out (the next goes to assignee_ids[n % len]).
    handed_out: Mapped[int] = mapped_column(BigInteger, default=0)


class WebForm(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "web_forms"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(200))
    token: Mapped[str] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    pool_id: Mapped[str] = mapped_column(String(36), default="")
    campaign_id: Mapped[str] = mapped_column(String(36), default="")
    source_detail: Mapped[str] = mapped_column(String(300), default="")
    fields: Mapped[list[str]] = mapped_column(ARRAY(String(100)), default=list)
    honeypot_field: Mapped[str] = mapped_column(String(100), default="")
    min_seconds_to_submit: Mapped[int] = mapped_column(Integer, default=0)
    max_submissions_per_minute: Mapped[int] = mapped_column(Integer, default=30)
    title: Mapped[str] = mapped_column(String(300), default="")
    thank_you_message: Mapped[str] = mapped_column(Text, default="")
    # Who created it: leads that arrive without a pool or a matching rule are theirs.
    created_by: Mapped[str] = mapped_column(String(36), default="")


class FormSubmission(TenantOwned, Base):
    """Every public submission, accepted or not: the per-form rate limit counts these."""

    __tablename__ = "web_form_submissions"
    id: Mapped[str] = _id()
    form_id: Mapped[str] = mapped_column(String(36))
    outcome: Mapped[str] = mapped_column(String(20))
    lead_id: Mapped[str] = mapped_column(String(36), default="")
    submitted_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_web_form_submissions_form_time", "form_id", "submitted_at"),)


# ---------------------------------------------------------------- pipelines and opportunities


class Pipeline(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "pipelines"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(200))
    # The company's default pipeline (at most one per company): conversions and opportunities that name no
    # pipeline go into it.
    is_default: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))

    __table_args__ = (
        UniqueConstraint("tenant_id", "name"),
        Index("uq_pipelines_default", "tenant_id", unique=True, postgresql_where=text("is_default")),
    )


class Stage(TenantOwned, Base):
    __tablename__ = "pipeline_stages"
    id: Mapped[str] = _id()
    pipeline_id: Mapped[str] = mapped_column(String(36), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    probability: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(10), default="open")
    required_fields: Mapped[list[str]] = mapped_column(ARRAY(String(50)), default=list)
    # Stages removed from a pipeline stay for the history of opportunities that went through them.
    archived: Mapped[bool] = mapped_column(Boolean, default=False)


class Opportunity(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "opportunities"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(300))
    account_id: Mapped[str] = mapped_column(String(36), default="")
    contact_id: Mapped[str] = mapped_column(String(36), default="")
    lead_id: Mapped[str] = mapped_column(String(36), default="")
    pipeline_id: Mapped[str] = mapped_column(String(36))
    stage_id: Mapped[str] = mapped_column(String(36))
    amount: Mapped[Decimal | None] = mapped_column(MONEY, nullable=True)
    currency: Mapped[str] = mapped_column(String(3), default="CNY")
    close_date: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    probability: Mapped[int] = mapped_column(Integer, default=0)
    forecast_category: Mapped[str] = mapped_column(String(20), default="pipeline")
    next_step: Mapped[str] = mapped_column(Text, default="")
    competitors: Mapped[list[str]] = mapped_column(ARRAY(String(200)), default=list)
    products: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    team_member_ids: Mapped[list[str]] = mapped_column(ARRAY(String(36)), default=list)
    follower_ids: Mapped[list[str]] = mapped_column(ARRAY(String(36)), default=list)
    owner_id: Mapped[str] = mapped_column(String(36))
    department_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    status: Mapped[str] = mapped_column(String(10), default="open")
    won_reason: Mapped[str] = mapped_column(Text, default="")
    lost_reason: Mapped[str] = mapped_column(Text, default="")
    closed_at: Mapped[dt.datetime | None] = _ts()
    stage_entered_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    description: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (
        # The board: one pipeline's open opportunities per stage, newest move first.
        # Covering, so the stage totals are an index-only scan (after autovacuum has seen the pages).
        Index(
            "ix_opportunities_board",
            "tenant_id",
            "pipeline_id",
            "stage_id",
            "stage_entered_at",
            postgresql_where="status = 'open'",
            postgresql_include=["currency", "amount", "probability", "owner_id", "department_id"],
        ),
        Index("ix_opportunities_tenant_owner", "tenant_id", "owner_id", "id"),
    )


class StageChange(TenantOwned, Base):
    __tablename__ = "opportunity_stage_changes"
    id: Mapped[str] = _id()
    opportunity_id: Mapped[str] = mapped_column(String(36))
    from_stage_id: Mapped[str] = mapped_column(String(36), default="")
    to_stage_id: Mapped[str] = mapped_column(String(36))
    actor_id: Mapped[str] = mapped_column(String(64), default="")
    entered_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    left_at: Mapped[dt.datetime | None] = _ts()

    __table_args__ = (Index("ix_opportunity_stage_changes_opp", "opportunity_id", "id"),)


# ---------------------------------------------------------------- CPQ


class Counter(TenantOwned, Base):
    """Per-tenant numbering (quotes, contracts, orders): `UPDATE … RETURNING` hands out each number once."""

    __tablename__ = "sales_counters"
    tenant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(30), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class Product(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "products"
    id: Mapped[str] = _id()
    code: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(300))
    name_en: Mapped[str] = mapped_column(String(300), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    unit: Mapped[str] = mapped_column(String(30), default="")
    tax_rate: Mapped[Decimal] = mapped_column(Numeric(7, 4), default=Decimal(0))
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    __table_args__ = (UniqueConstraint("tenant_id", "code"),)


class PriceBook(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "price_books"
    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column(String(200))
    currency: Mapped[str] = mapped_column(String(3))
    customer_group: Mapped[str] = mapped_column(String(100), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    __table_args__ = (UniqueConstraint("tenant_id", "name"),)


class PriceBookEntry(TenantOwned, Base):
    __tablename__ = "price_book_entries"
    price_book_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    product_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    unit_price: Mapped[Decimal] = mapped_column(PRICE)


class ApprovalPolicy(TenantOwned, Versioned, Base):
    __tablename__ = "approval_policies"
    tenant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    discount_threshold_percent: Mapped[Decimal] = mapped_column(Numeric(7, 4), default=Decimal(100))
    # [[approver ids of step 1], [approver ids of step 2], ...]
    steps: Mapped[list[list[str]]] = mapped_column(JSONB, default=list)


class Quote(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "quotes"
    id: Mapped[str] = _id()
    number: Mapped[str] = mapped_column(String(40))
    revision: Mapped[int] = mapped_column(Integer, default=1)
    title: Mapped[str] = mapped_column(String(300), default="")
    opportunity_id: Mapped[str] = mapped_column(String(36), default="")
    account_id: Mapped[str] = mapped_column(String(36), default="")
    contact_id: Mapped[str] = mapped_column(String(36), default="")
    customer_name: Mapped[str] = mapped_column(String(300), default="")
    price_book_id: Mapped[str] = mapped_column(String(36), default="")
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20), default="draft")
    # Line inputs and computed amounts, decimals as strings (see crm_sales.domain.pricing).
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    discount_percent: Mapped[Decimal] = mapped_column(Numeric(7, 4), default=Decimal(0))
    list_total: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    subtotal: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    overall_discount_amount: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    discount_total: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    effective_discount_percent: Mapped[Decimal] = mapped_column(Numeric(9, 4), default=Decimal(0))
    tax_total: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    total: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    valid_until: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    locale: Mapped[str] = mapped_column(String(10), default="zh-CN")
    notes: Mapped[str] = mapped_column(Text, default="")
    terms: Mapped[str] = mapped_column(Text, default="")
    approval_id: Mapped[str] = mapped_column(String(36), default="")
    owner_id: Mapped[str] = mapped_column(String(36))
    department_id: Mapped[str | None] = mapped_column(String(36), nullable=True)

    __table_args__ = (
        UniqueConstraint("tenant_id", "number", "revision"),
        Index("ix_quotes_tenant_opportunity", "tenant_id", "opportunity_id"),
    )


class Approval(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "approvals"
    id: Mapped[str] = _id()
    object_type: Mapped[str] = mapped_column(String(20))
    object_id: Mapped[str] = mapped_column(String(36))
    reason: Mapped[str] = mapped_column(Text, default="")
    # The reason as a `crm_kit.policy.Text`: which fields of the object each piece came from (None: before 0012).
    reason_sources: Mapped[Any] = mapped_column(JSONB, nullable=True)
    status: Mapped[str] = mapped_column(String(10), default="pending")
    steps: Mapped[list[list[str]]] = mapped_column(JSONB, default=list)
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    # [{"step", "actor_id", "decision", "comment", "occurred_at"}], append-only.
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    requested_by: Mapped[str] = mapped_column(String(64), default="")
    # Who may decide the current step (denormalised for "waiting for me").
    current_approver_ids: Mapped[list[str]] = mapped_column(ARRAY(String(36)), default=list)

    __table_args__ = (Index("ix_approvals_tenant_object", "tenant_id", "object_id"),)


# ---------------------------------------------------------------- contracts, orders, collection


class Contract(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "contracts"
    id: Mapped[str] = _id()
    number: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(300), default="")
    account_id: Mapped[str] = mapped_column(String(36), default="")
    customer_name: Mapped[str] = mapped_column(String(300), default="")
    opportunity_id: Mapped[str] = mapped_column(String(36), default="")
    quote_id: Mapped[str] = mapped_column(String(36), default="")
    amount: Mapped[Decimal] = mapped_column(MONEY)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20), default="draft")
    start_date: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    end_date: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    signed_date: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    renewal_reminder_days: Mapped[int] = mapped_column(Integer, default=0)
    renewal_reminded_at: Mapped[dt.datetime | None] = _ts()
    terms: Mapped[str] = mapped_column(Text, default="")
    approval_id: Mapped[str] = mapped_column(String(36), default="")
    owner_id: Mapped[str] = mapped_column(String(36))
    department_id: Mapped[str | None] = mapped_column(String(36), nullable=True)

    __table_args__ = (
        UniqueConstraint("tenant_id", "number"),
        # The renewal job: active contracts by end date.
        Index(
            "ix_contracts_renewal",
            "end_date",
            postgresql_where="status = 'active' AND renewal_reminded_at IS NULL",
        ),
    )


class Order(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "orders"
    id: Mapped[str] = _id()
    number: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[str] = mapped_column(String(36), default="")
    customer_name: Mapped[str] = mapped_column(String(300), default="")
    quote_id: Mapped[str] = mapped_column(String(36), default="")
    contract_id: Mapped[str] = mapped_column(String(36), default="")
    currency: Mapped[str] = mapped_column(String(3))
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    total: Mapped[Decimal] = mapped_column(MONEY)
    status: Mapped[str] = mapped_column(String(20), default="open")
    owner_id: Mapped[str] = mapped_column(String(36))
    department_id: Mapped[str | None] = mapped_column(String(36), nullable=True)

    __table_args__ = (
        UniqueConstraint("tenant_id", "number"),
        # One order per accepted quote.
        Index("uq_orders_quote", "tenant_id", "quote_id", unique=True, postgresql_where="quote_id <> ''"),
    )


class PaymentPlan(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "payment_plans"
    id: Mapped[str] = _id()
    order_id: Mapped[str] = mapped_column(String(36), default="")
    contract_id: Mapped[str] = mapped_column(String(36), default="")
    account_id: Mapped[str] = mapped_column(String(36), default="")
    currency: Mapped[str] = mapped_column(String(3))
    total: Mapped[Decimal] = mapped_column(MONEY)
    owner_id: Mapped[str] = mapped_column(String(36))
    department_id: Mapped[str | None] = mapped_column(String(36), nullable=True)


class Instalment(TenantOwned, Base):
    __tablename__ = "instalments"
    id: Mapped[str] = _id()
    plan_id: Mapped[str] = mapped_column(String(36), index=True)
    account_id: Mapped[str] = mapped_column(String(36), default="")
    owner_id: Mapped[str] = mapped_column(String(36))
    sequence: Mapped[int] = mapped_column(Integer)
    due_date: Mapped[dt.date] = mapped_column(Date)
    amount: Mapped[Decimal] = mapped_column(MONEY)
    paid_amount: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20), default="pending")

    __table_args__ = (
        Index("ix_instalments_account", "tenant_id", "account_id", "due_date"),
        # Overdue detection and the collection forecast: unpaid instalments by due date.
        Index("ix_instalments_open_due", "due_date", postgresql_where="status <> 'paid'"),
    )


class Payment(TenantOwned, Timestamped, Base):
    __tablename__ = "payments"
    id: Mapped[str] = _id()
    instalment_id: Mapped[str] = mapped_column(String(36), index=True)
    plan_id: Mapped[str] = mapped_column(String(36), index=True)
    account_id: Mapped[str] = mapped_column(String(36), default="")
    amount: Mapped[Decimal] = mapped_column(MONEY)
    currency: Mapped[str] = mapped_column(String(3))
    paid_date: Mapped[dt.date] = mapped_column(Date)
    method: Mapped[str] = mapped_column(String(20))
    reference: Mapped[str] = mapped_column(String(200), default="")
    recorded_by: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[str] = mapped_column(String(36))
    refunded_amount: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))


# ---------------------------------------------------------------- tasks, activities, forecast targets


class Task(TenantOwned, Timestamped, Versioned, Base):
    __tablename__ = "tasks"
    id: Mapped[str] = _id()
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    related_type: Mapped[str] = mapped_column(String(20), default="")
    related_id: Mapped[str] = mapped_column(String(36), default="")
    assignee_id: Mapped[str] = mapped_column(String(36))
    department_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    due_at: Mapped[dt.datetime | None] = _ts()
    remind_at: Mapped[dt.datetime | None] = _ts()
    reminded_at: Mapped[dt.datetime | None] = _ts()
    status: Mapped[str] = mapped_column(String(10), default="open")
    priority: Mapped[str] = mapped_column(String(10), default="normal")
    mentioned_user_ids: Mapped[list[str]] = mapped_column(ARRAY(String(36)), default=list)
    created_by: Mapped[str] = mapped_column(String(64))
    completed_at: Mapped[dt.datetime | None] = _ts()

    __table_args__ = (
        Index("ix_tasks_tenant_assignee", "tenant_id", "assignee_id", "id"),
        Index("ix_tasks_related", "tenant_id", "related_id"),
        Index("ix_tasks_reminders", "remind_at", postgresql_where="status = 'open' AND reminded_at IS NULL"),
    )


class Activity(TenantOwned, Base):
    __tablename__ = "activities"
    id: Mapped[str] = _id()
    related_type: Mapped[str] = mapped_column(String(20))
    related_id: Mapped[str] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text)
    mentioned_user_ids: Mapped[list[str]] = mapped_column(ARRAY(String(36)), default=list)
    author_id: Mapped[str] = mapped_column(String(64))
    department_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_activities_related", "tenant_id", "related_id", "id"),)


class ForecastTarget(TenantOwned, Versioned, Base):
    __tablename__ = "forecast_targets"
    id: Mapped[str] = _id()
    period: Mapped[str] = mapped_column(String(10))
    owner_id: Mapped[str] = mapped_column(String(36), default="")
    department_id: Mapped[str] = mapped_column(String(36), default="")
    currency: Mapped[str] = mapped_column(String(3))
    revenue_target: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    collection_target: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))

    __table_args__ = (UniqueConstraint("tenant_id", "period", "owner_id", "department_id", "currency"),)


# ---------------------------------------------------------------- customers' merges, followed here


class CustomerMerge(TenantOwned, Base):
    """A customers merge as sales followed it: every reference it moved here, with its value before and after,
    so that undoing the merge moves back exactly those (and only while they still name the survivor)."""

    __tablename__ = "customer_merges"
    # The customers service's merge id.
    merge_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    record_type: Mapped[str] = mapped_column(String(10))
    survivor_id: Mapped[str] = mapped_column(String(36))
    merged_ids: Mapped[list[str]] = mapped_column(ARRAY(String(36)), default=list)
    # "followed" (references moved to the survivor) or "undone" (moved back, or the undo came first).
    status: Mapped[str] = mapped_column(String(10))
    # [{"table", "id", "column", "object_type", "object_id", "before", "after"}]
    moves: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    moved_back: Mapped[int] = mapped_column(Integer, default=0)
    followed_at: Mapped[dt.datetime | None] = _ts()
    undone_at: Mapped[dt.datetime | None] = _ts()


# Merges re-point references by account or contact id (crm_sales.domain.merges): one index per reference.
MERGE_REFERENCE_INDEXES = [
    Index(f"ix_{model.__tablename__}_tenant_{column}", model.tenant_id, getattr(model, column))
    for model, column in (
        (Lead, "converted_account_id"),
        (Lead, "converted_contact_id"),
        (Opportunity, "account_id"),
        (Opportunity, "contact_id"),
        (Quote, "account_id"),
        (Quote, "contact_id"),
        (Contract, "account_id"),
        (Order, "account_id"),
        (PaymentPlan, "account_id"),
        (Payment, "account_id"),
    )
]


class Refund(TenantOwned, Timestamped, Base):
    """Money paid back against a payment (append-only); the payment's `refunded_amount` is their sum."""

    __tablename__ = "refunds"
    id: Mapped[str] = _id()
    payment_id: Mapped[str] = mapped_column(String(36), index=True)
    instalment_id: Mapped[str] = mapped_column(String(36))
    plan_id: Mapped[str] = mapped_column(String(36), index=True)
    account_id: Mapped[str] = mapped_column(String(36), default="")
    amount: Mapped[Decimal] = mapped_column(MONEY)
    currency: Mapped[str] = mapped_column(String(3))
    refund_date: Mapped[dt.date] = mapped_column(Date)
    reason: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(20))
    reference: Mapped[str] = mapped_column(String(200), default="")
    recorded_by: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[str] = mapped_column(String(36))

    __table_args__ = (Index("ix_refunds_tenant_account_id", "tenant_id", "account_id"),)


# ---------------------------------------------------------------- the tenant's sales settings


class SalesSettings(TenantOwned, Timestamped, Versioned, Base):
    """One row per tenant: the letterhead of quote and contract PDFs."""

    __tablename__ = "sales_settings"
    tenant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    company_name: Mapped[str] = mapped_column(String(300), default="")
    company_name_en: Mapped[str] = mapped_column(String(300), default="")
    address: Mapped[str] = mapped_column(String(500), default="")
    address_en: Mapped[str] = mapped_column(String(500), default="")
    phone: Mapped[str] = mapped_column(String(50), default="")
    tax_number: Mapped[str] = mapped_column(String(50), default="")
    logo: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    logo_content_type: Mapped[str] = mapped_column(String(20), default="")
    logo_sha256: Mapped[str] = mapped_column(String(64), default="")
