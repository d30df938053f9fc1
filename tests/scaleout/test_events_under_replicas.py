"""Events with two identity replicas on one database: two outbox relays (one active, one waiting on the
advisory lock) and two sets of the audit trail's durable consumers. One replica — the one whose relay is
active — is killed with SIGKILL in the middle of a stream of writes through the gateway. Afterwards every
event is in the JetStream stream once and in the audit trail once, nothing lost, nothing doubled.

A plain NATS subscription on the stream's subjects sees every publish, including the copies JetStream drops as
duplicates, so the test can also tell whether two relays ever published one row."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter, defaultdict

import asyncpg
import httpx
import nats
import pytest
from crm_kit.events.relay import RELAY_LOCK
from crm_kit.events.subjects import stream_for_context

from tests.scaleout.cluster import Cluster, Company, report, wait_exit
from tests.scaleout.load import Outcomes, timed

pytestmark = pytest.mark.timeout(150)

WRITES = 150
WRITERS = 6
KILL_AFTER = WRITES // 3
ATTEMPTS = 25  # per write, 0.2 s apart: a write gives up after ~5 s of failures
SETTLE_SECONDS = 30.0
AUDIT_CONSUMER = "identity-audit-identity"

LOCK_HOLDERS = """
SELECT l.pid, l.granted FROM pg_locks l JOIN pg_database d ON d.oid = l.database
WHERE l.locktype = 'advisory' AND d.datname = $1 AND l.classid::bigint = $2 AND l.objid::bigint = $3
"""


async def relay_lock(conn: asyncpg.Connection, database: str) -> tuple[list[int], int]:
    """The backends holding the relay lock of `database`, and how many wait for it."""
    rows = await conn.fetch(LOCK_HOLDERS, database, RELAY_LOCK >> 32, RELAY_LOCK & 0xFFFFFFFF)
    return [r["pid"] for r in rows if r["granted"]], sum(not r["granted"] for r in rows)


class WireTap:
    """Every message published on the identity stream's subjects, as NATS saw it: id -> when."""

    def __init__(self) -> None:
        self.seen: dict[str, list[float]] = defaultdict(list)
        self.nc: nats.NATS | None = None

    async def start(self, nats_url: str, namespace: str) -> None:
        async def on_message(msg) -> None:  # type: ignore[no-untyped-def]
            self.seen[(msg.headers or {}).get("Nats-Msg-Id", "")].append(time.monotonic())

        self.nc = await nats.connect(nats_url)
        await self.nc.subscribe(f"{namespace}.crm.identity.>", cb=on_message)
        await self.nc.flush()

    async def stop(self) -> None:
        if self.nc is not None:
            await self.nc.drain()


async def create_departments(cluster: Cluster, gateway, company: Company, killed: asyncio.Event):  # type: ignore[no-untyped-def]
    """WRITERS clients create WRITES departments, each with a unique name and its own Idempotency-Key, retrying
    a failed request with the same key, as a careful client does. Sets `killed` (via the caller) once
    KILL_AFTER are done."""
    outcomes = Outcomes()
    results: dict[int, str] = {}
    numbers = iter(range(WRITES))
    progress = asyncio.Event()

    async def write(client: httpx.AsyncClient, n: int) -> str:
        body, key = {"name": f"部门-{n:04d}"}, str(uuid.uuid4())
        for _ in range(ATTEMPTS):
            response = await timed(
                outcomes,
                lambda: client.post("/api/v1/departments", json=body, headers={"Idempotency-Key": key}),
            )
            if response is not None:
                if response.status_code == 201:
                    return "created"
                if response.status_code == 409 and response.json().get("code") != "idempotency_in_progress":
                    return "existed"  # an earlier attempt committed, though its answer was lost
                if response.status_code < 500 and response.status_code != 409:
                    raise AssertionError(f"write {n}: {response.status_code} {response.text}")
            await asyncio.sleep(0.2)
        raise AssertionError(f"write {n} still failing after {ATTEMPTS} attempts: {outcomes.items[-1]}")

    async def writer() -> None:
        async with httpx.AsyncClient(base_url=cluster.url(gateway), headers=company.headers, timeout=10) as c:
            for n in numbers:
                results[n] = await write(c, n)
                if len(results) >= KILL_AFTER:
                    progress.set()

    async def killer() -> None:
        await progress.wait()
        killed.set()

    await asyncio.gather(killer(), *(writer() for _ in range(WRITERS)))
    return results, outcomes


async def stream_ids(nats_url: str, stream: str) -> list[str]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        state = (await js.stream_info(stream)).state
        ids = []
        for seq in range(state.first_seq, state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            ids.append((msg.headers or {}).get("Nats-Msg-Id", ""))
        return ids
    finally:
        await nc.close()


async def stream_count(nats_url: str, stream: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    finally:
        await nc.close()


async def test_writes_across_a_killed_replica_reach_the_stream_and_the_audit_trail_exactly_once(
    cluster, test_infra
):
    tap = WireTap()
    await tap.start(test_infra.nats_url, cluster.namespace)
    a = await cluster.start_identity()  # first: its relay takes the lock
    await cluster.start_identity()
    gateway = await cluster.start_gateway()
    company = await cluster.sign_up(gateway)
    db = await asyncpg.connect(cluster.identity_dsn)
    stream = stream_for_context("identity", cluster.namespace)
    try:
        holders_before, waiting_before = await relay_lock(db, cluster.database)

        killed = asyncio.Event()
        killed_at = 0.0

        async def kill_a() -> None:
            nonlocal killed_at
            await killed.wait()
            killed_at = time.monotonic()
            a.popen.send_signal(signal.SIGKILL)

        started = time.monotonic()
        (results, outcomes), _ = await asyncio.gather(
            create_departments(cluster, gateway, company, killed), kill_a()
        )
        written = time.monotonic()
        code, _ = await wait_exit(a, 5)

        # Let the surviving relay and consumers catch up (bounded).
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            total, unpublished = await db.fetchrow(
                "SELECT count(*), count(*) FILTER (WHERE published_at IS NULL) FROM outbox_events"
            )
            audited = await db.fetchval("SELECT count(*) FROM audit_events WHERE service = 'identity'")
            in_stream = await stream_count(test_infra.nats_url, stream)
            if (unpublished == 0 and in_stream == total and audited == total) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        settled = time.monotonic()
        holders_after, waiting_after = await relay_lock(db, cluster.database)

        outbox = {r["id"] for r in await db.fetch("SELECT id FROM outbox_events")}
        audit = [r["id"] for r in await db.fetch("SELECT id FROM audit_events WHERE service = 'identity'")]
        inbox = [
            r["event_id"]
            for r in await db.fetch("SELECT event_id FROM inbox WHERE consumer = $1", AUDIT_CONSUMER)
        ]
        departments = await db.fetchval(
            "SELECT count(*) FROM departments WHERE tenant_id = $1", company.tenant_id
        )
        created_events = await db.fetchval(
            "SELECT count(*) FROM outbox_events WHERE tenant_id = $1 AND subject LIKE '%.DepartmentCreated'",
            company.tenant_id,
        )
        created_audited = await db.fetchval(
            "SELECT count(*) FROM audit_events WHERE tenant_id = $1 AND object_type = 'department' "
            "AND action = 'created'",
            company.tenant_id,
        )
    finally:
        await db.close()
    ids_in_stream = await stream_ids(test_infra.nats_url, stream)
    await tap.stop()

    stream_copies = Counter(ids_in_stream)
    republished = {i: ts for i, ts in tap.seen.items() if len(ts) > 1}
    report(
        "SIGKILL the replica with the active relay during writes",
        writes=WRITES,
        writers=WRITERS,
        created=sum(v == "created" for v in results.values()),
        existed_on_retry=sum(v == "existed" for v in results.values()),
        requests=len(outcomes.items),
        failed_requests_retried=len(outcomes.failures(ok=(201,))),
        events=len(outbox),
        in_stream=len(ids_in_stream),
        audited=len(audit),
        republished_after_kill_and_dropped_by_jetstream=len(republished),
        write_s=round(written - started, 2),
        settle_s=round(settled - written, 2),
        logs=str(cluster.logs),
    )
    assert code == -signal.SIGKILL
    assert killed_at > 0
    # Two relays, one active: the lock had one holder and one waiter, and it moved when the holder died.
    assert len(holders_before) == 1 and waiting_before == 1, (holders_before, waiting_before)
    assert len(holders_after) == 1 and holders_after != holders_before and waiting_after == 0
    # Every write happened once, and its event was recorded once.
    assert len(results) == WRITES
    assert departments == WRITES
    assert created_events == WRITES
    # Every event in the stream once, none missing, none extra.
    assert [i for i, n in stream_copies.items() if n > 1] == []
    assert set(ids_in_stream) == outbox, (len(set(ids_in_stream) - outbox), len(outbox - set(ids_in_stream)))
    # ...and in the audit trail once (handled once per consumer: one inbox row each).
    assert sorted(audit) == sorted(outbox)
    assert sorted(inbox) == sorted(outbox)
    assert created_audited == WRITES
    # A row went out twice only when the killed relay had published it but not marked it yet: the copy came
    # from the relay that took over, after the kill, and JetStream dropped it (checked above). While both
    # replicas ran, no row was published twice.
    for event_id, times in republished.items():
        assert len(times) == 2 and times[1] >= killed_at, (event_id, times, killed_at)
