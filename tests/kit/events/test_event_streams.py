"""Streams and subjects: derived from protobuf names, namespaced, created and updated idempotently."""

from __future__ import annotations

import nats
import pytest
from crm.identity.v1 import events_pb2
from crm_kit.events import EventBus, ensure_streams
from crm_kit.events.config import EventSettings
from crm_kit.events.subjects import (
    context_of,
    dead_letter_stream,
    dead_letter_subject,
    event_type,
    namespaced,
    stream_for_context,
    stream_subjects,
    subject_for,
)
from eventsupport import eventually, stream_count, write_invites
from nats.js.api import StorageType


def test_subject_and_stream_follow_the_protobuf_name_with_the_namespace_in_front():
    name = event_type(events_pb2.UserInvited)
    assert name == "crm.identity.v1.UserInvited"
    assert subject_for(name) == "crm.identity.v1.UserInvited"
    assert context_of(name) == "identity"
    assert stream_for_context("identity") == "CRM_IDENTITY"
    assert stream_subjects("identity") == ["crm.identity.>"]
    assert namespaced(subject_for(name), "t42") == "t42.crm.identity.v1.UserInvited"
    assert stream_for_context("identity", "t42") == "t42_CRM_IDENTITY"
    assert stream_subjects("identity", "t42") == ["t42.crm.identity.>"]
    assert dead_letter_subject("notifications", "welcome", "t42") == "t42.dlq.notifications.welcome"
    assert dead_letter_stream("t42") == "t42_CRM_DEAD_LETTERS"


def test_namespace_must_be_a_single_subject_token():
    with pytest.raises(ValueError):
        EventSettings(namespace="a.b")
    assert EventSettings(namespace="").namespace == ""


async def test_ensure_streams_is_idempotent_and_applies_a_changed_configuration(nc, settings):
    js = nc.jetstream()
    names = await ensure_streams(js, ["identity"], settings)
    assert names == [
        stream_for_context("identity", settings.namespace),
        dead_letter_stream(settings.namespace),
    ]
    await ensure_streams(js, ["identity"], settings)

    info = await js.stream_info(names[0])
    assert info.config.subjects == [f"{settings.namespace}.crm.identity.>"]
    assert info.config.storage == StorageType.FILE
    assert info.config.duplicate_window == pytest.approx(120)

    await ensure_streams(js, ["identity"], settings.model_copy(update={"duplicate_window": 60.0}))
    assert (await js.stream_info(names[0])).config.duplicate_window == pytest.approx(60)


async def test_namespaces_sharing_one_nats_server_never_see_each_others_events(
    test_infra, database, settings, nc, namespace
):
    other = settings.model_copy(update={"namespace": f"{namespace}x"})
    js = nc.jetstream()
    async with EventBus(
        service="identity", database=database, nats_url=test_infra.nats_url, settings=settings
    ):
        await ensure_streams(js, ["identity"], other)
        try:
            await write_invites(database, 2)
            mine = stream_for_context("identity", settings.namespace)
            await eventually(lambda: _equals(stream_count(js, mine), 2), what="events in this namespace")
            assert await stream_count(js, stream_for_context("identity", other.namespace)) == 0
        finally:
            await js.delete_stream(stream_for_context("identity", other.namespace))
            await js.delete_stream(dead_letter_stream(other.namespace))


async def test_bus_start_fails_after_bounded_attempts_when_nats_is_unreachable(database, settings):
    unreachable = settings.model_copy(
        update={"connect_attempts": 2, "reconnect_wait": 0.05, "connect_timeout": 0.2}
    )
    bus = EventBus(service="identity", database=database, nats_url="nats://127.0.0.1:1", settings=unreachable)
    with pytest.raises(nats.errors.NoServersError):
        await bus.start()


async def _equals(value, expected) -> bool:
    return (await value) == expected
