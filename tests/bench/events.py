"""Benchmark: what the event backbone adds on top of a bare JetStream round trip.

    uv run python -m tests.bench.events            # prints a JSON report

It measures, in one run against the same NATS and PostgreSQL (CRM_TEST_POSTGRES_URL / CRM_TEST_NATS_URL when
set, else testcontainers or the embedded servers, via `crm_kit.infra.provide`):

(a) raw JetStream publish -> ack round trip, sequential (the floor any durable event pays), into a stream
    configured like the event streams;
(b) event commit -> consumer effect: a unit of work commits an event; the relay publishes it; a consumer's
    handler, in a process of its own as a consuming service is, writes an effect row in its own unit of work;
    measured from just before the writer's commit to the commit of the effect, sequential, one event in
    flight at a time;

and reports the ratios (b)/(a) at p50 and p99. Targets: p50 <= 6x, p99 <= 25x. Beside them, the floor: the
same path done by hand on raw asyncpg and nats-py (two durable commits and one publish), the ratio the backbone
could reach on this machine. (a) and (b) are interleaved (one publish, one event, …) so that other load on the
machine weighs on both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import nats
import nats.js.errors
from crm.common.v1 import event_pb2
from crm.identity.v1 import events_pb2
from crm_kit import infra
from crm_kit.db import Database, UnitOfWork
from crm_kit.events import Consumer, EventBus, EventSettings, create_all, ensure_streams
from crm_kit.events.subjects import dead_letter_stream, namespaced, stream_for_context
from crm_kit.ids import new_id
from sqlalchemy import Column, Identity, Integer, MetaData, String, Table, insert

TARGET_P50 = 6.0
TARGET_P99 = 25.0

effects = Table(
    "bench_effects",
    MetaData(),
    Column("id", Integer, Identity(), primary_key=True),
    Column("event_id", String(36)),
)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 0.50), 3),
        "p90_ms": round(percentile(ms, 0.90), 3),
        "p99_ms": round(percentile(ms, 0.99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


CONSUMER = "bench-effects"


async def consume(url: str, nats_url: str, namespace: str) -> None:
    """The consuming service, in a process of its own (`python -m tests.bench.events consume ...`): handles the
    events into effect rows and prints `<event id> <time>` for each, the time taken right after its commit."""

    async def write_effect(uow: UnitOfWork, envelope: event_pb2.EventEnvelope, payload: Any) -> None:
        await uow.session.execute(insert(effects).values(event_id=envelope.id))
        uow.on_commit(lambda: print(envelope.id, time.perf_counter(), flush=True))

    database = Database(url, pool_size=4)
    reactor = EventBus(
        service="bench",
        database=database,
        nats_url=nats_url,
        settings=EventSettings(namespace=namespace),
        consumers=[Consumer(name=CONSUMER, filter_subjects=[events_pb2.UserInvited], handler=write_effect)],
        relay=False,
    )
    await reactor.start()
    print("ready", flush=True)
    try:
        # Until the measuring process closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await reactor.stop()
        await database.dispose()


async def measure(
    url: str, nats_url: str, settings: EventSettings, *, events: int
) -> tuple[list[float], list[float]]:
    """Both measurements, interleaved (one raw publish, then one event, and again), so that load from anything
    else on the machine falls on both alike and the ratio stays meaningful.

    The writer and its relay run here; the consumer runs in a process of its own, as a consuming service does
    (`consume`). Both take their times from the same monotonic clock (`time.perf_counter`, CLOCK_MONOTONIC,
    the same in every process of the machine)."""
    writer_db = Database(url, pool_size=4)
    async with writer_db.engine.begin() as conn:
        await conn.run_sync(effects.metadata.create_all)
    producer = EventBus(service="identity", database=writer_db, nats_url=nats_url, settings=settings)
    raw_client = await nats.connect(nats_url)
    await producer.start()
    reactor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bench.events", "consume", url, nats_url, settings.namespace,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert reactor.stdout is not None and reactor.stdin is not None
    raw: list[float] = []
    effect: list[float] = []
    try:
        ready = await asyncio.wait_for(reactor.stdout.readline(), 60)
        if ready.strip() != b"ready":
            raise RuntimeError(f"the consumer process did not start: {ready!r}")
        js = raw_client.jetstream()
        # Its own stream, configured as the event streams are (file storage, duplicate window).
        await ensure_streams(js, ["benchraw"], settings)
        raw_subject = namespaced("crm.benchraw.v1.Raw", settings.namespace)
        # The bytes the relay publishes for one event, so both move payloads of the same size.
        sample = event_pb2.EventEnvelope(id=new_id(), type="crm.identity.v1.UserInvited", tenant_id="bench")
        sample.payload.Pack(events_pb2.UserInvited(email="bench-0@example.com"))
        payload = sample.SerializeToString()
        assert producer.relay is not None
        await asyncio.wait_for(producer.relay.active.wait(), 30)
        stream = stream_for_context("identity", settings.namespace)

        warmup = 50
        for i in range(events + warmup):
            # Publish on a quiet system: the previous event's consumer has acked (the relay is idle by then).
            while (await js.consumer_info(stream, CONSUMER)).num_ack_pending:  # noqa: ASYNC110 - asks JetStream
                await asyncio.sleep(0.0005)
            start = time.perf_counter()
            await js.publish(raw_subject, payload, headers={"Nats-Msg-Id": new_id()})
            if i >= warmup:
                raw.append(time.perf_counter() - start)

            async with writer_db.unit_of_work() as uow:
                pending = uow.emit(
                    events_pb2.UserInvited(email=f"bench-{i}@example.com"),
                    aggregate_type="user",
                    aggregate_id=f"user-{i % 10}",
                    aggregate_version=i,
                    action="invited",
                    tenant_id="bench",
                )
                await uow.flush()
                start = time.perf_counter()  # what is left is the commit
            event_id, done = (await asyncio.wait_for(reactor.stdout.readline(), 10)).split()
            if event_id.decode() != pending.id:
                raise RuntimeError(f"effect of {event_id.decode()} while waiting for {pending.id}")
            if i >= warmup:
                effect.append(float(done) - start)
        return raw, effect
    finally:
        reactor.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reactor.wait(), 30)
        if reactor.returncode is None:
            reactor.kill()
        await producer.stop()
        await raw_client.close()
        await writer_db.dispose()


async def measure_floor(dsn: str, nats_url: str, settings: EventSettings, *, events: int) -> list[float]:
    """The same path done by hand, without the kit: a transaction commits a row (durably, as any write does),
    the bytes are published to JetStream and acked, a plain subscriber receives them, and a second transaction
    commits an inbox row and an effect row; all on raw asyncpg and nats-py, one event at a time. Two durable
    commits and one publish are what commit → effect needs at the least, so this is the ratio the event
    backbone could reach on this machine."""
    conn_w = await asyncpg.connect(dsn)
    conn_c = await asyncpg.connect(dsn)
    nc = await nats.connect(nats_url)
    try:
        for conn in (conn_w, conn_c):
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS floor_rows (id text PRIMARY KEY, payload bytea);"
                "CREATE TABLE IF NOT EXISTS floor_inbox (event_id text PRIMARY KEY);"
                "CREATE TABLE IF NOT EXISTS floor_effects (id serial PRIMARY KEY, event_id text)"
            )
        js = nc.jetstream()
        await ensure_streams(js, ["benchfloor"], settings)
        subject = namespaced("crm.benchfloor.v1.Floor", settings.namespace)
        received: asyncio.Queue[Any] = asyncio.Queue()
        await nc.subscribe(subject, cb=received.put)
        write = await conn_w.prepare("INSERT INTO floor_rows VALUES ($1, $2)")
        claim = await conn_c.prepare(
            "INSERT INTO floor_inbox VALUES ($1) ON CONFLICT DO NOTHING RETURNING event_id"
        )
        effect = await conn_c.prepare("INSERT INTO floor_effects (event_id) VALUES ($1)")
        payload = os.urandom(200)
        out: list[float] = []
        for i in range(events + 50):
            event_id = new_id()
            await conn_w.execute("BEGIN")
            await write.fetch(event_id, payload)
            start = time.perf_counter()
            await conn_w.execute("COMMIT")
            await js.publish(subject, payload, headers={"Nats-Msg-Id": event_id})
            await received.get()
            await conn_c.execute("BEGIN")
            await claim.fetch(event_id)
            await effect.fetch(event_id)
            await conn_c.execute("COMMIT")
            if i >= 50:
                out.append(time.perf_counter() - start)
        return out
    finally:
        await nc.close()
        await conn_w.close()
        await conn_c.close()


async def _delete_streams(nats_url: str, settings: EventSettings) -> None:
    nc = await nats.connect(nats_url)
    try:
        for stream in (
            stream_for_context("identity", settings.namespace),
            stream_for_context("benchraw", settings.namespace),
            stream_for_context("benchfloor", settings.namespace),
            dead_letter_stream(settings.namespace),
        ):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


async def run(
    *, events: int = 1000, admin_dsn: str | None = None, nats_url: str | None = None
) -> dict[str, Any]:
    """Measure and report. Pass `admin_dsn` and `nats_url` to reuse running infrastructure; else
    `crm_kit.infra.provide` supplies it (the environment's URLs, testcontainers, or the embedded servers)."""
    if admin_dsn and nats_url:
        return await _run(admin_dsn, nats_url, "given", events=events)
    work = Path(tempfile.mkdtemp(prefix="crm-bench-events-"))
    try:
        with infra.provide(work) as (admin_dsn, nats_url, source):
            await infra.wait_for_postgres(admin_dsn)
            return await _run(admin_dsn, nats_url, source, events=events)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _run(admin_dsn: str, nats_url: str, source: str, *, events: int) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    db_name = f"crm_bench_{run_id}"
    settings = EventSettings(namespace=f"bench{run_id}")
    await infra.create_database(admin_dsn, db_name)
    try:
        url = infra.sqlalchemy_url(admin_dsn, db_name)
        setup = Database(url, pool_size=1)
        await create_all(setup.engine)
        await setup.dispose()
        raw, effect = await measure(url, nats_url, settings, events=events)
        floor = await measure_floor(infra.asyncpg_dsn(admin_dsn, db_name), nats_url, settings, events=events)
    finally:
        await _delete_streams(nats_url, settings)
        await infra.drop_database(admin_dsn, db_name)
    a, b = summary(raw), summary(effect)
    return {
        "infra": source,
        "cpus": os.cpu_count(),
        "publish_ack": a,
        "commit_to_effect": b,
        "ratio_p50": round(b["p50_ms"] / a["p50_ms"], 2),
        "ratio_p99": round(b["p99_ms"] / a["p99_ms"], 2),
        "targets": {"ratio_p50": TARGET_P50, "ratio_p99": TARGET_P99},
        # The path by hand on raw asyncpg and nats-py (measure_floor): what the backbone could reach here.
        "floor_by_hand": (f := summary(floor)),
        "floor_ratio_p50": round(f["p50_ms"] / a["p50_ms"], 2),
    }


def main() -> None:
    if sys.argv[1:2] == ["consume"]:
        asyncio.run(consume(*sys.argv[2:5]))
    else:
        print(json.dumps(asyncio.run(run()), indent=2))


if __name__ == "__main__":
    main()
