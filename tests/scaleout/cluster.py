"""The processes of one scale-out test and what the tests do to them and ask of them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import nats.js.errors
from crm_identity.app import AUDITED_SERVICES
from crm_kit import infra
from crm_kit.devstack import GATEWAY, SERVICES, Process, Stack
from crm_kit.events.subjects import dead_letter_stream, stream_for_context

IDENTITY = next(app for app in SERVICES if app.name == "identity")
PASSWORD = "scale-out password 123"
# CRM_SHUTDOWN_GRACE_SECONDS of every process here, as the chart sets it (there 15 s; shorter keeps tests short).
GRACE_SECONDS = 5.0

FIGURES: list[tuple[str, dict[str, Any]]] = []


def report(test: str, **figures: Any) -> None:
    FIGURES.append((test, figures))
    print(f"\n{test}: {figures}")


@dataclass
class Company:
    tenant_id: str
    user_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Cluster:
    """One test's processes. Start identity replicas first: each process started later is given
    IDENTITY_SERVICE_ADDR naming every replica started before it (client-side round robin)."""

    stack: Stack
    namespace: str
    database: str
    logs: Path

    @property
    def identity_dsn(self) -> str:
        return infra.asyncpg_dsn(self.stack.admin_dsn, self.database)

    async def start_identity(self) -> Process:
        process = await asyncio.to_thread(self.stack.start, IDENTITY)
        try:
            await asyncio.to_thread(self.stack.wait_serving, process, 90)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; {self.log_tail(process)}") from exc
        return process

    async def start_gateway(self) -> Process:
        """A gateway, ready once identity answers behind it (the one service these tests start), read from the
        per-service states /readyz reports whatever its overall verdict."""
        process = await asyncio.to_thread(self.stack.start, GATEWAY)
        deadline = time.monotonic() + 90
        async with httpx.AsyncClient(base_url=self.url(process), timeout=2) as client:
            while time.monotonic() < deadline and process.alive:
                with contextlib.suppress(httpx.TransportError, ValueError):
                    answer = (await client.get("/readyz")).json()
                    if answer.get("services", {}).get("identity") == "SERVING":
                        return process
                await asyncio.sleep(0.2)
        raise RuntimeError(f"the gateway did not reach identity; {self.log_tail(process)}")

    def log_tail(self, process: Process) -> str:
        log = self.logs / f"{process.app.name}-{process.address.rsplit(':', 1)[1]}.log"
        return f"the end of {log}:\n" + (
            log.read_text(errors="replace")[-3000:] if log.exists() else "(none)"
        )

    @staticmethod
    def url(gateway: Process) -> str:
        return f"http://{gateway.address}"

    async def sign_up(self, gateway: Process) -> Company:
        email = f"scale.{uuid.uuid4().hex[:10]}@example.com"
        async with httpx.AsyncClient(base_url=self.url(gateway), timeout=30) as client:
            signed = await client.post(
                "/api/v1/auth/signup",
                json={"tenant_name": "扩容测试公司", "email": email, "password": PASSWORD, "name": "测试员"},
            )
            assert signed.status_code == 200, signed.text  # sign-up is a custom method
            token = await client.post("/api/v1/auth/token", json={"email": email, "password": PASSWORD})
            assert token.status_code == 200, token.text
        body = signed.json()
        return Company(body["tenant"]["id"], body["user"]["id"], token.json()["access_token"])


async def wait_exit(process: Process, within: float) -> tuple[int | None, float]:
    """The exit code and when (time.monotonic()) the process ended; (None, now) if it still runs."""
    try:
        code = await asyncio.to_thread(process.popen.wait, within)
    except Exception:
        return None, time.monotonic()
    return code, time.monotonic()


def cpu_seconds(process: Process) -> float:
    """User + system CPU the process has used so far (Linux /proc)."""
    stat = Path(f"/proc/{process.popen.pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # fields from the 3rd (state) on; utime is the 14th
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def delete_namespace(nats_url: str, namespace: str) -> None:
    """The streams the processes created under `namespace`."""
    names = [stream_for_context(s, namespace) for s in AUDITED_SERVICES]
    names += [dead_letter_stream(namespace)]
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def departments_locked(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """Hold a lock that makes every INSERT INTO departments wait (reads go on), so a test can keep write calls
    in flight for as long as it likes; released when the block ends."""
    conn = await asyncpg.connect(dsn)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE departments IN SHARE MODE")
        try:
            yield conn
        finally:
            await tx.rollback()
    finally:
        await conn.close()


async def wait_for_blocked_inserts(dsn: str, database: str, count: int, within: float = 10.0) -> None:
    """Until `count` sessions of `database` wait on the departments lock."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + within
        waiting = 0
        while time.monotonic() < deadline:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock' "
                "AND query ILIKE 'INSERT INTO departments%'",
                database,
            )
            if waiting >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"only {waiting} of {count} department inserts reached the lock")
    finally:
        await conn.close()
