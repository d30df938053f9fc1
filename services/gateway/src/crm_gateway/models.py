"""The gateway's own tables (its database, `CRM_DATABASE_URL`): what every replica must see the same.

- `idempotency_keys`: one row per (credential scope, Idempotency-Key), named by an HMAC; the stored answer is
  encrypted (see `idempotency.py`). Rows live `idempotency_ttl_seconds` (`expires_at`), then are purged.
- `rate_limit_counters`: fixed-window counters, one row per (limit, who, window). UNLOGGED: counters need no
  crash safety, so they cost no WAL; a crash only forgets the current minute.
"""

from __future__ import annotations

import datetime as dt

from crm_kit.db import NAMING
from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, LargeBinary, MetaData, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    # Who holds the claim: only that request may finish or release it.
    claim: Mapped[str] = mapped_column(String(32))
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    claimed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    reply: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)

    __table_args__ = (Index("ix_idempotency_keys_expires_at", "expires_at"),)


class RateLimitCounter(Base):
    __tablename__ = "rate_limit_counters"

    bucket: Mapped[str] = mapped_column(String(300), primary_key=True)
    window_no: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hits: Mapped[int] = mapped_column(Integer)
    window_end: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_rate_limit_counters_window_end", "window_end"),
        {"prefixes": ["UNLOGGED"]},
    )
