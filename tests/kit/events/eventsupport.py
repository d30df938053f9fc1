"""Helpers shared by the event backbone tests: write events, run a bus, read a stream back, wait for a
condition."""

from __future__ import annotations

from crm.common.v1 import event_pb2
from crm.identity.v1 import events_pb2
from crm_kit.db import Database, UnitOfWork
from crm_kit.events import Consumer, EventBus
from crm_kit.events.outbox import OutboxEvent
from crm_kit.testing import eventually  # noqa: F401  (the event tests import it from here)
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from sqlalchemy import func, select


async def write_invites(
    db: Database, count: int, *, aggregate_id: str = "user-1", first_version: int = 1
) -> None:
    """`count` committed transactions, each inviting once: versions first_version.. of one aggregate."""
    for i in range(count):
        async with db.unit_of_work() as uow:
            emit_invite(uow, aggregate_id=aggregate_id, version=first_version + i)


def emit_invite(uow: UnitOfWork, *, aggregate_id: str = "user-1", version: int = 1) -> None:
    uow.emit(
        events_pb2.UserInvited(email=f"{aggregate_id}-{version}@example.com"),
        aggregate_type="user",
        aggregate_id=aggregate_id,
        aggregate_version=version,
        action="invited",
        tenant_id="tenant-1",
    )


async def stream_messages(js: JetStreamContext, stream: str) -> list[RawStreamMsg]:
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    return [await js.get_msg(stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]


async def stream_count(js: JetStreamContext, stream: str) -> int:
    return (await js.stream_info(stream)).state.messages


async def stream_count_is(js: JetStreamContext, stream: str, n: int) -> bool:
    return await stream_count(js, stream) == n


def bus_for(
    test_infra, database: Database, settings, *consumers: Consumer, service: str = "notifications", **kwargs
) -> EventBus:
    """An event bus of `service` running `consumers` on identity's events, on this test's namespace."""
    return EventBus(
        service=service,
        database=database,
        nats_url=test_infra.nats_url,
        settings=settings,
        consumers=consumers,
        produces=["identity"],
        **kwargs,
    )


def envelope_of(msg: RawStreamMsg) -> event_pb2.EventEnvelope:
    return event_pb2.EventEnvelope.FromString(msg.data or b"")


async def unpublished(db: Database) -> int:
    async with db.read() as session:
        return await session.scalar(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))
        )


async def all_published(db: Database) -> bool:
    return await unpublished(db) == 0


def versions_by_aggregate(envelopes: list[event_pb2.EventEnvelope]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for envelope in envelopes:
        seen.setdefault(envelope.aggregate_id, []).append(envelope.aggregate_version)
    return seen
