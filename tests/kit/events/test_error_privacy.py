"""A database error carrying personal data never reaches a dead letter's headers or a log line with that data:
consumers whose handlers fail on a real unique violation, a real check violation (whose DETAIL repeats the
whole row) and a real unmapped error that quotes the value, against real PostgreSQL and JetStream."""

from __future__ import annotations

import logging

from crm.common.v1 import event_pb2
from crm.identity.v1 import events_pb2
from crm_kit import logs
from crm_kit.db import UnitOfWork
from crm_kit.events import Consumer, dead_letters
from crm_kit.events.consumer import ERROR_HEADER
from crm_kit.events.subjects import dead_letter_stream
from eventsupport import bus_for, eventually, stream_count_is, stream_messages, write_invites
from sqlalchemy import CheckConstraint, Column, Integer, MetaData, String, Table, insert, text

people = Table(
    "people",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320), unique=True),
    Column("age", Integer, CheckConstraint("age >= 0", name="ck_people_age")),
)


async def test_dead_letters_and_logs_name_the_error_not_the_personal_data(
    test_infra, database, settings, nc, caplog
):
    logs.scrub_exceptions()  # as every service does when it starts (see tests/kit/test_error_descriptions.py)
    caplog.set_level(logging.INFO)
    async with database.engine.begin() as conn:
        await conn.run_sync(people.metadata.create_all)

    async def twice(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
        await uow.session.execute(insert(people).values(email=payload.email, age=30))
        await uow.session.execute(insert(people).values(email=payload.email, age=31))

    async def negative_age(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
        await uow.session.execute(insert(people).values(email="check-" + payload.email, age=-1))

    async def as_table(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload) -> None:
        await uow.session.execute(text("SELECT CAST(:email AS regclass)"), {"email": payload.email})

    handlers = {"unique": twice, "check": negative_age, "unmapped": as_table}
    consumers = [
        Consumer(
            name=name, filter_subjects=[events_pb2.UserInvited], handler=h, max_deliver=2, backoff=(0.1,)
        )
        for name, h in handlers.items()
    ]
    js = nc.jetstream()
    dlq = dead_letter_stream(settings.namespace)
    async with bus_for(test_infra, database, settings, *consumers):
        await write_invites(database, 1, aggregate_id="zhang.wei")
        await eventually(lambda: stream_count_is(js, dlq, 3), what="three dead letters", within=60)

    email = "zhang.wei-1@example.com"  # what write_invites put in the event
    letters = {
        letter.consumer: letter
        for letter in await dead_letters.list_letters(js, namespace=settings.namespace)
    }
    assert set(letters) == {f"notifications/{name}" for name in handlers}
    # The error kind is there for an operator; the value is not.
    unique = letters["notifications/unique"]
    assert (
        unique.error_type == "AlreadyExists" and "already exists" in unique.error and "email" in unique.error
    )
    check = letters["notifications/check"]
    assert "rejected by a constraint" in check.error and "ck_people_age" in check.error
    unmapped = letters["notifications/unmapped"]
    assert unmapped.error_type == "DBAPIError" and "SQLSTATE" in unmapped.error
    for msg in await stream_messages(js, dlq):
        headers = msg.headers or {}
        assert headers.get(ERROR_HEADER)
        assert all(email not in str(v) for v in headers.values()), headers
    # The consumers' warnings and errors about these failures carry no value either.
    failures = [r for r in caplog.records if r.name.startswith("crm.") and r.levelno >= logging.WARNING]
    assert any("SQLSTATE" in r.getMessage() for r in failures), [r.getMessage() for r in failures]
    assert email not in caplog.text
