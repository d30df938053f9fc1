"""`python -m crm_gateway` as Kubernetes runs it: serves, and on SIGTERM finishes what is in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import grpc
import httpx
from crm.identity.v1 import identity_pb2 as pb
from crm.identity.v1 import identity_pb2_grpc
from crm_kit import infra
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.gateway.conftest import gateway_database


class SlowIdentity(identity_pb2_grpc.IdentityServiceServicer):
    """Signs in after a while, so a request is surely in flight when the gateway is told to stop."""

    async def CreateToken(self, request, context):
        await asyncio.sleep(1.5)
        return pb.CreateTokenResponse(
            token=pb.TokenPair(access_token="a", refresh_token="r", token_type="Bearer", expires_in=300)
        )


async def test_sigterm_lets_requests_in_flight_finish(test_infra):
    server = grpc.aio.server()
    identity_pb2_grpc.add_IdentityServiceServicer_to_server(SlowIdentity(), server)
    checks = health.aio.HealthServicer()
    await checks.set(
        pb.DESCRIPTOR.services_by_name["IdentityService"].full_name, health_pb2.HealthCheckResponse.SERVING
    )
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    http_port = infra.free_port()
    database_url = gateway_database(test_infra)
    await infra.create_database(test_infra.postgres_admin_dsn, database_url.rsplit("/", 1)[1], extensions=())
    env = {
        "CRM_DATABASE_URL": database_url,
        "CRM_MIGRATE_ON_START": "true",
        **os.environ,
        "IDENTITY_SERVICE_ADDR": f"127.0.0.1:{grpc_port}",
        "CRM_HTTP_HOST": "127.0.0.1",
        "CRM_HTTP_PORT": str(http_port),
        "CRM_NATS_URL": test_infra.nats_url,
        "CRM_EVENTS_NAMESPACE": test_infra.events_namespace,
        "CRM_SHUTDOWN_GRACE_SECONDS": "10",
        "CRM_LOG_FORMAT": "console",
    }
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "crm_gateway", env=env)
    base = f"http://127.0.0.1:{http_port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for _ in range(600):  # the gateway migrates its database first
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            assert (await client.get("/readyz")).status_code == 200

            in_flight = asyncio.create_task(
                client.post("/api/v1/auth/token", json={"email": "a@example.com", "password": "p"})
            )
            await asyncio.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            answer = await in_flight
            assert answer.status_code == 200, answer.text
            assert answer.json()["access_token"] == "a"

        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(base_url=base, timeout=2) as late:
            try:
                await late.get("/healthz")
                raise AssertionError("a stopping gateway accepted a new connection")
            except httpx.TransportError:
                pass
        assert await asyncio.wait_for(process.wait(), 15) in (0, -signal.SIGTERM)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await server.stop(0)
