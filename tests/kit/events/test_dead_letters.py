"""Dead letters against real PostgreSQL and JetStream: an operator lists them, replays them once the cause is
fixed (one effect, in the consumer that failed only), and discards what is not wanted."""

from __future__ import annotations

import pytest
from crm.common.v1 import event_pb2
from crm.identity.v1 import events_pb2
from crm_kit.db import UnitOfWork
from crm_kit.events import Consumer, PermanentError, dead_letters
from crm_kit.events.subjects import dead_letter_stream, namespaced
from eventsupport import bus_for, eventually, stream_count, stream_count_is, write_invites
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select

sent = Table(
    "sent_mails",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("consumer", String(50)),
    Column("event_id", String(36)),
)


async def sent_by(db, consumer: str) -> list[str]:
    async with db.read() as session:
        rows = await session.execute(select(sent.c.event_id).where(sent.c.consumer == consumer))
        return [r[0] for r in rows]


async def test_a_dead_letter_is_listed_replayed_once_fixed_and_has_one_effect(
    test_infra, database, settings, nc
):
    async with database.engine.begin() as conn:
        await conn.run_sync(sent.metadata.create_all)
    mail_server_down = True

    async def welcome(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
        if mail_server_down and envelope.aggregate_id == "poison":
            raise PermanentError("mail server refused: 550 mailbox unavailable")
        await uow.session.execute(insert(sent).values(consumer="welcome", event_id=envelope.id))

    async def stats(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
        await uow.session.execute(insert(sent).values(consumer="stats", event_id=envelope.id))

    consumers = [
        Consumer(name="welcome", filter_subjects=[events_pb2.UserInvited], handler=welcome),
        Consumer(name="stats", filter_subjects=[events_pb2.UserInvited], handler=stats),
    ]
    js = nc.jetstream()
    dlq = dead_letter_stream(settings.namespace)
    async with bus_for(test_infra, database, settings, *consumers) as bus:
        await write_invites(database, 1, aggregate_id="poison")
        await write_invites(database, 1, aggregate_id="fine")
        await eventually(lambda: stream_count(js, dlq), what="a dead letter")
        await eventually(lambda: bus.runners["stats"].handled == 2, what="stats saw both")

        [letter] = await dead_letters.list_letters(js, namespace=settings.namespace)
        assert letter.consumer == "notifications/welcome"
        assert letter.error == "mail server refused: 550 mailbox unavailable"
        assert letter.error_type == "PermanentError"
        assert letter.event_type == "crm.identity.v1.UserInvited"
        assert letter.aggregate == "user/poison" and letter.tenant_id == "tenant-1"
        assert letter.original_subject == namespaced("crm.identity.v1.UserInvited", settings.namespace)
        # Filtered by consumer and by service; another consumer's dead letters are not in its list.
        assert [
            x.seq
            for x in await dead_letters.list_letters(
                js, namespace=settings.namespace, consumer="notifications/welcome"
            )
        ] == [letter.seq]
        assert (
            len(await dead_letters.list_letters(js, namespace=settings.namespace, consumer="notifications"))
            == 1
        )
        assert (
            await dead_letters.list_letters(js, namespace=settings.namespace, consumer="notifications/stats")
            == []
        )

        mail_server_down = False  # the cause is fixed
        replayed = await dead_letters.replay(js, letter.seq, namespace=settings.namespace)
        assert replayed.event_id == letter.event_id
        await eventually(lambda: bus.runners["welcome"].handled == 2, what="the replay handled")
        await eventually(lambda: bus.runners["stats"].duplicates == 1, what="stats recognised the copy")

    # One mail per event for each consumer: the replay had its effect where it had failed, and nowhere else.
    assert sorted(await sent_by(database, "welcome")) == sorted(await sent_by(database, "stats"))
    assert len(await sent_by(database, "stats")) == 2
    assert await dead_letters.list_letters(js, namespace=settings.namespace) == []
    with pytest.raises(dead_letters.NoSuchDeadLetter):  # replayed already: it is gone
        await dead_letters.replay(js, letter.seq, namespace=settings.namespace)


async def test_a_discarded_dead_letter_is_gone_and_the_command_line_reports_it(
    test_infra, database, settings, nc, capsys
):
    async def refuse(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
        raise PermanentError("no such customer")

    consumer = Consumer(name="billing", filter_subjects=[events_pb2.UserInvited], handler=refuse)
    js = nc.jetstream()
    async with bus_for(test_infra, database, settings, consumer, service="sales"):
        await write_invites(database, 2)
        await eventually(
            lambda: stream_count_is(js, dead_letter_stream(settings.namespace), 2), what="two dead letters"
        )

    cli = ["--nats-url", test_infra.nats_url, "--namespace", settings.namespace]
    first, second = await dead_letters.list_letters(js, namespace=settings.namespace)
    assert await _run_cli([*cli, "discard", str(first.seq)]) == 0
    assert await _run_cli([*cli, "list", "--consumer", "sales/billing"]) == 0
    out = capsys.readouterr().out
    assert f'"seq": {second.seq}' in out and f'"seq": {first.seq},' not in out
    assert await _run_cli([*cli, "discard", str(first.seq)]) == 1  # not there any more: a failure, said so
    assert [x.seq for x in await dead_letters.list_letters(js, namespace=settings.namespace)] == [second.seq]


async def _run_cli(argv: list[str]) -> int:
    """The command line as an operator runs it; its own event loop, so in a thread."""
    import asyncio

    return await asyncio.to_thread(dead_letters.main, argv)
