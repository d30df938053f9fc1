"""The outbox relay against real PostgreSQL and JetStream: the failure cases, not only the happy path."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import nats
import pytest
from crm_kit.db import Database
from crm_kit.events import OutboxEvent, OutboxRelay, connect_nats, ensure_streams
from crm_kit.events.inbox import InboxEntry
from crm_kit.events.subjects import namespaced, stream_for_context
from crm_kit.infra import NatsServer
from eventsupport import (
    all_published,
    emit_invite,
    envelope_of,
    eventually,
    stream_count,
    stream_messages,
    unpublished,
    versions_by_aggregate,
    write_invites,
)
from sqlalchemy import func, select, text


class Boom(Exception):
    pass


async def test_rolled_back_transaction_publishes_nothing(database, nc, js, settings, stream):
    relay = OutboxRelay(database, nc, settings)
    await relay.start()
    try:
        with pytest.raises(Boom):
            async with database.unit_of_work() as uow:
                emit_invite(uow, aggregate_id="rolled-back")
                raise Boom
        await write_invites(database, 1, aggregate_id="committed")
        await eventually(lambda: relay.published == 1, what="the committed event")
    finally:
        await relay.stop()
    messages = [envelope_of(m) for m in await stream_messages(js, stream)]
    assert [e.aggregate_id for e in messages] == ["committed"]


async def test_events_committed_while_no_relay_runs_are_published_when_one_starts(
    database, nc, js, settings, stream
):
    # The writer "crashed" after committing: nothing was running to publish.
    await write_invites(database, 3, aggregate_id="a")
    await write_invites(database, 2, aggregate_id="b")
    assert await stream_count(js, stream) == 0
    assert await unpublished(database) == 5

    relay = OutboxRelay(database, nc, settings)
    await relay.start()
    try:
        await eventually(lambda: all_published(database), what="all rows marked")
    finally:
        await relay.stop()
    envelopes = [envelope_of(m) for m in await stream_messages(js, stream)]
    assert versions_by_aggregate(envelopes) == {"a": [1, 2, 3], "b": [1, 2]}
    assert relay.published == 5


async def test_event_published_before_a_crash_is_not_stored_twice_when_republished(
    database, nc, js, settings, stream
):
    await write_invites(database, 3)
    # A relay published the first row, then died before marking it.
    async with database.read() as session:
        first = (await session.scalars(select(OutboxEvent).order_by(OutboxEvent.seq).limit(1))).one()
    await js.publish(
        namespaced(first.subject, settings.namespace), first.envelope, headers={"Nats-Msg-Id": first.id}
    )
    assert await stream_count(js, stream) == 1

    relay = OutboxRelay(database, nc, settings)
    await relay.start()
    try:
        await eventually(lambda: all_published(database), what="all rows marked")
    finally:
        await relay.stop()
    assert await stream_count(js, stream) == 3
    assert (relay.published, relay.duplicates) == (2, 1)
    envelopes = [envelope_of(m) for m in await stream_messages(js, stream)]
    assert [e.aggregate_version for e in envelopes] == [1, 2, 3]


async def test_relay_publishes_at_commit_without_waiting_for_its_poll(
    database, db_url, nc, js, settings, stream
):
    slow_poll = settings.model_copy(update={"relay_poll_interval": 60.0})
    relay = OutboxRelay(database, nc, slow_poll)
    await relay.start()
    # Another replica: its own engine, no relay of its own, so only the NOTIFY trigger can wake ours.
    other_replica = Database(db_url, pool_size=1)
    try:
        async with database.unit_of_work() as uow:  # first the after-commit hook alone
            await uow.session.execute(text("ALTER TABLE outbox_events DISABLE TRIGGER outbox_events_notify"))
        await eventually(lambda: relay.idle.is_set(), what="relay waiting")
        await write_invites(database, 1, aggregate_id="same-process")
        await eventually(lambda: relay.published == 1, within=5, what="wake-up by after-commit hook")

        async with database.unit_of_work() as uow:  # then the trigger alone
            await uow.session.execute(text("ALTER TABLE outbox_events ENABLE TRIGGER outbox_events_notify"))
        await eventually(lambda: relay.idle.is_set(), what="relay waiting")
        await write_invites(other_replica, 1, aggregate_id="other-replica")
        await eventually(lambda: relay.published == 2, within=5, what="wake-up by NOTIFY")
    finally:
        await relay.stop()
        await other_replica.dispose()
    assert await stream_count(js, stream) == 2


async def test_writes_succeed_while_nats_is_down_and_every_event_arrives_after_it_returns(
    database, settings, tmp_path
):
    server = NatsServer(tmp_path / "nats").start()
    reconnected = asyncio.Event()

    def on_reconnect() -> None:
        reconnected.set()
        relay.retry_now()

    nc = await connect_nats(server.url, settings, name="test", reconnected=on_reconnect)
    js = nc.jetstream()
    stream = stream_for_context("identity", settings.namespace)
    await ensure_streams(js, ["identity"], settings)
    relay = OutboxRelay(database, nc, settings)
    await relay.start()
    try:
        await write_invites(database, 2, aggregate_id="before")
        await eventually(lambda: relay.published == 2, what="events before the outage")

        server.stop()
        await eventually(lambda: not nc.is_connected, what="client notices the outage")
        async with asyncio.timeout(5):  # writes only touch PostgreSQL
            await write_invites(database, 10, aggregate_id="during")
        assert await unpublished(database) == 10

        server.start()  # same port, same store: the stream and its duplicate window survive
        await reconnected.wait()
        await eventually(lambda: all_published(database), what="backlog published after NATS returned")
        envelopes = [envelope_of(m) for m in await stream_messages(js, stream)]
        assert versions_by_aggregate(envelopes) == {"before": [1, 2], "during": list(range(1, 11))}
    finally:
        await relay.stop()
        await nc.close()
        server.stop()


async def _write_concurrently(db: Database, aggregates: list[str], per_aggregate: int) -> None:
    """One writer per aggregate, interleaving their commits; each aggregate's versions go 1, 2, 3, …"""
    await asyncio.gather(*(write_invites(db, per_aggregate, aggregate_id=a) for a in aggregates))


async def test_two_relays_on_one_database_never_publish_one_row_twice(db_url, test_infra, settings, stream):
    small_batches = settings.model_copy(update={"relay_batch_size": 10})
    replicas = [Database(db_url, pool_size=4) for _ in range(2)]
    conns = [await nats.connect(test_infra.nats_url) for _ in range(2)]
    js = conns[0].jetstream()
    await ensure_streams(js, ["identity"], settings)
    relays = [
        OutboxRelay(db, nc, small_batches, name=f"relay-{i}")
        for i, (db, nc) in enumerate(zip(replicas, conns, strict=True))
    ]
    first, second = relays
    try:
        await first.start()
        await eventually(lambda: first.active.is_set(), what="first relay active")
        await second.start()
        aggregates = ["u1", "u2", "u3"]
        writers = asyncio.create_task(_write_concurrently(replicas[0], aggregates, 60))
        await eventually(lambda: first.published >= 40, what="first relay publishing")
        assert not second.active.is_set()
        await first.stop()  # a rolling update: the active replica goes away between batches
        await eventually(lambda: second.active.is_set(), what="standby takes over")
        await writers
        await eventually(lambda: all_published(replicas[0]), what="all rows published")
    finally:
        for relay in relays:
            await relay.stop()
        for db in replicas:
            await db.dispose()
    total = 180
    assert first.published > 0 and second.published > 0
    assert first.published + second.published == total
    assert first.duplicates + second.duplicates == 0
    envelopes = [envelope_of(m) for m in await stream_messages(js, stream)]
    for nc in conns:
        await nc.close()
    assert len(envelopes) == total
    assert versions_by_aggregate(envelopes) == {a: list(range(1, 61)) for a in aggregates}


async def test_standby_takes_over_when_the_active_relay_loses_its_database_session(
    db_url, test_infra, settings, stream
):
    small_batches = settings.model_copy(update={"relay_batch_size": 10})
    replicas = [Database(db_url, pool_size=4) for _ in range(2)]
    conns = [await nats.connect(test_infra.nats_url) for _ in range(2)]
    js = conns[0].jetstream()
    await ensure_streams(js, ["identity"], settings)
    relays = [
        OutboxRelay(db, nc, small_batches, name=f"relay-{i}")
        for i, (db, nc) in enumerate(zip(replicas, conns, strict=True))
    ]
    first, second = relays
    admin = await asyncpg.connect(test_infra.asyncpg_dsn(db_url))
    try:
        await first.start()
        await eventually(lambda: first.active.is_set(), what="first relay active")
        await second.start()
        writers = asyncio.create_task(_write_concurrently(replicas[0], ["u1", "u2"], 80))
        await eventually(lambda: first.published >= 30, what="first relay publishing")
        # The active replica dies mid-stream (its session is killed, possibly between publish and mark).
        await admin.execute("SELECT pg_terminate_backend($1)", first.backend_pid)
        await eventually(lambda: second.active.is_set(), what="standby takes over")
        await writers
        await eventually(lambda: all_published(replicas[0]), what="all rows published")
    finally:
        await admin.close()
        for relay in relays:
            await relay.stop()
        for db in replicas:
            await db.dispose()
    assert second.published > 0
    # Every row was stored once; a batch the dead relay published but did not mark came back as duplicates.
    assert first.published + second.published == 160
    envelopes = [envelope_of(m) for m in await stream_messages(js, stream)]
    for nc in conns:
        await nc.close()
    assert len(envelopes) == 160
    assert versions_by_aggregate(envelopes) == {a: list(range(1, 81)) for a in ["u1", "u2"]}


async def test_relay_prunes_published_rows_and_old_inbox_entries_after_retention(database, nc, js, settings):
    no_retention = settings.model_copy(update={"outbox_retention": 0.0, "inbox_retention": 3600.0})
    async with database.unit_of_work() as uow:
        uow.session.add(InboxEntry(consumer="c", event_id="old"))
        uow.session.add(InboxEntry(consumer="c", event_id="recent"))
    async with database.unit_of_work() as uow:
        await uow.session.execute(
            text("UPDATE inbox SET handled_at = now() - interval '2 hours' WHERE event_id = 'old'")
        )
    await write_invites(database, 3)
    relay = OutboxRelay(database, nc, no_retention)
    await relay.start()
    try:
        await eventually(lambda: relay.published == 3, what="published")
        await relay.stop()
        # The next active relay prunes at start.
        await relay.start()

        async def rows_left() -> tuple[int, list[str]]:
            async with database.read() as session:
                outbox = await session.scalar(select(func.count()).select_from(OutboxEvent))
                inbox = list(await session.scalars(select(InboxEntry.event_id)))
            return outbox, inbox

        assert await eventually(lambda: _equals(rows_left(), (0, ["recent"])), what="pruned")
    finally:
        with contextlib.suppress(Exception):
            await relay.stop()


async def _equals(value, expected) -> bool:
    return (await value) == expected
