"""A replica dies (SIGKILL, as when a node is lost or the OOM killer strikes) while clients are busy: the
gateway's round robin over every identity replica and its retries of reads hide it from them."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.scaleout.cluster import cpu_seconds, report, wait_exit
from tests.scaleout.load import steady_gets

pytestmark = pytest.mark.timeout(120)

CLIENTS = 6
BEFORE_KILL_SECONDS = 2.0
AFTER_KILL_SECONDS = 3.0


async def test_killing_an_identity_replica_under_load_fails_no_client_request(cluster):
    a = await cluster.start_identity()
    b = await cluster.start_identity()
    gateway = await cluster.start_gateway()
    company = await cluster.sign_up(gateway)

    stop = asyncio.Event()
    cpu_a, cpu_b = cpu_seconds(a), cpu_seconds(b)
    load = asyncio.create_task(
        steady_gets(
            cluster.url(gateway),
            f"/api/v1/users/{company.user_id}",
            company.headers,
            stop=stop,
            clients=CLIENTS,
        )
    )
    await asyncio.sleep(BEFORE_KILL_SECONDS)
    # Both replicas were doing the work before one is lost (else losing one would prove nothing).
    worked_a, worked_b = cpu_seconds(a) - cpu_a, cpu_seconds(b) - cpu_b
    killed_at = time.monotonic()
    a.popen.send_signal(signal.SIGKILL)
    code, _ = await wait_exit(a, 5)
    await asyncio.sleep(AFTER_KILL_SECONDS)
    stop.set()
    outcomes = await load

    after = outcomes.after(killed_at)
    first_second = outcomes.between(killed_at, killed_at + 1.0)
    report(
        "SIGKILL 1 of 2 identity replicas under load",
        clients=CLIENTS,
        **outcomes.summary(),
        requests_after_kill=len(after.items),
        p99_ms_first_second_after_kill=round(first_second.percentile(99), 1),
        replica_cpu_s_before_kill=f"{worked_a:.2f}/{worked_b:.2f}",
        logs=str(cluster.logs),
    )
    assert code == -signal.SIGKILL
    assert worked_a > 0.1 and worked_b > 0.1, (
        f"not both replicas served: cpu {worked_a:.2f}s / {worked_b:.2f}s"
    )
    assert outcomes.failures() == [], outcomes.failures()[:5]
    assert len(after.items) >= 50, "the load did not go on after the kill"
    assert b.alive
