"""The periodic jobs with two replicas on one database: one runs them (the leader of the jobs' advisory lock),
the other waits, and takes over when the first stops."""

from __future__ import annotations

import datetime as dt

import asyncpg
import grpc
from crm.sales.v1 import activities_pb2 as apb
from crm.sales.v1 import activities_pb2_grpc
from crm_kit.events.outbox import OutboxEvent
from crm_kit.leader import lock_key
from crm_kit.service import Service
from crm_kit.testing import eventually
from crm_sales.app import JOBS_LOCK, SPEC
from crm_sales.settings import SalesSettings
from google.protobuf import timestamp_pb2
from sqlalchemy import select

from tests.sales.helpers import team

LOCK_HOLDERS = """
SELECT l.granted FROM pg_locks l JOIN pg_database d ON d.oid = l.database
WHERE l.locktype = 'advisory' AND d.datname = current_database()
  AND l.classid::bigint = $1 AND l.objid::bigint = $2
"""


def ts(when: dt.datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


async def lock_holders(conn: asyncpg.Connection) -> tuple[int, int]:
    """How many sessions hold the jobs lock, and how many wait for it."""
    key = lock_key(JOBS_LOCK) & 0xFFFFFFFFFFFFFFFF
    rows = await conn.fetch(LOCK_HOLDERS, key >> 32, key & 0xFFFFFFFF)
    return sum(r["granted"] for r in rows), sum(not r["granted"] for r in rows)


async def reminders_of(service: Service, task_id: str) -> int:
    async with service.runtime.db.read() as session:
        rows = (
            await session.scalars(select(OutboxEvent.subject).where(OutboxEvent.aggregate_id == task_id))
        ).all()
    return sum(s.endswith("TaskReminder") for s in rows)


async def test_two_replicas_run_the_jobs_in_one_at_a_time_and_the_other_takes_over(
    test_infra, identity_service, customers_for_sales, identity, monkeypatch
):
    # Replicas of their own: their own database, and their own events namespace.
    monkeypatch.setenv("CRM_EVENTS_NAMESPACE", f"{test_infra.events_namespace}-jobs")
    settings = await test_infra.service_settings(
        SalesSettings,
        "sales_jobs",
        identity_service_addr=identity_service.address,
        customers_service_addr=customers_for_sales.address,
        reclaim_interval_seconds=0.05,
    )
    url = settings.database_url
    first = await Service(SPEC, settings).start()
    second = None
    admin = await asyncpg.connect(test_infra.asyncpg_dsn(url))
    try:
        await eventually(lambda: first.parts.jobs.active.is_set(), what="the first replica leads")
        second = await Service(SPEC, settings.model_copy()).start()
        await eventually(lambda: _equals(lock_holders(admin), (1, 1)), what="one holder, one waiting")

        # A task whose reminder is due: the jobs remind once, in the leading replica only.
        company, _ = await team(identity, 0)
        async with grpc.aio.insecure_channel(second.address) as channel:
            stub = activities_pb2_grpc.ActivitiesServiceStub(channel)
            task = (
                await stub.CreateTask(
                    apb.CreateTaskRequest(
                        title="回访客户", remind_at=ts(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
                    ),
                    metadata=company.md,
                )
            ).task
        await eventually(lambda: reminders_of(first, task.id), what="the reminder")
        runs = first.parts.jobs.runs
        await eventually(lambda: first.parts.jobs.runs >= runs + 5, what="more runs")
        assert second.parts.jobs.runs == 0 and not second.parts.jobs.active.is_set()
        assert await reminders_of(first, task.id) == 1

        # The leader goes away (a rolling update): the standby takes over and runs the jobs.
        await first.stop(grace_seconds=1)
        first = None
        await eventually(lambda: second.parts.jobs.active.is_set(), what="the standby takes over")
        await eventually(lambda: second.parts.jobs.runs >= 3, what="runs in the new leader")
        assert await lock_holders(admin) == (1, 0)
    finally:
        await admin.close()
        for service in (first, second):
            if service is not None:
                await service.stop(grace_seconds=1)


async def _equals(value, expected) -> bool:
    return (await value) == expected
