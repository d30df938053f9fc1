"""Durable consumers against real PostgreSQL and JetStream: once-only effects, bounded retries, dead letters,
trace context, and a clean stop."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from crm.common.v1 import event_pb2
from crm.identity.v1 import events_pb2
from crm_kit import context
from crm_kit.db import Database, UnitOfWork
from crm_kit.events import Consumer, EventBus, PermanentError
from crm_kit.events.consumer import (
    CONSUMER_HEADER,
    DELIVERIES_HEADER,
    ERROR_HEADER,
    ERROR_TYPE_HEADER,
    ORIGINAL_SUBJECT_HEADER,
    subject_matches,
)
from crm_kit.events.inbox import InboxEntry
from crm_kit.events.subjects import dead_letter_stream, namespaced, stream_for_context, subject_for
from crm_kit.ids import new_id
from eventsupport import bus_for, emit_invite, eventually, stream_count, stream_messages, write_invites
from google.protobuf import any_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import Column, Identity, Integer, MetaData, String, Table, func, insert, select

# The consumer's effect: deliberately without a unique key, so a second effect would show as a second row.
effects = Table(
    "effects",
    MetaData(),
    Column("id", Integer, Identity(), primary_key=True),
    Column("event_id", String(36)),
    Column("email", String(200)),
)


@pytest.fixture
async def with_effects(database: Database) -> Database:
    async with database.engine.begin() as conn:
        await conn.run_sync(effects.metadata.create_all)
    return database


async def record_effect(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
    await uow.session.execute(insert(effects).values(event_id=envelope.id, email=payload.email))


async def effect_count(db: Database) -> int:
    async with db.read() as session:
        return await session.scalar(select(func.count()).select_from(effects))


async def test_consumer_has_one_effect_per_event_however_often_it_is_delivered(
    test_infra, with_effects, settings, nc
):
    db = with_effects
    consumer = Consumer(name="welcome", filter_subjects=[events_pb2.UserInvited], handler=record_effect)
    async with bus_for(test_infra, db, settings, consumer) as bus:
        await write_invites(db, 3)
        await eventually(lambda: bus.runners["welcome"].handled == 3, what="three events handled")

        # The same event published again after JetStream's duplicate window (a new Nats-Msg-Id).
        js = nc.jetstream()
        first = (await stream_messages(js, stream_for_context("identity", settings.namespace)))[0]
        await js.publish(first.subject, first.data, headers={"Nats-Msg-Id": "republished"})
        await eventually(lambda: bus.runners["welcome"].duplicates == 1, what="the copy recognised")

    # The consumer is reset and replays the stream from the start: every event is delivered again.
    await js.delete_consumer(stream_for_context("identity", settings.namespace), "welcome")
    async with bus_for(test_infra, db, settings, consumer) as bus:
        await eventually(lambda: bus.runners["welcome"].duplicates == 4, what="the replay recognised")
        assert bus.runners["welcome"].handled == 0
    assert await effect_count(db) == 3


async def test_handler_that_keeps_failing_ends_in_the_dead_letter_stream_after_bounded_attempts(
    test_infra, with_effects, settings, nc
):
    db = with_effects
    attempts: dict[str, int] = {}

    async def send_welcome(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
        attempts[envelope.aggregate_id] = attempts.get(envelope.aggregate_id, 0) + 1
        await record_effect(uow, envelope, payload)
        if envelope.aggregate_id == "poison":
            raise RuntimeError("mail server said:\r\n 550 no such user")

    consumer = Consumer(
        name="welcome",
        filter_subjects=["crm.identity.>"],
        handler=send_welcome,
        max_deliver=3,
        backoff=(0.05, 0.1),
    )
    js = nc.jetstream()
    dlq = dead_letter_stream(settings.namespace)
    async with bus_for(test_infra, db, settings, consumer) as bus:
        await write_invites(db, 1, aggregate_id="poison")
        await write_invites(db, 1, aggregate_id="fine")
        await eventually(lambda: stream_count(js, dlq), what="a dead letter")
        await eventually(lambda: bus.runners["welcome"].handled == 1, what="the next event handled meanwhile")
        runner = bus.runners["welcome"]

        async def settled():  # the dead letter is published just before the poison event is terminated
            info = await js.consumer_info(stream_for_context("identity", settings.namespace), "welcome")
            return info if info.num_ack_pending == 0 and info.num_pending == 0 else None

        info = await eventually(settled, what="nothing left pending")

    assert attempts == {"poison": 3, "fine": 1}
    assert (runner.retried, runner.dead_lettered) == (2, 1)
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)
    [letter] = await stream_messages(js, dlq)
    assert letter.subject == namespaced("dlq.notifications.welcome", settings.namespace)
    assert letter.headers[ERROR_HEADER] == "mail server said: 550 no such user"
    assert letter.headers[ERROR_TYPE_HEADER] == "RuntimeError"
    assert letter.headers[DELIVERIES_HEADER] == "3"
    assert letter.headers[CONSUMER_HEADER] == "notifications/welcome"
    assert letter.headers[ORIGINAL_SUBJECT_HEADER] == namespaced(
        "crm.identity.v1.UserInvited", settings.namespace
    )
    assert event_pb2.EventEnvelope.FromString(letter.data).aggregate_id == "poison"
    # The failed attempts left nothing behind: neither effect nor inbox row.
    assert await effect_count(db) == 1
    async with db.read() as session:
        assert await session.scalar(select(func.count()).select_from(InboxEntry)) == 1


async def test_permanent_error_goes_to_the_dead_letter_stream_without_retries(
    test_infra, with_effects, settings, nc
):
    calls = 0

    async def reject(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
        nonlocal calls
        calls += 1
        raise PermanentError("address is not deliverable")

    consumer = Consumer(name="welcome", filter_subjects=[events_pb2.UserInvited], handler=reject)
    js = nc.jetstream()
    dlq = dead_letter_stream(settings.namespace)
    async with bus_for(test_infra, with_effects, settings, consumer):
        await write_invites(with_effects, 1)
        await eventually(lambda: stream_count(js, dlq), what="a dead letter")
    [letter] = await stream_messages(js, dlq)
    assert (calls, letter.headers[DELIVERIES_HEADER], letter.headers[ERROR_TYPE_HEADER]) == (
        1,
        "1",
        "PermanentError",
    )


async def test_handler_that_hangs_is_cancelled_and_dead_lettered_after_bounded_attempts(
    test_infra, with_effects, settings, nc
):
    async def hang(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
        await record_effect(uow, envelope, payload)
        await asyncio.Event().wait()

    consumer = Consumer(
        name="welcome",
        filter_subjects=[events_pb2.UserInvited],
        handler=hang,
        max_deliver=2,
        backoff=(0.05,),
        timeout=0.2,
    )
    js = nc.jetstream()
    dlq = dead_letter_stream(settings.namespace)
    async with bus_for(test_infra, with_effects, settings, consumer):
        await write_invites(with_effects, 1)
        await eventually(lambda: stream_count(js, dlq), what="a dead letter")
    [letter] = await stream_messages(js, dlq)
    assert (letter.headers[ERROR_TYPE_HEADER], letter.headers[DELIVERIES_HEADER]) == ("TimeoutError", "2")
    assert await effect_count(with_effects) == 0


async def test_event_whose_last_attempt_never_answers_is_dead_lettered_by_another_replica(
    test_infra, with_effects, settings, nc
):
    """A replica dies while handling the last attempt: JetStream stops redelivering and says so in an advisory,
    which the surviving replica turns into a dead letter."""
    calls = 0
    replicas: list[EventBus] = []

    def handler_of(replica: int):
        async def handle(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("first attempt fails")
            await replicas[replica].nc.close()  # this replica dies mid-event: no ack, no nak, ever
            await asyncio.Event().wait()

        return handle

    def consumer_of(replica: int) -> Consumer:
        return Consumer(
            name="welcome",
            filter_subjects=[events_pb2.UserInvited],
            handler=handler_of(replica),
            max_deliver=2,
            backoff=(0.1,),
            timeout=0.5,  # lets the dead replica's stuck handler go when the test stops it
        )

    js = nc.jetstream()
    dlq = dead_letter_stream(settings.namespace)
    for replica in range(2):
        replicas.append(await bus_for(test_infra, with_effects, settings, consumer_of(replica)).start())
    try:
        await write_invites(with_effects, 1)
        await eventually(lambda: stream_count(js, dlq), what="a dead letter from the advisory")
    finally:
        for bus in replicas:
            await bus.stop()
    [letter] = await stream_messages(js, dlq)
    assert calls == 2
    assert letter.headers[DELIVERIES_HEADER] == "2"
    assert "no answer" in letter.headers[ERROR_HEADER]
    assert event_pb2.EventEnvelope.FromString(letter.data).aggregate_id == "user-1"


async def test_event_of_an_unknown_type_is_dead_lettered_not_retried(test_infra, with_effects, settings, nc):
    consumer = Consumer(name="audit", filter_subjects=["crm.identity.>"], handler=record_effect)
    js = nc.jetstream()
    dlq = dead_letter_stream(settings.namespace)
    envelope = event_pb2.EventEnvelope(
        id=new_id(),
        type="crm.identity.v9.FromTheFuture",
        payload=any_pb2.Any(type_url="type.googleapis.com/crm.identity.v9.FromTheFuture", value=b""),
    )
    async with bus_for(test_infra, with_effects, settings, consumer):
        subject = namespaced("crm.identity.v9.FromTheFuture", settings.namespace)
        await js.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": envelope.id})
        await eventually(lambda: stream_count(js, dlq), what="a dead letter")
    [letter] = await stream_messages(js, dlq)
    assert "unknown payload type" in letter.headers[ERROR_HEADER]
    assert await effect_count(with_effects) == 0


async def test_handler_that_fails_twice_then_succeeds_has_one_effect(test_infra, with_effects, settings):
    calls = 0

    async def flaky(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
        nonlocal calls
        calls += 1
        await record_effect(uow, envelope, payload)  # rolled back with the failure
        if calls < 3:
            raise ConnectionError("downstream unavailable")

    consumer = Consumer(
        name="welcome", filter_subjects=[events_pb2.UserInvited], handler=flaky, backoff=(0.05,)
    )
    async with bus_for(test_infra, with_effects, settings, consumer) as bus:
        await write_invites(with_effects, 1)
        await eventually(lambda: bus.runners["welcome"].handled == 1, what="handled at the third attempt")
        assert bus.runners["welcome"].retried == 2
    assert (calls, await effect_count(with_effects)) == (3, 1)


async def test_consumer_receives_only_its_filter_subjects(test_infra, with_effects, settings):
    seen: list[str] = []

    async def remember(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
        seen.append(payload.DESCRIPTOR.name)

    consumer = Consumer(
        name="lifecycle",
        filter_subjects=[events_pb2.UserActivated, events_pb2.UserDeactivated],
        handler=remember,
    )
    async with bus_for(test_infra, with_effects, settings, consumer) as bus:
        for payload in (
            events_pb2.UserActivated(),
            events_pb2.LoginSucceeded(),
            events_pb2.UserDeactivated(),
        ):
            async with with_effects.unit_of_work() as uow:
                uow.emit(payload, aggregate_type="user", aggregate_id="u", action="x", tenant_id="t")
        await eventually(lambda: len(seen) == 2, what="two lifecycle events")
        js = bus.nc.jetstream()

        async def nothing_left() -> bool:
            info = await js.consumer_info(stream_for_context("identity", settings.namespace), "lifecycle")
            return info.delivered.stream_seq == 3 and info.num_ack_pending == 0 and info.num_pending == 0

        await eventually(nothing_left, what="all three delivered or skipped, and acked")
    assert seen == ["UserActivated", "UserDeactivated"]


async def test_trace_context_travels_from_the_writer_to_the_handler(test_infra, with_effects, settings):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    seen: dict[str, object] = {}

    async def handler(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
        seen["span"] = trace.get_current_span().get_span_context()
        seen["context"] = context.current()

    consumer = Consumer(name="traced", filter_subjects=[events_pb2.UserInvited], handler=handler)
    async with bus_for(test_infra, with_effects, settings, consumer, tracer_provider=provider):
        with provider.get_tracer("test").start_as_current_span("invite a user") as writer:
            async with with_effects.unit_of_work() as uow:
                emit_invite(uow)
        await eventually(lambda: "span" in seen, what="the handler ran")

    [processed] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    writer_context = writer.get_span_context()
    assert processed.parent is not None
    assert processed.parent.span_id == writer_context.span_id
    assert processed.context.trace_id == writer_context.trace_id
    assert seen["span"].span_id == processed.context.span_id
    handler_context = seen["context"]
    assert handler_context.trace_id == f"{writer_context.trace_id:032x}"
    # The handler acts as the system on behalf of the event's tenant, so events it emits carry both.
    assert handler_context.principal.tenant_id == "tenant-1"
    assert handler_context.principal.actor_type == event_pb2.ACTOR_TYPE_SYSTEM


async def test_stopping_finishes_the_event_in_hand_and_pulls_no_more(test_infra, with_effects, settings, nc):
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
        entered.set()
        await release.wait()
        await record_effect(uow, envelope, payload)

    # Short backoff: nats-server 2.9 may still hand a returned event to the stopped replica's pull request, and
    # the event then comes back after one backoff step (2.10+ drops a pull request that lost its subscriber).
    consumer = Consumer(
        name="slow", filter_subjects=[events_pb2.UserInvited], handler=slow, backoff=(0.2, 0.2)
    )
    bus = await bus_for(test_infra, with_effects, settings, consumer).start()
    await write_invites(with_effects, 3)
    await asyncio.wait_for(entered.wait(), 10)
    stopping = asyncio.create_task(bus.stop())
    done, _ = await asyncio.wait({stopping}, timeout=0.3)
    assert not done, "stop() must wait for the event in hand"
    release.set()
    await asyncio.wait_for(stopping, 10)

    assert await effect_count(with_effects) == 1
    info = await nc.jetstream().consumer_info(stream_for_context("identity", settings.namespace), "slow")
    assert info.ack_floor.stream_seq == 1  # the event in hand was committed and acked, nothing after it

    # What it had not started is handed back: the next replica to run the consumer handles it.
    async with bus_for(test_infra, with_effects, settings, consumer) as bus:
        await eventually(
            lambda: bus.runners["slow"].handled == 2, what="the rest handled by the next replica"
        )
    assert await effect_count(with_effects) == 3


def test_nats_wildcards_match_as_the_server_does():
    assert subject_matches("crm.identity.>", "crm.identity.v1.UserInvited")
    assert not subject_matches("crm.identity.>", "crm.identity")
    assert subject_matches("crm.*.v1.UserInvited", "crm.identity.v1.UserInvited")
    assert not subject_matches("crm.identity.v1.UserInvited", "crm.identity.v1.UserInvitedTwice")
    assert not subject_matches("crm.identity.v1", "crm.identity.v1.UserInvited")


def test_consumer_declaration_refuses_what_jetstream_would():
    with pytest.raises(ValueError, match="several"):
        Consumer(
            name="x",
            filter_subjects=[events_pb2.UserInvited, "crm.sales.v1.LeadCreated"],
            handler=record_effect,
        )
    with pytest.raises(ValueError, match="max_deliver"):
        Consumer(name="x", filter_subjects=[events_pb2.UserInvited], handler=record_effect, max_deliver=2)
    for name in ("a.b", "a b", "it's", "a>", ""):
        with pytest.raises(ValueError, match="letters, digits"):
            Consumer(name=name, filter_subjects=[events_pb2.UserInvited], handler=record_effect)


async def test_an_event_id_from_outside_the_kit_is_claimed_safely_and_once(
    test_infra, with_effects, settings, nc
):
    """Ids the kit's outbox writes are UUIDs, claimed in the round trip of BEGIN; any other id (another
    publisher's, or a hostile one) takes the parameterised path and is still handled once."""
    db = with_effects
    consumer = Consumer(name="welcome", filter_subjects=[events_pb2.UserInvited], handler=record_effect)
    odd_ids = ["evt'); DELETE FROM effects; --", new_id().upper()]
    async with bus_for(test_infra, db, settings, consumer) as bus:
        js = nc.jetstream()
        subject = namespaced("crm.identity.v1.UserInvited", settings.namespace)
        for event_id in odd_ids:
            envelope = event_pb2.EventEnvelope(id=event_id, type="crm.identity.v1.UserInvited", tenant_id="t")
            envelope.payload.Pack(events_pb2.UserInvited(email="odd@example.com"))
            for copy in ("first", "second"):
                await js.publish(
                    subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": event_id + copy}
                )
        await eventually(lambda: bus.runners["welcome"].acked == 4, what="four deliveries acked")
        assert (bus.runners["welcome"].handled, bus.runners["welcome"].duplicates) == (2, 2)
    assert await effect_count(db) == 2
    async with db.read() as session:
        claimed = set(
            await session.scalars(select(InboxEntry.event_id).where(InboxEntry.consumer == "welcome"))
        )
    assert claimed == set(odd_ids)


def test_a_consumer_decodes_another_services_events_it_never_imported():
    """Identity's audit trail reads every service's stream but imports none of their event modules: in a process
    of its own (a fresh interpreter here, as in a deployment) the payload's module is found by its package."""
    import base64
    import subprocess
    import sys

    from crm.sales.v1 import events_pb2 as sales_events

    envelope = event_pb2.EventEnvelope(id=new_id(), type="crm.sales.v1.LeadCreated", tenant_id="t1")
    envelope.payload.Pack(sales_events.LeadCreated())
    code = (
        "import base64, sys\n"
        "from crm.common.v1 import event_pb2\n"
        "from crm_kit.events.consumer import unpack_payload\n"
        "assert 'crm.sales.v1.events_pb2' not in sys.modules\n"
        "envelope = event_pb2.EventEnvelope.FromString(base64.b64decode(sys.argv[1]))\n"
        "print(type(unpack_payload(envelope)).DESCRIPTOR.full_name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, base64.b64encode(envelope.SerializeToString()).decode()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "crm.sales.v1.LeadCreated"


async def test_waiting_events_share_a_transaction_and_a_failing_one_is_handled_alone(
    test_infra, with_effects, settings, nc
):
    """`per_transaction`: events already waiting are handled in one unit of work; one bad event rolls its batch
    back, and then each is handled on its own, so the others have one effect each and it alone is retried."""
    db = with_effects
    attempts: dict[str, int] = {}

    async def record(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
        attempts[envelope.aggregate_id] = attempts.get(envelope.aggregate_id, 0) + 1
        await record_effect(uow, envelope, payload)
        if envelope.aggregate_id == "poison":
            raise PermanentError("cannot be recorded")

    consumer = Consumer(
        name="audit", filter_subjects=[events_pb2.UserInvited], handler=record, per_transaction=50
    )
    # Queued before the consumer starts, so they arrive together.
    await write_invites(db, 20, aggregate_id="first")
    await write_invites(db, 1, aggregate_id="poison")
    await write_invites(db, 20, aggregate_id="second")
    js = nc.jetstream()
    async with bus_for(test_infra, db, settings, consumer) as bus:
        runner = bus.runners["audit"]
        await eventually(lambda: runner.handled == 40, what="forty events handled")
        await eventually(
            lambda: stream_count(js, dead_letter_stream(settings.namespace)), what="a dead letter"
        )
    assert await effect_count(db) == 40  # the failed batches left nothing; every good event once
    assert runner.transactions < 40  # batches, not one transaction per event
    assert attempts["poison"] >= 2  # in its batch, then alone (a permanent error is not retried further)
    async with db.read() as session:
        assert await session.scalar(select(func.count()).select_from(InboxEntry)) == 40

    # The consumer is reset and the stream replayed in batches: the inbox recognises all forty, and the event
    # that failed has its one effect now that it can be recorded.
    await js.delete_consumer(stream_for_context("identity", settings.namespace), "audit")
    fixed = Consumer(
        name="audit", filter_subjects=[events_pb2.UserInvited], handler=record_effect, per_transaction=50
    )
    async with bus_for(test_infra, db, settings, fixed) as bus:
        again = bus.runners["audit"]
        await eventually(lambda: again.duplicates + again.handled == 41, what="the replay handled")
    assert (again.handled, again.duplicates) == (1, 40)
    assert again.transactions < 41
    assert await effect_count(db) == 41


async def test_a_database_outage_longer_than_the_attempts_window_dead_letters_nothing(
    test_infra, with_effects, db_url, settings, nc
):
    """The consumer's database refuses connections for far longer than its 5 attempts take (backoff of 0.2 s
    here, about 156 s in production); every event delivered meanwhile is handled once afterwards, none is
    dead-lettered, and no attempt was spent on the outage."""
    from crm_kit.events.outbox import build_envelope
    from sqlalchemy.engine import make_url

    db = with_effects
    consumer = Consumer(
        name="outage",
        filter_subjects=[events_pb2.UserInvited],
        handler=record_effect,
        backoff=(0.2, 0.2, 0.2, 0.2),
        max_deliver=5,
    )
    js = nc.jetstream()
    name = make_url(db_url).database
    admin = await asyncpg.connect(test_infra.postgres_admin_dsn)

    async def publish(n: int) -> None:
        envelope = build_envelope(
            events_pb2.UserInvited(email=f"o{n}@example.com"),
            aggregate_type="user",
            aggregate_id=f"user-{n}",
            action="invited",
            tenant_id="tenant-1",
        )
        subject = namespaced(subject_for(envelope.type), settings.namespace)
        await js.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": envelope.id})

    try:
        async with bus_for(test_infra, db, settings, consumer, relay=False) as bus:
            runner = bus.runners["outage"]
            await publish(0)
            await eventually(lambda: runner.handled == 1, what="the first event")

            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            for n in range(1, 11):
                await publish(n)
            # Ten times the attempts window (4 x 0.2 s): the old rule had dead-lettered them all by now.
            await asyncio.sleep(8)
            assert runner.handled == 1 and runner.dead_lettered == 0
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

            await eventually(lambda: runner.handled == 11, within=30, what="every event after the outage")
            assert (runner.dead_lettered, runner.retried) == (0, 0)
            assert runner.infrastructure_waits >= 1
            info = await js.consumer_info(stream_for_context("identity", settings.namespace), "outage")
            assert info.num_ack_pending == 0
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    assert await stream_count(js, dead_letter_stream(settings.namespace)) == 0
    await db.engine.dispose()  # its pooled connections were terminated with the others
    async with db.read() as session:
        emails = (await session.scalars(select(effects.c.email))).all()
    assert sorted(emails) == sorted(f"o{n}@example.com" for n in range(11))
