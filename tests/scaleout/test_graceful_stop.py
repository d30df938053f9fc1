"""SIGTERM (a rollout, a scale-down, a drained node): the process stops taking new work at once, finishes the
work it has, and exits inside CRM_SHUTDOWN_GRACE_SECONDS, without a client seeing an error.

To have work in flight for certain at the moment of the signal, the test holds a PostgreSQL lock that makes
every department insert wait, sends a few creates, signals while they wait, and releases the lock a moment
later: the creates must then complete, and the process must have waited for them before exiting."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import grpc
import httpx
import pytest
from crm.identity.v1 import identity_pb2, identity_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.scaleout.cluster import (
    GRACE_SECONDS,
    departments_locked,
    report,
    wait_exit,
    wait_for_blocked_inserts,
)
from tests.scaleout.load import Outcomes, steady_gets, timed

pytestmark = pytest.mark.timeout(120)

CLIENTS = 6
IN_FLIGHT = 4
# How long the in-flight work is held after the signal: well inside the grace period.
HOLD_SECONDS = 1.0


async def stops_taking_calls(address: str, within: float = 3.0) -> tuple[float | None, float | None]:
    """When (time.monotonic()) the server first answered NOT_SERVING, and when it first refused a new
    connection's call; None for what did not happen `within` seconds."""
    not_serving = refused = None
    deadline = time.monotonic() + within
    while refused is None and time.monotonic() < deadline:
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5
                )
                if answer.status == health_pb2.HealthCheckResponse.NOT_SERVING and not_serving is None:
                    not_serving = time.monotonic()
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    refused = time.monotonic()
        await asyncio.sleep(0.02)
    return not_serving, refused


def refuses_connections(address: str, timeout: float = 3.0) -> float | None:
    """When (time.monotonic()) a new TCP connection was first refused; None if not within `timeout`."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=0.5).close()
        except ConnectionRefusedError:
            return time.monotonic()
        time.sleep(0.02)
    return None


async def test_sigterm_replica_finishes_its_calls_and_exits_within_grace_while_clients_see_no_error(cluster):
    a = await cluster.start_identity()
    await cluster.start_identity()
    gateway = await cluster.start_gateway()
    company = await cluster.sign_up(gateway)

    stop = asyncio.Event()
    load = asyncio.create_task(
        steady_gets(
            cluster.url(gateway),
            f"/api/v1/users/{company.user_id}",
            company.headers,
            stop=stop,
            clients=CLIENTS,
        )
    )
    async with grpc.aio.insecure_channel(a.address) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        metadata = (("authorization", f"Bearer {company.token}"),)
        async with departments_locked(cluster.identity_dsn):
            # Work in the replica's hands: creates sent straight to it, waiting on the lock.
            creates = [
                asyncio.ensure_future(
                    stub.CreateDepartment(
                        identity_pb2.CreateDepartmentRequest(name=f"在途部门-{i}"),
                        metadata=metadata,
                        timeout=GRACE_SECONDS + 10,
                    )
                )
                for i in range(IN_FLIGHT)
            ]
            await wait_for_blocked_inserts(cluster.identity_dsn, cluster.database, IN_FLIGHT)
            await asyncio.sleep(0.5)  # steady load on both replicas
            signalled = time.monotonic()
            a.popen.send_signal(signal.SIGTERM)
            not_serving, refused = await stops_taking_calls(a.address)
            still_in_flight = sum(not c.done() for c in creates)
            await asyncio.sleep(max(0.0, signalled + HOLD_SECONDS - time.monotonic()))
        created = await asyncio.gather(*creates, return_exceptions=True)
        code, exited = await wait_exit(a, GRACE_SECONDS + 10)
    await asyncio.sleep(1.0)  # and the load goes on against the one replica left
    stop.set()
    outcomes = await load

    exit_seconds = exited - signalled
    report(
        "SIGTERM 1 of 2 identity replicas under load",
        clients=CLIENTS,
        **outcomes.summary(),
        not_serving_after_s=round(not_serving - signalled, 2) if not_serving else None,
        refusing_after_s=round(refused - signalled, 2) if refused else None,
        in_flight_at_sigterm=still_in_flight,
        in_flight_completed=sum(isinstance(c, identity_pb2.CreateDepartmentResponse) for c in created),
        exit_code=code,
        exit_s=round(exit_seconds, 2),
        held_s=HOLD_SECONDS,
        grace_s=GRACE_SECONDS,
        logs=str(cluster.logs),
    )
    assert not_serving is not None, "the stopping replica never told clients it was NOT_SERVING"
    assert refused is not None, "the stopping replica still accepted new calls"
    assert still_in_flight == IN_FLIGHT, "the calls in flight ended before the lock was released"
    assert all(isinstance(c, identity_pb2.CreateDepartmentResponse) for c in created), created
    assert code == 0
    assert HOLD_SECONDS <= exit_seconds < GRACE_SECONDS, exit_seconds
    assert outcomes.failures() == [], outcomes.failures()[:5]
    assert len(outcomes.after(signalled).items) >= 50, "the load did not go on after the signal"


async def test_sigterm_gateway_finishes_requests_in_flight_and_refuses_new_connections(cluster):
    await cluster.start_identity()
    gateway = await cluster.start_gateway()
    company = await cluster.sign_up(gateway)

    outcomes = Outcomes()
    clients = [
        httpx.AsyncClient(base_url=cluster.url(gateway), headers=company.headers, timeout=GRACE_SECONDS + 10)
        for _ in range(IN_FLIGHT)
    ]
    try:
        for client in clients:  # each on its own open connection, as a browser or a partner would be
            assert (await client.get("/healthz")).status_code == 200
        async with departments_locked(cluster.identity_dsn):
            posts = [
                asyncio.ensure_future(
                    timed(
                        outcomes, lambda c=c, i=i: c.post("/api/v1/departments", json={"name": f"在途-{i}"})
                    )
                )
                for i, c in enumerate(clients)
            ]
            await wait_for_blocked_inserts(cluster.identity_dsn, cluster.database, IN_FLIGHT)
            signalled = time.monotonic()
            gateway.popen.send_signal(signal.SIGTERM)
            refused = await asyncio.to_thread(refuses_connections, gateway.address)
            still_in_flight = sum(not p.done() for p in posts)
            await asyncio.sleep(max(0.0, signalled + HOLD_SECONDS - time.monotonic()))
        responses = await asyncio.gather(*posts)
        code, exited = await wait_exit(gateway, GRACE_SECONDS + 10)
    finally:
        for client in clients:
            await client.aclose()

    exit_seconds = exited - signalled
    report(
        "SIGTERM the gateway with requests in flight",
        refusing_after_s=round(refused - signalled, 2) if refused else None,
        in_flight_at_sigterm=still_in_flight,
        completed=[r.status_code if r is not None else None for r in responses],
        exit_code=code,
        exit_s=round(exit_seconds, 2),
        held_s=HOLD_SECONDS,
        grace_s=GRACE_SECONDS,
        logs=str(cluster.logs),
    )
    assert refused is not None, "the stopping gateway still accepted new connections"
    assert still_in_flight == IN_FLIGHT
    assert outcomes.failures(ok=(201,)) == [], outcomes.failures(ok=(201,))
    assert code == 0
    assert HOLD_SECONDS <= exit_seconds < GRACE_SECONDS, exit_seconds
