"""Scale-out and shutdown, proven on one machine: real `python -m crm_identity` replicas and a real
`python -m crm_gateway` on loopback (crm_kit.devstack.Stack, the environment variables the Helm chart sets),
against the run's PostgreSQL and NATS.

Each test gets its own identity database and its own events namespace (so its replicas' relays and durable
consumers meet no other test's), and leaves neither behind. The figures the tests measure are printed at the
end of the run under "scale-out figures".
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from crm_kit import infra
from crm_kit.devstack import Stack

from tests.scaleout.cluster import FIGURES, GRACE_SECONDS, Cluster, delete_namespace


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("scale-out figures")
        for test, figures in FIGURES:
            terminalreporter.write_line(f"{test}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


@pytest.fixture
async def cluster(test_infra: Any, tmp_path: Path) -> AsyncIterator[Cluster]:
    suffix = uuid.uuid4().hex[:6]
    namespace = f"{test_infra.events_namespace}so{suffix}"
    prefix = f"crm_t{test_infra.run_id}_so{suffix}"
    stack = Stack(
        admin_dsn=test_infra.postgres_admin_dsn,
        nats_url=test_infra.nats_url,
        data_dir=tmp_path / "data",
        database_prefix=prefix,
        log_dir=tmp_path / "logs",
        env={
            "CRM_EVENTS_NAMESPACE": namespace,
            "CRM_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
            # The load here is one tenant's; the per-tenant limit is not what these tests are about.
            "CRM_RATE_LIMIT_PER_TENANT": "1000000/minute",
            "CRM_RATE_LIMIT_PUBLIC": "1000000/minute",
            # Several replicas run beside the in-process services of the whole run, on one PostgreSQL with
            # 100 connections: each process keeps at most 4 (+4 overflow) instead of 10 (+10).
            "CRM_DATABASE_POOL_SIZE": "4",
        },
    )
    made = Cluster(stack, namespace, f"{prefix}_identity", tmp_path / "logs")
    try:
        yield made
    finally:
        await asyncio.to_thread(stack.stop_all)
        with contextlib.suppress(Exception):
            await infra.drop_database(test_infra.postgres_admin_dsn, made.database)
        with contextlib.suppress(Exception):
            await delete_namespace(test_infra.nats_url, namespace)
