"""A poisoned event cannot stop a stream: events are bounded at emit, and the relay parks what NATS refuses.

Against real PostgreSQL and JetStream: an emit over the bound is refused with a 4xx and writes nothing, for
every event type of every service; an event NATS refuses for good (over the server's max_payload, or over a
stream's own limit) is parked, other aggregates flow, later events of its aggregate wait for an operator.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
import sys
from pathlib import Path

import asyncpg
import grpc
import pytest
from crm.common.v1 import event_pb2
from crm.identity.v1 import events_pb2
from crm_kit import devstack
from crm_kit.db import Database
from crm_kit.errors import InvalidArgument
from crm_kit.events import EventBus, OutboxRelay, ensure_streams, parked
from crm_kit.events.outbox import MAX_EVENT_BYTES, build_envelope
from crm_kit.events.subjects import subject_for
from crm_kit.infra import NatsServer
from eventsupport import envelope_of, eventually, stream_messages, versions_by_aggregate, write_invites
from google.protobuf import descriptor
from sqlalchemy import text


async def _counts(db: Database) -> tuple[int, int]:
    async with db.read() as session:
        outbox = await session.scalar(text("SELECT count(*) FROM outbox_events"))
        inbox = await session.scalar(text("SELECT count(*) FROM inbox"))
    return outbox, inbox


async def test_an_event_over_the_bound_is_refused_at_emit_with_a_4xx_and_nothing_is_written(database):
    with pytest.raises(InvalidArgument) as refused:
        async with database.unit_of_work() as uow:
            # A change of the same transaction, sent before the event: it must not stay either.
            await uow.session.execute(text("INSERT INTO inbox (consumer, event_id) VALUES ('c', 'e')"))
            uow.emit(
                events_pb2.LoginFailed(email="x" * (MAX_EVENT_BYTES + 1), reason="no_such_user"),
                aggregate_type="user",
                aggregate_id="",
                action="login_failed",
            )
    assert refused.value.reason == "event_too_large"
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT  # 422 at the gateway
    assert await _counts(database) == (0, 0)
    # Just under the bound is fine.
    async with database.unit_of_work() as uow:
        uow.emit(
            events_pb2.LoginFailed(email="x" * (MAX_EVENT_BYTES - 1000), reason="no_such_user"),
            aggregate_type="user",
            aggregate_id="",
            action="login_failed",
        )
    assert await _counts(database) == (1, 0)


def _event_types() -> list[type]:
    """Every event message of every service, from the contracts' descriptors (`crm.<service>.v1.events_pb2`)."""
    from google.protobuf import message_factory

    types = []
    for app in devstack.SERVICES:
        module = importlib.import_module(f"crm.{app.name}.v1.events_pb2")
        for message in module.DESCRIPTOR.message_types_by_name.values():
            types.append(message_factory.GetMessageClass(message))
    assert len({t.DESCRIPTOR.full_name.split(".")[1] for t in types}) == len(devstack.SERVICES)
    return types


def _stuff(message, budget: int) -> int:  # type: ignore[no-untyped-def]
    """Fill `message`'s string fields (and those of its nested messages) with up to `budget` characters."""
    used = 0
    for field in message.DESCRIPTOR.fields:
        if used >= budget:
            break
        if field.type == descriptor.FieldDescriptor.TYPE_STRING:
            chunk = "长" * ((budget - used) // 3 + 1)
            if field.is_repeated:
                getattr(message, field.name).append(chunk)
            else:
                setattr(message, field.name, chunk)
            used += len(chunk.encode())
        elif (
            field.type == descriptor.FieldDescriptor.TYPE_MESSAGE
            and not field.is_repeated
            and not field.message_type.full_name.startswith("google.protobuf.")
        ):
            used += _stuff(getattr(message, field.name), budget - used)
    return used


async def test_every_event_type_of_every_service_is_bounded_at_emit(database):
    refused_types = []
    for event_type in _event_types():
        payload = event_type()
        stuffed = _stuff(payload, MAX_EVENT_BYTES + 1)
        # An event without text to fill grows through its changes, which the envelope carries too.
        after = {"note": "长" * (MAX_EVENT_BYTES // 3 + 1)} if stuffed <= MAX_EVENT_BYTES else None
        with pytest.raises(InvalidArgument) as refused:
            async with database.unit_of_work() as uow:
                uow.emit(payload, aggregate_type="x", aggregate_id="x-1", action="updated", after=after)
        assert refused.value.reason == "event_too_large", event_type.DESCRIPTOR.full_name
        refused_types.append(event_type.DESCRIPTOR.full_name)
    assert await _counts(database) == (0, 0)
    assert len(refused_types) > 50  # every service's events, not a handful


def test_no_service_writes_the_outbox_around_the_bound():
    """Every service records events with `uow.emit` (which checks the bound): none touches the outbox table,
    builds outbox rows or calls the outbox's writer itself."""
    forbidden = ("outbox_events", "OutboxEvent", "outbox_row", "outbox.write")
    offenders = []
    for app in devstack.SERVICES:
        package = importlib.import_module(app.module)
        root = Path(package.__file__).parent
        for path in root.rglob("*.py"):
            if "migrations" in path.parts:
                continue
            source = path.read_text()
            offenders += [f"{path.relative_to(root.parent)}: {word}" for word in forbidden if word in source]
        assert any(pkgutil.iter_modules([str(root)])), app.module
    assert offenders == []


async def _insert_raw_event(db_url: str, test_infra, envelope: event_pb2.EventEnvelope) -> None:
    """An outbox row written past the unit of work (an older release, a hand-made fix): nothing bounds it."""
    conn = await asyncpg.connect(test_infra.asyncpg_dsn(db_url))
    try:
        await conn.execute(
            "INSERT INTO outbox_events (id, subject, tenant_id, aggregate_id, envelope, traceparent, created_at) "
            "VALUES ($1, $2, $3, $4, $5, '', now())",
            envelope.id,
            subject_for(envelope.type),
            envelope.tenant_id,
            envelope.aggregate_id,
            envelope.SerializeToString(),
        )
    finally:
        await conn.close()


async def _parked(db_url: str, test_infra) -> list[parked.ParkedEvent]:
    conn = await asyncpg.connect(test_infra.asyncpg_dsn(db_url))
    try:
        return await parked.list_parked(conn)
    finally:
        await conn.close()


async def _operator(db_url: str, test_infra, command, seqs: list[int]) -> list[int]:  # type: ignore[no-untyped-def]
    conn = await asyncpg.connect(test_infra.asyncpg_dsn(db_url))
    try:
        return await command(conn, seqs)
    finally:
        await conn.close()


async def test_relay_parks_an_event_over_the_servers_max_payload_and_goes_on_in_aggregate_order(
    database, db_url, test_infra, nc, js, settings, stream
):
    await write_invites(database, 1, aggregate_id="a")
    poisoned = build_envelope(
        events_pb2.UserInvited(email="x" * (nc.max_payload + 1)),
        aggregate_type="user",
        aggregate_id="poisoned",
        aggregate_version=1,
        action="invited",
        tenant_id="tenant-1",
    )
    await _insert_raw_event(db_url, test_infra, poisoned)
    await write_invites(database, 2, aggregate_id="poisoned", first_version=2)  # must wait behind it
    await write_invites(database, 2, aggregate_id="b")

    relay = OutboxRelay(database, nc, settings)
    await relay.start()
    try:
        await eventually(lambda: relay.published == 3 and relay.idle.is_set(), what="a and b published")
        assert relay.parked == 1
        [row] = await _parked(db_url, test_infra)
        assert row.event_id == poisoned.id and row.aggregate == "user/poisoned" and row.waiting == 2
        assert "maximum payload" in row.error
        # What an operator runs: the same, one JSON line per parked event.
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "crm_kit.events.parked",
            "--database-url",
            db_url,
            "list",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await cli.communicate()
        assert cli.returncode == 0, err
        [line] = out.decode().splitlines()
        assert json.loads(line)["event_id"] == poisoned.id and "1 parked event" in err.decode()
        envelopes = [envelope_of(m) for m in await stream_messages(js, stream)]
        assert versions_by_aggregate(envelopes) == {"a": [1], "b": [1, 2]}
    finally:
        await relay.stop()

    # Across a restart the parked event stays parked and does not hold back anything new of other aggregates.
    relay = OutboxRelay(database, nc, settings)
    await relay.start()
    try:
        await write_invites(database, 1, aggregate_id="c")
        await eventually(lambda: relay.published == 1, what="c published after a restart")
        # A retry before the cause is fixed parks it again; a discard lets its aggregate's later events go.
        assert await _operator(db_url, test_infra, parked.retry, [row.seq]) == [row.seq]
        await eventually(lambda: relay.parked == 1, what="parked again")
        assert [p.seq for p in await _parked(db_url, test_infra)] == [row.seq]
        assert await _operator(db_url, test_infra, parked.discard, [row.seq]) == [row.seq]
        await eventually(lambda: relay.published == 3, what="the waiting events of the aggregate")
    finally:
        await relay.stop()
    envelopes = [envelope_of(m) for m in await stream_messages(js, stream)]
    assert versions_by_aggregate(envelopes) == {"a": [1], "b": [1, 2], "c": [1], "poisoned": [2, 3]}
    assert await _parked(db_url, test_infra) == []


async def test_relay_parks_an_event_the_stream_refuses_and_publishes_it_once_retried_after_the_fix(
    database, db_url, test_infra, nc, js, settings, stream
):
    config = (await js.stream_info(stream)).config
    config.max_msg_size = 4096
    await js.update_stream(config)
    relay = OutboxRelay(database, nc, settings)
    await relay.start()
    try:
        async with database.unit_of_work() as uow:  # under the kit's bound, over the stream's
            uow.emit(
                events_pb2.UserInvited(email="y" * 8000),
                aggregate_type="user",
                aggregate_id="big",
                aggregate_version=1,
                action="invited",
                tenant_id="tenant-1",
            )
        await eventually(lambda: relay.parked == 1, what="the refused event parked")
        await write_invites(database, 1, aggregate_id="big", first_version=2)
        await write_invites(database, 2, aggregate_id="other")
        await eventually(lambda: relay.published == 2, what="the other aggregate")
        [row] = await _parked(db_url, test_infra)
        assert row.waiting == 1 and "maximum" in row.error.lower()
        # The operator raises the stream's limit, then retries: the event and the one behind it go, in order.
        config.max_msg_size = -1
        await js.update_stream(config)
        await _operator(db_url, test_infra, parked.retry, [row.seq])
        await eventually(lambda: relay.published == 4, what="big 1 and 2")
    finally:
        await relay.stop()
    envelopes = [envelope_of(m) for m in await stream_messages(js, stream)]
    assert versions_by_aggregate(envelopes) == {"other": [1, 2], "big": [1, 2]}


async def test_a_service_refuses_to_start_against_a_nats_that_cannot_carry_its_largest_event(
    database, settings, tmp_path
):
    server = NatsServer(tmp_path / "nats", config={"max_payload": MAX_EVENT_BYTES}).start()
    try:
        bus = EventBus(service="identity", database=database, nats_url=server.url, settings=settings)
        with pytest.raises(RuntimeError, match="max_payload"):
            await bus.start()
    finally:
        server.stop()


def test_every_text_field_of_the_envelope_has_a_bound():
    """Walks the envelope's descriptor: each text field (and its actor's) is bounded by `build_envelope`, except
    the id it makes itself; so whatever stores envelope fields can size itself from the kit."""
    from crm_kit.events.outbox import ENVELOPE_TEXT_LIMITS

    def text_fields(message: descriptor.Descriptor, prefix: str = "") -> set[str]:
        out = set()
        for field in message.fields:
            if field.type == descriptor.FieldDescriptor.TYPE_STRING and not field.is_repeated:
                out.add(prefix + field.name)
            elif field.type == descriptor.FieldDescriptor.TYPE_MESSAGE and field.message_type.name == "Actor":
                out |= text_fields(field.message_type, f"{field.name}.")
        return out

    assert text_fields(event_pb2.EventEnvelope.DESCRIPTOR) - set(ENVELOPE_TEXT_LIMITS) == {"id"}


@pytest.mark.parametrize("path", ["aggregate_id", "aggregate_type", "action", "actor.id", "actor.name"])
async def test_an_envelope_field_over_its_bound_is_refused_or_shortened_never_stored_whole(database, path):
    from crm_kit.events.outbox import ENVELOPE_TEXT_LIMITS

    too_long = "长" * (ENVELOPE_TEXT_LIMITS[path] + 1)
    kwargs = {"aggregate_type": "user", "aggregate_id": "u-1", "action": "invited"}
    actor = event_pb2.Actor(type=event_pb2.ACTOR_TYPE_USER, id="u-1", name="王")
    if path.startswith("actor."):
        setattr(actor, path.split(".")[1], too_long)
    else:
        kwargs[path] = too_long
    if path == "actor.name":  # a display name: shortened to fit, the event kept
        envelope = build_envelope(events_pb2.UserInvited(), actor=actor, **kwargs)
        assert len(envelope.actor.name) == ENVELOPE_TEXT_LIMITS[path]
        return
    with pytest.raises(InvalidArgument) as refused:
        async with database.unit_of_work() as uow:
            uow.emit(events_pb2.UserInvited(), actor=actor, **kwargs)
    assert refused.value.reason == "event_field_too_long"
    assert await _counts(database) == (0, 0)


async def test_relay_waits_rather_than_parks_while_jetstream_cannot_take_events(
    database, nc, settings, stream
):
    """No stream for the subject yet (JetStream answers "no responders"): an outage, not a refusal."""
    await write_invites(database, 2, aggregate_id="a")
    relay = OutboxRelay(database, nc, settings)
    await relay.start()
    try:
        await eventually(lambda: relay.active.is_set(), what="the relay active")
        await asyncio.sleep(2)  # several publish attempts and backoffs
        assert (relay.published, relay.parked) == (0, 0)
        js = nc.jetstream()
        await ensure_streams(js, ["identity"], settings)
        await eventually(lambda: relay.published == 2, what="both published once the stream exists")
    finally:
        await relay.stop()
    assert relay.parked == 0
    envelopes = [envelope_of(m) for m in await stream_messages(js, stream)]
    assert versions_by_aggregate(envelopes) == {"a": [1, 2]}
