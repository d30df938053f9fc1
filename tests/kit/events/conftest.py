"""Fixtures for the event backbone tests: a fresh database with the kit tables, a NATS connection, and a
namespace of the run's own (`test_infra.events_namespace` plus a suffix per test), so tests of this run, and
other runs sharing the NATS server, never see each other's streams."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from crm_kit.db import Database
from crm_kit.events import EventSettings, create_all, ensure_streams
from crm_kit.events.subjects import dead_letter_stream, stream_for_context
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError


@pytest.fixture
def namespace(test_infra) -> str:
    return f"{test_infra.events_namespace}_{uuid.uuid4().hex[:6]}"


@pytest.fixture
def settings(namespace: str) -> EventSettings:
    """Production behaviour with test-sized waits."""
    return EventSettings(
        namespace=namespace,
        relay_poll_interval=0.2,
        relay_ack_timeout=1.0,
        relay_max_backoff=0.3,
        reconnect_wait=0.1,
        connect_attempts=3,
        connect_timeout=1.0,
    )


@pytest.fixture
async def db_url(test_infra) -> str:
    url = await test_infra.database(f"ev{uuid.uuid4().hex[:10]}")
    db = Database(url, pool_size=2)
    try:
        await create_all(db.engine)
    finally:
        await db.dispose()
    return url


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[Database]:
    db = Database(db_url, pool_size=5)
    yield db
    await db.dispose()


@pytest.fixture
async def nc(test_infra, namespace: str) -> AsyncIterator[NATS]:
    conn = await nats.connect(test_infra.nats_url)
    yield conn
    js = conn.jetstream()
    for stream in (stream_for_context("identity", namespace), dead_letter_stream(namespace)):
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(stream)
    await conn.close()


@pytest.fixture
def stream(namespace: str) -> str:
    """The identity stream of this test's namespace."""
    return stream_for_context("identity", namespace)


@pytest.fixture
async def js(nc: NATS, settings: EventSettings):
    """JetStream on `nc`, with the identity stream made."""
    js = nc.jetstream()
    await ensure_streams(js, ["identity"], settings)
    return js
