"""Writes that happen once even when a client retries after a replica died mid-request.

The gateway's Idempotency-Key store replays answers it has seen. What it cannot see is a write that committed
in a replica killed before it answered: the gateway gets an error and frees the key, and the client's retry
would run the write again. So the gateway also passes a digest of the key to the service (gRPC metadata
`idempotency-key`), and the service records it in the same transaction as the write (`Database.unit_of_work`
does this). A retry then finds the record: with the stored answer it is replayed; if the replica died between
commit and storing its answer, the retry is told the request was already carried out (409
`already_applied`) instead of doing it twice.

A record is matched on the request too, not only the key: it names the method and a SHA-256 of the request
message (`request_name`), so the same key with another request is refused (422 `idempotency_key_reused`),
never answered with the first request's reply. And it counts for `idempotency_ttl_seconds` (the one kit
setting the gateway's store uses too, 24 h by default), however long pruning takes to remove it: a key the
gateway has forgotten is forgotten here as well. (Client-streaming calls, uploads, are named by their method
only; the gateway's key digest covers their content.)
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from sqlalchemy import DateTime, Index, LargeBinary, String, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from crm_kit.db import Base
from crm_kit.errors import Conflict, InvalidArgument
from crm_kit.settings import ServiceSettings

METADATA_KEY = "idempotency-key"
# Where no lifetime is passed: the default of the one setting, `ServiceSettings.idempotency_ttl_seconds`.
DEFAULT_TTL_SECONDS: int = ServiceSettings.model_fields["idempotency_ttl_seconds"].default


class IdempotentRequest(Base):
    __tablename__ = "idempotent_requests"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    method: Mapped[str] = mapped_column(String(200))
    response: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index("ix_idempotent_requests_created_at", "created_at"),)


_TABLE = IdempotentRequest.__table__
_EXPIRED = _TABLE.c.created_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, text(":ttl"))
# A record past its lifetime that pruning has not removed yet is taken over, as if it were not there.
_MARK = (
    insert(_TABLE)
    .on_conflict_do_update(
        index_elements=[_TABLE.c.key],
        set_={"method": text("excluded.method"), "response": None, "created_at": func.now()},
        where=_EXPIRED,
    )
    .returning(_TABLE.c.key)
)


def request_name(method: str, request: Any) -> str:
    """What a record is matched on besides its key: the RPC method and a hash of the request message."""
    if not hasattr(request, "SerializeToString"):  # a client stream: the method only
        return method
    digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
    return f"{method} {digest}"


class AlreadyApplied(Conflict):
    reason = "already_applied"


async def previous(
    session: AsyncSession, key: str, method: str, ttl_seconds: float = DEFAULT_TTL_SECONDS
) -> bytes | None:
    """The stored answer of an earlier attempt within `ttl_seconds`; None when there was none. Raises when the
    earlier attempt committed but its answer was lost, or when the key was used for another request
    (`method` is `request_name(...)`)."""
    row = (
        await session.execute(
            select(_TABLE.c.method, _TABLE.c.response).where(_TABLE.c.key == key, ~_EXPIRED),
            {"ttl": float(ttl_seconds)},
        )
    ).first()
    if row is None:
        return None
    if row.method != method:
        raise InvalidArgument(
            "this Idempotency-Key was used for another request", reason="idempotency_key_reused"
        )
    if row.response is None:
        raise AlreadyApplied(
            "this request was already carried out, but its answer was lost; read the object to see the result"
        )
    return row.response


async def mark(
    session: AsyncSession, key: str, method: str, ttl_seconds: float = DEFAULT_TTL_SECONDS
) -> None:
    """Record the key in the write's own transaction. A concurrent attempt that got there first wins."""
    inserted = (
        await session.execute(_MARK, {"key": key, "method": method, "ttl": float(ttl_seconds)})
    ).scalar_one_or_none()
    if inserted is None:
        raise AlreadyApplied("this request is being or was already carried out by another attempt")


async def store(session: AsyncSession, key: str, response: bytes) -> None:
    await session.execute(update(_TABLE).where(_TABLE.c.key == key).values(response=response))


async def forget(session: AsyncSession, key: str) -> None:
    await session.execute(delete(_TABLE).where(_TABLE.c.key == key))
